package ocsp_test

import (
	"bytes"
	"crypto"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle"
	"cradle/internal/pki/ocsp"
)

func TestParseRequest(t *testing.T) {
	ca := newCA(t, "CA", nil, nil, 2)
	id1 := certID(t, crypto.SHA1, ca.cert, ca.leaves[0].SerialNumber)
	id2 := certID(t, crypto.SHA256, ca.cert, ca.leaves[1].SerialNumber)
	nonce := wrapNonce(t, bytes.Repeat([]byte{7}, 16))
	many := make([]asn1RV, ocsp.MaxRequestCerts+1)
	for i := range many {
		many[i] = id1
	}
	badLen, _ := asn1.Marshal(struct {
		Alg    pkix.AlgorithmIdentifier
		NH, KH []byte
		Serial *big.Int
	}{pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}}, []byte{1}, []byte{2}, big.NewInt(1)})
	otherHash, _ := asn1.Marshal(struct {
		Alg    pkix.AlgorithmIdentifier
		NH, KH []byte
		Serial *big.Int
	}{pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 3}}, []byte{1}, []byte{2}, big.NewInt(1)})
	good := buildRequest(t, reqSpec{ids: []asn1RV{id1}})

	type want struct {
		Serials []string
		Hashes  []crypto.Hash
		Nonce   []byte
		Signed  bool
	}
	tests := []struct {
		name    string
		der     []byte
		want    *want
		errCode string
		errText string
	}{
		{"one SHA-1", good, &want{Serials: []string{ca.leaves[0].SerialNumber.Text(16)}, Hashes: []crypto.Hash{crypto.SHA1}}, "", ""},
		{"two with nonce", buildRequest(t, reqSpec{ids: []asn1RV{id1, id2}, nonce: nonce}), &want{Serials: []string{ca.leaves[0].SerialNumber.Text(16), ca.leaves[1].SerialNumber.Text(16)}, Hashes: []crypto.Hash{crypto.SHA1, crypto.SHA256}, Nonce: nonce}, "", ""},
		{"signed", buildRequest(t, reqSpec{ids: []asn1RV{id1}, signed: true}), &want{Serials: []string{ca.leaves[0].SerialNumber.Text(16)}, Hashes: []crypto.Hash{crypto.SHA1}, Signed: true}, "", ""},
		{"unknown hash algorithm", buildRequest(t, reqSpec{ids: []asn1RV{{FullBytes: otherHash}}}), &want{Serials: []string{"1"}, Hashes: []crypto.Hash{0}}, "", ""},
		{"non-critical unknown extension", buildRequest(t, reqSpec{ids: []asn1RV{id1}, exts: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3}, Value: []byte{5, 0}}}}), &want{Serials: []string{ca.leaves[0].SerialNumber.Text(16)}, Hashes: []crypto.Hash{crypto.SHA1}}, "", ""},
		{"empty", nil, nil, cradle.EINVALID, "empty request"},
		{"not DER", []byte("GET / HTTP/1.1"), nil, cradle.EINVALID, "not a DER OCSPRequest"},
		{"truncated", good[:len(good)-1], nil, cradle.EINVALID, "not a DER OCSPRequest"},
		{"trailing octets", append(append([]byte{}, good...), 0, 0), nil, cradle.EINVALID, "after the OCSPRequest"},
		{"too large", make([]byte, ocsp.MaxRequestBytes+1), nil, cradle.ETOOLARGE, "over the limit"},
		{"version 2", buildRequest(t, reqSpec{ids: []asn1RV{id1}, version: 1}), nil, cradle.EINVALID, "version 1 is not supported"},
		{"no certificates", buildRequest(t, reqSpec{nonce: nonce}), nil, cradle.EINVALID, "no certificate"},
		// encoding/asn1 trips on the empty list before the explicit
		// [2] that may follow it; refused all the same.
		{"no certificates, nothing after", buildRequest(t, reqSpec{}), nil, cradle.EINVALID, "not a DER OCSPRequest"},
		{"too many certificates", buildRequest(t, reqSpec{ids: many}), nil, cradle.EINVALID, "at most 100"},
		{"hash of wrong length", buildRequest(t, reqSpec{ids: []asn1RV{{FullBytes: badLen}}}), nil, cradle.EINVALID, "do not fit SHA-1"},
		{"critical unknown extension", buildRequest(t, reqSpec{ids: []asn1RV{id1}, exts: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 2, 3}, Critical: true, Value: []byte{5, 0}}}}), nil, cradle.EINVALID, "critical"},
		{"two nonces", buildRequest(t, reqSpec{ids: []asn1RV{id1}, nonce: nonce, exts: []pkix.Extension{{Id: ocsp.OIDNonce, Value: nonce}}}), nil, cradle.EINVALID, "more than one nonce"},
		{"nonce too long", buildRequest(t, reqSpec{ids: []asn1RV{id1}, nonce: wrapNonce(t, make([]byte, 100))}), nil, cradle.EINVALID, "nonce of 102 octets"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := ocsp.ParseRequest(tt.der)
			if tt.want == nil {
				if err == nil {
					t.Fatal("accepted")
				}
				if code := cradle.ErrorCode(err); code != tt.errCode || !strings.Contains(err.Error(), tt.errText) || !strings.Contains(err.Error(), "ocsp: ") {
					t.Errorf("err = %v (code %s), want code %s and %q", err, code, tt.errCode, tt.errText)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := &want{Nonce: req.Nonce, Signed: req.Signed}
			for _, c := range req.Certs {
				got.Serials = append(got.Serials, c.SerialNumber.Text(16))
				got.Hashes = append(got.Hashes, c.HashAlgorithm)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

// TestParseRequestCertID checks the fields of a CertID against the issuer.
func TestParseRequestCertID(t *testing.T) {
	ca := newCA(t, "CA", nil, nil, 1)
	id := certID(t, crypto.SHA256, ca.cert, ca.leaves[0].SerialNumber)
	req, err := ocsp.ParseRequest(buildRequest(t, reqSpec{ids: []asn1RV{id}}))
	if err != nil {
		t.Fatal(err)
	}
	c := req.Certs[0]
	if !bytes.Equal(c.Raw, id.FullBytes) || len(c.IssuerNameHash) != 32 || len(c.IssuerKeyHash) != 32 {
		t.Errorf("CertID %+v", c)
	}
}
