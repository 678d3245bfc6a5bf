package mqtt

import (
	"bufio"
	"bytes"
	"testing"
)

// FuzzReadPacket feeds broker bytes to the packet reader and parsers: they
// return an error or a packet, never panic, and never read past a body.
func FuzzReadPacket(f *testing.F) {
	f.Add([]byte{0x20, 0x02, 0x00, 0x00}, true)                                           // CONNACK 3.1.1
	f.Add([]byte{0x20, 0x03, 0x00, 0x87, 0x00}, true)                                     // CONNACK 5, not authorized
	f.Add(publishPacket(V5, "cradle/devices/A/commands", 7, []byte(`{}`)).encode(), true) // PUBLISH 5
	f.Add(publishPacket(V311, "t/x", 1, []byte("hi")).encode(), false)
	f.Add([]byte{0x40, 0x04, 0x00, 0x01, 0x87, 0x00}, true)                   // PUBACK 5 refused
	f.Add([]byte{0x90, 0x04, 0x00, 0x01, 0x00, 0x01}, true)                   // SUBACK 5
	f.Add([]byte{0x40, 0x06, 0x00, 0x01, 0x83, 0x03, 0x1f, 0x00, 0x00}, true) // PUBACK with a reason string, truncated
	f.Add([]byte{0xe0, 0x02, 0x8e, 0x00}, true)                               // DISCONNECT
	f.Add([]byte{0x30, 0xff, 0xff, 0xff, 0xff}, true)
	f.Fuzz(func(t *testing.T, data []byte, v5 bool) {
		v := V311
		if v5 {
			v = V5
		}
		br := bufio.NewReader(bytes.NewReader(data))
		for {
			p, err := readPacket(br, 4096)
			if err != nil {
				return
			}
			switch p.typ {
			case typePublish:
				m, err := parsePublish(v, p.flags, p.body)
				if err == nil && (m.topic == "" || len(m.payload) > len(p.body)) {
					t.Fatalf("publish %+v from a %d-byte body", m, len(p.body))
				}
			case typeConnack, typePuback, typeSuback, typeDisconnect:
				a, err := parseAck(v, p.typ, p.body)
				if err == nil && len(a.codes) == 0 {
					t.Fatalf("ack without codes: %+v", a)
				}
			}
		}
	})
}

func TestVarintRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 127, 128, 16383, 16384, 2097151, 2097152, maxRemaining} {
		b := appendVarint(nil, n)
		got, err := readVarint(bufio.NewReader(bytes.NewReader(b)))
		if err != nil || got != n {
			t.Errorf("varint %d: encoded % x, read %d, %v", n, b, got, err)
		}
	}
}

func TestParseVersion(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Version
		ok   bool
	}{{"", V5, true}, {"5", V5, true}, {"3.1.1", V311, true}, {"4", V311, true}, {"3.1", 0, false}} {
		got, err := ParseVersion(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseVersion(%q) = %v, %v", tc.in, got, err)
		}
	}
}
