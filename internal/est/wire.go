package est

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"errors"
	"fmt"

	"cradle"
)

var (
	oidData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
)

// contentInfo is CMS ContentInfo (RFC 5652 §3).
type contentInfo struct {
	ContentType asn1.ObjectIdentifier
	Content     asn1.RawValue `asn1:"explicit,tag:0"`
}

// encapContentInfo is EncapsulatedContentInfo with its content absent.
type encapContentInfo struct {
	EContentType asn1.ObjectIdentifier
}

// signedData is a degenerate SignedData: empty sets are raw values so that
// they encode as SET {} rather than be left out.
type signedData struct {
	Version          int
	DigestAlgorithms asn1.RawValue
	EncapContentInfo encapContentInfo
	Certificates     asn1.RawValue // [0] IMPLICIT CertificateSet
	SignerInfos      asn1.RawValue
}

var emptySet = asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: []byte{}}

// EncodeCertsOnly returns the DER of a certs-only CMS message (a
// degenerate SignedData, RFC 5652 §5 and RFC 7030 §4.1.3) holding certs in
// the given order. It fails on an empty list or a certificate without Raw.
// The result is DER, not base64.
func EncodeCertsOnly(certs []*x509.Certificate) ([]byte, error) {
	if len(certs) == 0 {
		return nil, errors.New("est: certs-only message needs at least one certificate")
	}
	var set []byte
	for i, c := range certs {
		if c == nil || len(c.Raw) == 0 {
			return nil, fmt.Errorf("est: certificate %d has no DER", i)
		}
		set = append(set, c.Raw...)
	}
	sd, err := asn1.Marshal(signedData{
		Version:          1,
		DigestAlgorithms: emptySet,
		EncapContentInfo: encapContentInfo{EContentType: oidData},
		Certificates:     asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: set},
		SignerInfos:      emptySet,
	})
	if err != nil {
		return nil, fmt.Errorf("est: encode signed data: %w", err)
	}
	// The [0] EXPLICIT wrapper is written by hand: encoding/asn1 writes a
	// RawValue's FullBytes as they are, ignoring the field's tag.
	der, err := asn1.Marshal(struct {
		ContentType asn1.ObjectIdentifier
		Content     asn1.RawValue
	}{oidSignedData, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: sd}})
	if err != nil {
		return nil, fmt.Errorf("est: encode content info: %w", err)
	}
	return der, nil
}

// ParseCertsOnly returns the certificates of a CMS SignedData in DER
// (BER with indefinite lengths is refused), in the order they appear.
// It reads the certificates only: signer infos, if any, are neither
// required to be empty nor verified, and CRLs and non-X.509 certificate
// choices are skipped. It fails when der is not a SignedData, has trailing
// bytes, or holds no certificate or one that does not parse.
func ParseCertsOnly(der []byte) ([]*x509.Certificate, error) {
	var ci contentInfo
	rest, err := asn1.Unmarshal(der, &ci)
	if err != nil {
		return nil, fmt.Errorf("est: certs-only: not a CMS content info: %w", err)
	}
	if len(rest) != 0 {
		return nil, errors.New("est: certs-only: trailing bytes after content info")
	}
	if !ci.ContentType.Equal(oidSignedData) {
		return nil, fmt.Errorf("est: certs-only: content type %v is not signed data", ci.ContentType)
	}
	// SignedData ::= SEQUENCE { version, digestAlgorithms SET,
	// encapContentInfo SEQUENCE, certificates [0] IMPLICIT OPTIONAL,
	// crls [1] IMPLICIT OPTIONAL, signerInfos SET }
	var seq asn1.RawValue
	if rest, err = asn1.Unmarshal(ci.Content.Bytes, &seq); err != nil {
		return nil, fmt.Errorf("est: certs-only: signed data: %w", err)
	}
	if len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, errors.New("est: certs-only: signed data is not a single SEQUENCE")
	}
	var fields []asn1.RawValue
	for b := seq.Bytes; len(b) > 0; {
		var f asn1.RawValue
		if b, err = asn1.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("est: certs-only: signed data field: %w", err)
		}
		fields = append(fields, f)
	}
	if len(fields) < 4 {
		return nil, errors.New("est: certs-only: signed data has too few fields")
	}
	var version int
	if _, err := asn1.Unmarshal(fields[0].FullBytes, &version); err != nil {
		return nil, fmt.Errorf("est: certs-only: signed data version: %w", err)
	}
	if fields[1].Tag != asn1.TagSet || fields[2].Tag != asn1.TagSequence || fields[len(fields)-1].Tag != asn1.TagSet {
		return nil, errors.New("est: certs-only: signed data fields out of shape")
	}
	var certs []*x509.Certificate
	for _, f := range fields[3 : len(fields)-1] {
		if f.Class != asn1.ClassContextSpecific || f.Tag != 0 {
			continue // [1] crls
		}
		if !f.IsCompound {
			return nil, errors.New("est: certs-only: certificate set is not constructed")
		}
		for b := f.Bytes; len(b) > 0; {
			var c asn1.RawValue
			if b, err = asn1.Unmarshal(b, &c); err != nil {
				return nil, fmt.Errorf("est: certs-only: certificate set: %w", err)
			}
			if c.Class != asn1.ClassUniversal || c.Tag != asn1.TagSequence {
				continue // attribute or other certificate formats
			}
			cert, err := x509.ParseCertificate(c.FullBytes)
			if err != nil {
				return nil, fmt.Errorf("est: certs-only: certificate %d: %w", len(certs), err)
			}
			certs = append(certs, cert)
		}
	}
	if len(certs) == 0 {
		return nil, errors.New("est: certs-only: no certificate in the message")
	}
	return certs, nil
}

