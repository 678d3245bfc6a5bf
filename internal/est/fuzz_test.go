package est_test

import (
	"bytes"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/est"
)

func FuzzDecodeCSRBody(f *testing.F) {
	key := newKey(f)
	der := newCSR(f, key, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "SN-0001"}})
	b64 := base64.StdEncoding.EncodeToString(der)
	f.Add([]byte(b64))
	f.Add([]byte(b64[:40] + "\r\n" + b64[40:] + "\n"))
	f.Add([]byte(base64.RawStdEncoding.EncodeToString(der)))
	f.Add([]byte(base64.StdEncoding.EncodeToString(der[:len(der)/2])))
	f.Add(der)
	bad := bytes.Clone(der)
	bad[len(bad)-5] ^= 1
	f.Add([]byte(base64.StdEncoding.EncodeToString(bad)))
	f.Add([]byte(""))
	f.Add([]byte("===="))
	f.Fuzz(func(t *testing.T, body []byte) {
		csr, err := est.DecodeCSR(body)
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("error code %q, want %q: %v", cradle.ErrorCode(err), cradle.EINVALID, err)
			}
			return
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a CSR whose signature fails: %v", err)
		}
	})
}

func FuzzParseCertsOnly(f *testing.F) {
	p := newPKI(f)
	one, err := est.EncodeCertsOnly([]*x509.Certificate{p.caCert})
	if err != nil {
		f.Fatal(err)
	}
	two, err := est.EncodeCertsOnly([]*x509.Certificate{p.idevid.Leaf, p.caCert})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(one)
	f.Add(two)
	f.Add(two[:len(two)-10])
	f.Add(p.caCert.Raw)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		certs, err := est.ParseCertsOnly(der)
		if err != nil {
			return
		}
		if len(certs) == 0 {
			t.Fatal("no error and no certificate")
		}
		again, err := est.EncodeCertsOnly(certs)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := est.ParseCertsOnly(again)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if len(back) != len(certs) {
			t.Fatalf("round trip gave %d certificates, want %d", len(back), len(certs))
		}
		for i := range back {
			if !bytes.Equal(back[i].Raw, certs[i].Raw) {
				t.Fatalf("certificate %d changed in the round trip", i)
			}
		}
	})
}

func FuzzParseCSRAttrs(f *testing.F) {
	curve, _ := asn1.Marshal(asn1.ObjectIdentifier{1, 3, 132, 0, 34})
	seed, err := est.MarshalCSRAttrs([]est.CSRAttr{
		{OID: asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}},
		{OID: asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}, Values: []asn1.RawValue{{FullBytes: curve}}},
	})
	if err != nil {
		f.Fatal(err)
	}
	empty, _ := est.MarshalCSRAttrs(nil)
	f.Add(seed)
	f.Add(empty)
	f.Add(seed[:len(seed)-3])
	f.Add([]byte{0x30, 0x02, 0x31, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		attrs, err := est.ParseCSRAttrs(der)
		if err != nil {
			return
		}
		again, err := est.MarshalCSRAttrs(attrs)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		back, err := est.ParseCSRAttrs(again)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if diff := cmp.Diff(attrs, back); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
