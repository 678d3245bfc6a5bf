package mqtt

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Control packet types (MQTT 3.1.1 §2.2.1, MQTT 5 §2.1.2).
const (
	typeConnect    = 1
	typeConnack    = 2
	typePublish    = 3
	typePuback     = 4
	typeSubscribe  = 8
	typeSuback     = 9
	typePingreq    = 12
	typePingresp   = 13
	typeDisconnect = 14
)

// maxRemaining is the largest remaining length MQTT can encode.
const maxRemaining = 268435455

// packet is one control packet: its type, the flags of its fixed header
// and the rest (variable header and payload).
type packet struct {
	typ   byte
	flags byte
	body  []byte
}

// readPacket reads one control packet, refusing a body over limit bytes.
func readPacket(r *bufio.Reader, limit int) (packet, error) {
	h, err := r.ReadByte()
	if err != nil {
		return packet{}, err
	}
	n, err := readVarint(r)
	if err != nil {
		return packet{}, err
	}
	if n > limit {
		return packet{}, fmt.Errorf("mqtt: packet of %d bytes is over the %d-byte limit", n, limit)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return packet{}, fmt.Errorf("mqtt: packet cut short: %w", err)
	}
	return packet{typ: h >> 4, flags: h & 0x0f, body: body}, nil
}

// readVarint reads a variable byte integer (at most four bytes).
func readVarint(r io.ByteReader) (int, error) {
	v, shift := 0, 0
	for i := 0; i < 4; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, err
		}
		v |= int(b&0x7f) << shift
		if b&0x80 == 0 {
			return v, nil
		}
		shift += 7
	}
	return 0, errors.New("mqtt: malformed variable byte integer")
}

func appendVarint(b []byte, v int) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v > 0 {
			c |= 0x80
		}
		b = append(b, c)
		if v == 0 {
			return b
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// encode frames the packet.
func (p packet) encode() []byte {
	b := make([]byte, 0, len(p.body)+5)
	b = append(b, p.typ<<4|p.flags)
	b = appendVarint(b, len(p.body))
	return append(b, p.body...)
}

// reader walks a packet body.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("mqtt: malformed packet: %s", what)
	}
}

func (r *reader) byte_() byte {
	if len(r.b) < 1 {
		r.fail("cut short")
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *reader) uint16() uint16 {
	if len(r.b) < 2 {
		r.fail("cut short")
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) bytes(n int) []byte {
	if n < 0 || len(r.b) < n {
		r.fail("cut short")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) string_() string { return string(r.bytes(int(r.uint16()))) }

// properties skips an MQTT 5 property block and returns its reason
// string (property 0x1F), if any.
func (r *reader) properties() string {
	n, err := readVarint(r)
	if err != nil {
		r.fail("property length")
		return ""
	}
	props := reader{b: r.bytes(n)}
	reason := ""
	for r.err == nil && len(props.b) > 0 {
		id := props.byte_()
		switch id {
		case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: // byte
			props.byte_()
		case 0x13, 0x21, 0x22, 0x23: // two-byte integer
			props.uint16()
		case 0x02, 0x11, 0x18, 0x27: // four-byte integer
			props.bytes(4)
		case 0x0B: // variable byte integer
			if _, err := readVarint(&props); err != nil {
				props.fail("property value")
			}
		case 0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C: // string or binary
			props.string_()
		case 0x1F:
			reason = props.string_()
		case 0x26: // user property: a string pair
			props.string_()
			props.string_()
		default:
			props.fail(fmt.Sprintf("unknown property 0x%02x", id))
		}
		if props.err != nil {
			r.fail("properties")
		}
	}
	return reason
}

// ReadByte lets readVarint read from a body.
func (r *reader) ReadByte() (byte, error) {
	if len(r.b) == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	return r.byte_(), nil
}

// message is an inbound PUBLISH.
type message struct {
	topic   string
	id      uint16 // 0 for QoS 0
	qos     byte
	payload []byte
}

// parsePublish decodes a PUBLISH body of protocol version v.
func parsePublish(v Version, flags byte, body []byte) (message, error) {
	r := reader{b: body}
	m := message{qos: flags >> 1 & 3}
	if m.qos == 3 {
		return m, errors.New("mqtt: malformed packet: PUBLISH with QoS 3")
	}
	m.topic = r.string_()
	if m.qos > 0 {
		m.id = r.uint16()
	}
	if v == V5 {
		r.properties()
	}
	if r.err != nil {
		return m, r.err
	}
	if m.topic == "" {
		return m, errors.New("mqtt: malformed packet: PUBLISH without a topic")
	}
	m.payload = r.b
	return m, nil
}

// ack is a CONNACK, PUBACK or SUBACK: its packet ID (none for CONNACK),
// its reason or return codes and the server's reason string.
type ack struct {
	id     uint16
	codes  []byte
	reason string
}

// parseAck decodes the body of an acknowledgement of type typ.
func parseAck(v Version, typ byte, body []byte) (ack, error) {
	r := reader{b: body}
	var a ack
	switch typ {
	case typeConnack:
		r.byte_() // session present
		a.codes = []byte{r.byte_()}
		if v == V5 && r.err == nil && len(r.b) > 0 {
			a.reason = r.properties()
		}
	case typePuback:
		a.id = r.uint16()
		a.codes = []byte{0}
		if v == V5 && len(r.b) > 0 {
			a.codes[0] = r.byte_()
			if len(r.b) > 0 {
				a.reason = r.properties()
			}
		}
	case typeSuback:
		a.id = r.uint16()
		if v == V5 {
			a.reason = r.properties()
		}
		a.codes = r.b
		if len(a.codes) == 0 {
			r.fail("SUBACK without return codes")
		}
	case typeDisconnect:
		a.codes = []byte{0}
		if len(r.b) > 0 {
			a.codes[0] = r.byte_()
			if len(r.b) > 0 {
				a.reason = r.properties()
			}
		}
	default:
		return a, fmt.Errorf("mqtt: unexpected packet type %d", typ)
	}
	return a, r.err
}

func connectPacket(v Version, clientID string, keepAlive uint16) packet {
	b := appendString(nil, "MQTT")
	b = append(b, byte(v), 0x02) // clean session / clean start, no credentials
	b = binary.BigEndian.AppendUint16(b, keepAlive)
	if v == V5 {
		b = append(b, 0) // no properties
	}
	b = appendString(b, clientID)
	return packet{typ: typeConnect, body: b}
}

func publishPacket(v Version, topic string, id uint16, payload []byte) packet {
	b := appendString(make([]byte, 0, len(topic)+len(payload)+8), topic)
	b = binary.BigEndian.AppendUint16(b, id)
	if v == V5 {
		b = append(b, 0)
	}
	return packet{typ: typePublish, flags: 1 << 1, body: append(b, payload...)} // QoS 1
}

func pubackPacket(v Version, id uint16) packet {
	return packet{typ: typePuback, body: binary.BigEndian.AppendUint16(nil, id)}
}

func subscribePacket(v Version, id uint16, filters []string) packet {
	b := binary.BigEndian.AppendUint16(nil, id)
	if v == V5 {
		b = append(b, 0)
	}
	for _, f := range filters {
		b = appendString(b, f)
		b = append(b, 1) // QoS 1
	}
	return packet{typ: typeSubscribe, flags: 0x02, body: b}
}