// decodeBase64 decodes standard base64 with or without padding, ignoring
// white space (line breaks of any length, CRLF, spaces, tabs).
func decodeBase64(b []byte) ([]byte, error) {
	clean := make([]byte, 0, len(b))
	for _, c := range b {
		switch c {
		case ' ', '\t', '\r', '\n', '\v', '\f':
		default:
			clean = append(clean, c)
		}
	}
	if len(clean) == 0 {
		return nil, errors.New("empty body")
	}
	clean = bytes.TrimRight(clean, "=")
	out := make([]byte, base64.RawStdEncoding.DecodedLen(len(clean)))
	n, err := base64.RawStdEncoding.Strict().Decode(out, clean)
	if err != nil {
		return nil, err
	}
	return out[:n], nil
}

// encodeBase64 encodes as base64 in lines of 64 characters, each ending
// in CRLF, as MIME base64 (RFC 2045) allows.
func encodeBase64(der []byte) []byte {
	s := base64.StdEncoding.EncodeToString(der)
	out := make([]byte, 0, len(s)+len(s)/64*2+2)
	for len(s) > 64 {
		out = append(out, s[:64]...)
		out = append(out, '\r', '\n')
		s = s[64:]
	}
	out = append(out, s...)
	return append(out, '\r', '\n')
}

// DecodeCSR decodes an EST enrollment body: base64 (with or without line
// breaks) of a DER PKCS#10 certification request. It parses the request
// and checks its signature with the key it carries (proof of possession).
// Errors are *cradle.Error with code EINVALID whose message says what to
// fix.
func DecodeCSR(body []byte) (*x509.CertificateRequest, error) {
	der, err := decodeBase64(body)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "body is not base64 (%v); send the DER CSR base64-encoded as RFC 7030 and RFC 8951 require", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "body does not hold a PKCS#10 certification request (%v); send a complete DER CSR", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, cradle.Errorf(cradle.EINVALID, "CSR signature does not verify with the CSR's public key (%v): no proof of possession; sign the CSR with the private key it names", err)
	}
	return csr, nil
}

// CSRAttr is one element of a CsrAttrs sequence (RFC 7030 §4.5.2): an OID
// alone (Values nil) or an attribute with its values, each kept as DER.
type CSRAttr struct {
	OID    asn1.ObjectIdentifier
	Values []asn1.RawValue
}

// ParseCSRAttrs parses the DER of a CsrAttrs: SEQUENCE OF CHOICE {
// OBJECT IDENTIFIER, Attribute }. An empty sequence yields an empty,
// non-nil slice. An attribute must have at least one value.
func ParseCSRAttrs(der []byte) ([]CSRAttr, error) {
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil {
		return nil, fmt.Errorf("est: csrattrs: %w", err)
	}
	if len(rest) != 0 {
		return nil, errors.New("est: csrattrs: trailing bytes")
	}
	if seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, errors.New("est: csrattrs: not a SEQUENCE")
	}
	attrs := []CSRAttr{}
	for b := seq.Bytes; len(b) > 0; {
		var e asn1.RawValue
		if b, err = asn1.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("est: csrattrs: element %d: %w", len(attrs), err)
		}
		switch {
		case e.Class == asn1.ClassUniversal && e.Tag == asn1.TagOID:
			var oid asn1.ObjectIdentifier
			if _, err := asn1.Unmarshal(e.FullBytes, &oid); err != nil {
				return nil, fmt.Errorf("est: csrattrs: element %d: %w", len(attrs), err)
			}
			attrs = append(attrs, CSRAttr{OID: oid})
		case e.Class == asn1.ClassUniversal && e.Tag == asn1.TagSequence:
			var a struct {
				Type   asn1.ObjectIdentifier
				Values []asn1.RawValue `asn1:"set"`
			}
			if rest, err := asn1.Unmarshal(e.FullBytes, &a); err != nil || len(rest) != 0 {
				return nil, fmt.Errorf("est: csrattrs: element %d is not an attribute", len(attrs))
			}
			if len(a.Values) == 0 {
				return nil, fmt.Errorf("est: csrattrs: attribute %v has no value", a.Type)
			}
			vals := make([]asn1.RawValue, len(a.Values))
			for i, v := range a.Values {
				vals[i] = asn1.RawValue{FullBytes: v.FullBytes}
			}
			attrs = append(attrs, CSRAttr{OID: a.Type, Values: vals})
		default:
			return nil, fmt.Errorf("est: csrattrs: element %d is neither an OID nor an attribute", len(attrs))
		}
	}
	return attrs, nil
}

// MarshalCSRAttrs returns the DER of a CsrAttrs sequence. Each value of an
// attribute must be complete DER in its FullBytes.
func MarshalCSRAttrs(attrs []CSRAttr) ([]byte, error) {
	var body []byte
	for _, a := range attrs {
		var (
			b   []byte
			err error
		)
		if a.Values == nil {
			b, err = asn1.Marshal(a.OID)
		} else {
			if len(a.Values) == 0 {
				return nil, fmt.Errorf("est: csrattrs: attribute %v has no value", a.OID)
			}
			var set []byte
			for _, v := range a.Values {
				if len(v.FullBytes) == 0 {
					return nil, fmt.Errorf("est: csrattrs: attribute %v has a value without DER", a.OID)
				}
				set = append(set, v.FullBytes...)
			}
			b, err = asn1.Marshal(struct {
				Type   asn1.ObjectIdentifier
				Values asn1.RawValue
			}{a.OID, asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSet, IsCompound: true, Bytes: set}})
		}
		if err != nil {
			return nil, fmt.Errorf("est: csrattrs: %w", err)
		}
		body = append(body, b...)
	}
	return asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
}
