package cradle

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
)

func TestCanonicalMenderIDData(t *testing.T) {
	canon, mac, err := CanonicalMenderIDData(" {\"mac\": \"02-00-00-00-00-0A\", \"cpu\":\"arm\" ,\"ifs\":[\"eth0\",\"wlan0\"]}\n")
	if err != nil {
		t.Fatal(err)
	}
	if canon != `{"cpu":"arm","ifs":["eth0","wlan0"],"mac":"02-00-00-00-00-0A"}` || mac != "02:00:00:00:00:0a" {
		t.Fatalf("canon %s mac %q", canon, mac)
	}
	again, _, err := CanonicalMenderIDData(canon)
	if err != nil || again != canon {
		t.Fatalf("not a fixed point: %s, %v", again, err)
	}
	if _, mac, _ := CanonicalMenderIDData(`{"serial":"SN1"}`); mac != "" {
		t.Fatalf("mac %q without one", mac)
	}
	for _, bad := range []struct{ in, want string }{
		{``, "not a JSON object"},
		{`[]`, "not a JSON object"},
		{`null`, "not a JSON object"},
		{`{}`, "empty object"},
		{`{"mac":1}`, "strings or lists"},
		{`{"a":[1]}`, "only strings"},
		{`{"a":"b"} {}`, "text after"},
		{`{"a":"` + strings.Repeat("x", MaxMenderIDData) + `"}`, "at most"},
	} {
		_, _, err := CanonicalMenderIDData(bad.in)
		if ErrorCode(err) != EINVALID || !strings.Contains(ErrorMessage(err), bad.want) {
			t.Errorf("%.40q: %v, want EINVALID with %q", bad.in, err, bad.want)
		}
	}
}

func TestParseDevicePublicKey(t *testing.T) {
	pemOf := func(pub any) string {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, pub := range []any{&rk.PublicKey, &ek.PublicKey, edPub} {
		p := pemOf(pub)
		_, canon, fp, err := ParseDevicePublicKey("\n" + p + "\n")
		if err != nil || canon != p || len(fp) != 64 {
			t.Fatalf("%T: %v, %q, %q", pub, err, canon, fp)
		}
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, bad := range []struct{ in, want string }{
		{"", "not PEM"},
		{pemOf(&small.PublicKey), "at least 2048"},
		{pemOf(&p384.PublicKey), "only P-256"},
		{pemOf(edPub) + "junk", "after its block"},
		{strings.Replace(pemOf(edPub), "PUBLIC KEY", "RSA PUBLIC KEY", 2), "not PEM"},
		{"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "public key:"},
	} {
		_, _, _, err := ParseDevicePublicKey(bad.in)
		if ErrorCode(err) != EINVALID || !strings.Contains(ErrorMessage(err), bad.want) {
			t.Errorf("%.40q: %v, want EINVALID with %q", bad.in, err, bad.want)
		}
	}
}

func FuzzCanonicalMenderIDData(f *testing.F) {
	f.Add(`{"mac":"02:00:00:00:00:01"}`)
	f.Add(`{"a":["b","c"],"mac":"zz"}`)
	f.Add(`{"a":{"b":1}}`)
	f.Fuzz(func(t *testing.T, raw string) {
		canon, _, err := CanonicalMenderIDData(raw)
		if err != nil {
			if ErrorCode(err) != EINVALID {
				t.Fatalf("error code %s: %v", ErrorCode(err), err)
			}
			return
		}
		again, _, err := CanonicalMenderIDData(canon)
		if err != nil || again != canon {
			t.Fatalf("canonical form %q is not a fixed point: %q, %v", canon, again, err)
		}
	})
}

func FuzzParseDevicePublicKey(f *testing.F) {
	ek, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&ek.PublicKey)
	f.Add(string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})))
	f.Add("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
	f.Fuzz(func(t *testing.T, in string) {
		_, canon, fp, err := ParseDevicePublicKey(in)
		if err != nil {
			if ErrorCode(err) != EINVALID {
				t.Fatalf("error code %s: %v", ErrorCode(err), err)
			}
			return
		}
		_, canon2, fp2, err := ParseDevicePublicKey(canon)
		if err != nil || canon2 != canon || fp2 != fp {
			t.Fatalf("canonical key does not parse to itself: %v", err)
		}
	})
}
