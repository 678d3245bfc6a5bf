package cradle_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"

	"cradle"
)

// selfSigned returns a certificate for key's public half.
func selfSigned(t testing.TB, key crypto.Signer) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "SN-1"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1<<31, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func signTombstone(t testing.TB, payload []byte, key crypto.Signer) cradle.SignedTombstone {
	t.Helper()
	var sig []byte
	var err error
	if _, ok := key.(ed25519.PrivateKey); ok {
		sig, err = key.Sign(rand.Reader, payload, crypto.Hash(0))
	} else {
		sum := sha256.Sum256(payload)
		sig, err = key.Sign(rand.Reader, sum[:], crypto.SHA256)
	}
	if err != nil {
		t.Fatal(err)
	}
	return cradle.SignedTombstone{Payload: payload, Signature: sig, Certificate: selfSigned(t, key).Raw}
}

var goodTombstone = cradle.Tombstone{Serial: "SN-1", CommandID: "cmd_0123", Sequence: 3, Lifecycle: "eol",
	At: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC), Erased: []cradle.ErasedObject{{Store: "tpm", Kind: "key", Name: "0x81000001"}}}

func TestVerifyTombstone(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	payload, _ := json.Marshal(goodTombstone)
	for name, key := range map[string]crypto.Signer{"ecdsa": ec, "rsa": rk, "ed25519": ed} {
		t.Run(name, func(t *testing.T) {
			tb, cert, err := cradle.VerifyTombstone(signTombstone(t, payload, key))
			if err != nil || tb.Serial != "SN-1" || tb.Sequence != 3 || cert.SerialNumber.Int64() != 7 {
				t.Fatalf("%+v %v", tb, err)
			}
		})
	}
	mutate := func(f func(*cradle.Tombstone)) []byte {
		tb := goodTombstone
		f(&tb)
		b, _ := json.Marshal(tb)
		return b
	}
	tests := []struct {
		name string
		st   cradle.SignedTombstone
		want string
	}{
		{"empty", cradle.SignedTombstone{}, "empty payload"},
		{"no signature", cradle.SignedTombstone{Payload: payload, Certificate: selfSigned(t, ec).Raw}, "no signature"},
		{"bad certificate", cradle.SignedTombstone{Payload: payload, Signature: []byte{1}, Certificate: []byte{1, 2}}, "certificate"},
		{"other key", func() cradle.SignedTombstone {
			st := signTombstone(t, payload, ec)
			st.Certificate = selfSigned(t, ed).Raw
			return st
		}(), "signature does not verify"},
		{"unknown field", signTombstone(t, []byte(strings.Replace(string(payload), `{"serial"`, `{"x":1,"serial"`, 1)), ec), "unknown field"},
		{"trailing data", signTombstone(t, append(append([]byte{}, payload...), []byte(" {}")...), ec), "after the JSON"},
		{"no command", signTombstone(t, mutate(func(tb *cradle.Tombstone) { tb.CommandID = "" }), ec), "command_id"},
		{"no sequence", signTombstone(t, mutate(func(tb *cradle.Tombstone) { tb.Sequence = 0 }), ec), "sequence"},
		{"lifecycle", signTombstone(t, mutate(func(tb *cradle.Tombstone) { tb.Lifecycle = "deployed" }), ec), "lifecycle"},
		{"bad object", signTombstone(t, mutate(func(tb *cradle.Tombstone) { tb.Erased = []cradle.ErasedObject{{Store: "disk", Kind: "key", Name: "x"}} }), ec), "erased[0]"},
		{"no time", signTombstone(t, mutate(func(tb *cradle.Tombstone) { tb.At = time.Time{} }), ec), "at is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := cradle.VerifyTombstone(tt.st)
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tt.want) {
				t.Fatalf("error %v, want EINVALID with %q", err, tt.want)
			}
		})
	}
}

func FuzzVerifyTombstone(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	payload, _ := json.Marshal(goodTombstone)
	st := signTombstone(f, payload, ec)
	f.Add(st.Payload, st.Signature, st.Certificate)
	f.Add([]byte(`{"serial":"SN-1"}`), []byte{0x30, 0}, st.Certificate)
	f.Add([]byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, payload, sig, cert []byte) {
		tb, c, err := cradle.VerifyTombstone(cradle.SignedTombstone{Payload: payload, Signature: sig, Certificate: cert})
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("error code %q: %v", cradle.ErrorCode(err), err)
			}
			return
		}
		if tb == nil || c == nil || tb.Lifecycle != "eol" || tb.Sequence == 0 {
			t.Fatalf("accepted %+v", tb)
		}
	})
}
