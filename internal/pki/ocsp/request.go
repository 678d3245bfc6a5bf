package ocsp

import (
	"crypto"
	"crypto/x509/pkix"
	"encoding/asn1"
	"math/big"

	"cradle"
)

// Request is a parsed OCSPRequest.
type Request struct {
	// Version is the request's version: 0 for v1, the only one defined.
	Version int
	// RequestorName is the DER of the optional requestorName
	// GeneralName, nil when absent. It is not acted on.
	RequestorName []byte
	// Certs are the CertIDs asked about, in request order; at least one.
	Certs []CertID
	// Nonce is the extnValue of the id-pkix-ocsp-nonce request extension
	// exactly as sent (for openssl and RFC 8954 clients, the DER of an
	// OCTET STRING holding the nonce octets), nil when there is none. A
	// response echoes it byte for byte.
	Nonce []byte
	// Signed tells that the request carried an optionalSignature. Its
	// structure was parsed; the signature was not verified.
	Signed bool
}

// CertID names one certificate: its issuer's name and key hashed with
// HashAlgorithm, and its serial number.
type CertID struct {
	// HashAlgorithm is crypto.SHA1, SHA256, SHA384 or SHA512, or 0 for
	// any other algorithm (such a CertID is answered unknown).
	HashAlgorithm  crypto.Hash
	IssuerNameHash []byte
	IssuerKeyHash  []byte
	SerialNumber   *big.Int
	// Raw is the DER of the CertID as received; responses echo it.
	Raw []byte
}

type ocspRequestASN struct {
	TBS       tbsRequestASN
	Signature asn1.RawValue `asn1:"optional,explicit,tag:0"`
}

type tbsRequestASN struct {
	Version       int           `asn1:"optional,explicit,tag:0,default:0"`
	RequestorName asn1.RawValue `asn1:"optional,explicit,tag:1"`
	RequestList   []singleRequestASN
	Extensions    []pkix.Extension `asn1:"optional,explicit,tag:2"`
}

type singleRequestASN struct {
	CertID     asn1.RawValue
	Extensions []pkix.Extension `asn1:"optional,explicit,tag:0"`
}

type certIDASN struct {
	HashAlgorithm pkix.AlgorithmIdentifier
	NameHash      []byte
	KeyHash       []byte
	Serial        *big.Int
}

type signatureASN struct {
	Algorithm pkix.AlgorithmIdentifier
	Signature asn1.BitString
	Certs     []asn1.RawValue `asn1:"optional,explicit,tag:0"`
}

var (
	oidSHA1   = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}
)

func hashFromOID(oid asn1.ObjectIdentifier) crypto.Hash {
	switch {
	case oid.Equal(oidSHA1):
		return crypto.SHA1
	case oid.Equal(oidSHA256):
		return crypto.SHA256
	case oid.Equal(oidSHA384):
		return crypto.SHA384
	case oid.Equal(oidSHA512):
		return crypto.SHA512
	}
	return 0
}

func malformed(format string, args ...any) error {
	return cradle.Errorf(cradle.EINVALID, "ocsp: "+format, args...)
}

// ParseRequest parses a DER OCSPRequest (RFC 6960 §4.1.1). It refuses, with
// a *cradle.Error of code EINVALID (ETOOLARGE for size) saying what is
// wrong: more than MaxRequestBytes, anything that is not one DER
// OCSPRequest, a version other than v1, an empty request list or one of
// more than MaxRequestCerts, a CertID whose hashes do not have the length
// of its hash algorithm, a nonce extnValue over MaxNonceBytes or empty, a
// repeated nonce, and an unknown extension marked critical.
func ParseRequest(der []byte) (*Request, error) {
	if len(der) > MaxRequestBytes {
		return nil, cradle.Errorf(cradle.ETOOLARGE, "ocsp: request of %d octets is over the limit of %d", len(der), MaxRequestBytes)
	}
	if len(der) == 0 {
		return nil, malformed("empty request")
	}
	var a ocspRequestASN
	rest, err := asn1.Unmarshal(der, &a)
	if err != nil {
		return nil, malformed("request is not a DER OCSPRequest: %v", err)
	}
	if len(rest) != 0 {
		return nil, malformed("%d octets after the OCSPRequest", len(rest))
	}
	if a.TBS.Version != 0 {
		return nil, malformed("request version %d is not supported; only v1 (0) is", a.TBS.Version)
	}
	n := len(a.TBS.RequestList)
	if n == 0 {
		return nil, malformed("request asks about no certificate")
	}
	if n > MaxRequestCerts {
		return nil, malformed("request asks about %d certificates; at most %d are answered in one request", n, MaxRequestCerts)
	}
	req := &Request{Version: a.TBS.Version, Certs: make([]CertID, 0, n)}
	if len(a.TBS.RequestorName.FullBytes) != 0 {
		req.RequestorName = a.TBS.RequestorName.Bytes
	}
	for i, sr := range a.TBS.RequestList {
		id, err := parseCertID(sr.CertID.FullBytes)
		if err != nil {
			return nil, malformed("certificate %d: %v", i+1, err)
		}
		for _, e := range sr.Extensions {
			if e.Critical {
				return nil, malformed("certificate %d: unsupported critical extension %v", i+1, e.Id)
			}
		}
		req.Certs = append(req.Certs, id)
	}
	for _, e := range a.TBS.Extensions {
		switch {
		case e.Id.Equal(OIDNonce):
			if req.Nonce != nil {
				return nil, malformed("more than one nonce extension")
			}
			if len(e.Value) == 0 {
				return nil, malformed("empty nonce")
			}
			if len(e.Value) > MaxNonceBytes {
				return nil, malformed("nonce of %d octets is over the limit of %d (RFC 8954 nonces are 1 to 32 octets)", len(e.Value), MaxNonceBytes)
			}
			req.Nonce = e.Value
		case e.Critical:
			return nil, malformed("unsupported critical request extension %v", e.Id)
		}
	}
	if len(a.Signature.FullBytes) != 0 {
		var s signatureASN
		rest, err := asn1.Unmarshal(a.Signature.Bytes, &s)
		if err != nil || len(rest) != 0 {
			return nil, malformed("request signature is not a DER Signature")
		}
		req.Signed = true
	}
	return req, nil
}

func parseCertID(der []byte) (CertID, error) {
	var c certIDASN
	rest, err := asn1.Unmarshal(der, &c)
	if err != nil {
		return CertID{}, malformed("not a DER CertID: %v", err)
	}
	if len(rest) != 0 {
		return CertID{}, malformed("octets after the CertID")
	}
	id := CertID{
		HashAlgorithm:  hashFromOID(c.HashAlgorithm.Algorithm),
		IssuerNameHash: c.NameHash,
		IssuerKeyHash:  c.KeyHash,
		SerialNumber:   c.Serial,
		Raw:            der,
	}
	if id.HashAlgorithm != 0 {
		if size := id.HashAlgorithm.Size(); len(c.NameHash) != size || len(c.KeyHash) != size {
			return CertID{}, malformed("issuer hashes of %d and %d octets do not fit %v", len(c.NameHash), len(c.KeyHash), id.HashAlgorithm)
		}
	} else if len(c.NameHash) > 64 || len(c.KeyHash) > 64 {
		return CertID{}, malformed("issuer hashes over 64 octets")
	}
	if c.Serial == nil {
		return CertID{}, malformed("no serial number")
	}
	return id, nil
}
