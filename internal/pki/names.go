package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"cradle"
)

// hardwareModuleName is RFC 4108's HardwareModuleName.
type hardwareModuleName struct {
	Type      asn1.ObjectIdentifier
	SerialNum []byte // OCTET STRING
}

// GeneralName tags (RFC 5280 §4.2.1.6), context-specific.
const (
	tagOtherName  = 0
	tagRFC822Name = 1
	tagDNSName    = 2
	tagURI        = 6
	tagIPAddress  = 7
)

// marshalSAN encodes the subjectAltName extension of t with the
// hardwareModuleName otherName first, then t's e-mail addresses, DNS
// names, URIs and IP addresses.
func marshalSAN(t *x509.Certificate, hmn *hardwareModuleName) (pkix.Extension, error) {
	var names []asn1.RawValue
	if hmn != nil {
		inner, err := asn1.Marshal(*hmn)
		if err != nil {
			return pkix.Extension{}, fmt.Errorf("encode hardwareModuleName: %w", err)
		}
		oid, err := asn1.Marshal(OIDHardwareModuleName)
		if err != nil {
			return pkix.Extension{}, err
		}
		value, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: inner})
		if err != nil {
			return pkix.Extension{}, err
		}
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagOtherName, IsCompound: true, Bytes: append(oid, value...)})
	}
	ia5 := func(tag int, s string) error {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return fmt.Errorf("subject alternative name %q is not ASCII", s)
			}
		}
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, Bytes: []byte(s)})
		return nil
	}
	for _, e := range t.EmailAddresses {
		if err := ia5(tagRFC822Name, e); err != nil {
			return pkix.Extension{}, err
		}
	}
	for _, d := range t.DNSNames {
		if err := ia5(tagDNSName, d); err != nil {
			return pkix.Extension{}, err
		}
	}
	for _, u := range t.URIs {
		if err := ia5(tagURI, u.String()); err != nil {
			return pkix.Extension{}, err
		}
	}
	for _, ip := range t.IPAddresses {
		b := ip.To4()
		if b == nil {
			b = ip.To16()
		}
		if b == nil {
			return pkix.Extension{}, fmt.Errorf("invalid IP address in subject alternative name")
		}
		names = append(names, asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tagIPAddress, Bytes: b})
	}
	der, err := asn1.Marshal(names)
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("encode subjectAltName: %w", err)
	}
	// Non-critical: the subject is never empty in our profiles.
	return pkix.Extension{Id: oidSubjectAltName, Value: der}, nil
}

// ParseHardwareModuleName reads the hardwareModuleName otherName (RFC
// 4108, id-on-hardwareModuleName) from cert's subjectAltName. ok is false
// and err nil when the certificate has no SAN or no such name; err is set
// when the SAN or the name is malformed or the name appears twice. The
// input is outside data (a device's certificate): every length is checked.
func ParseHardwareModuleName(cert *x509.Certificate) (hwType asn1.ObjectIdentifier, serial []byte, ok bool, err error) {
	var ext *pkix.Extension
	for i := range cert.Extensions {
		if cert.Extensions[i].Id.Equal(oidSubjectAltName) {
			ext = &cert.Extensions[i]
			break
		}
	}
	if ext == nil {
		return nil, nil, false, nil
	}
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(ext.Value, &seq)
	if err != nil {
		return nil, nil, false, fmt.Errorf("pki: malformed subjectAltName: %w", err)
	}
	if len(rest) > 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return nil, nil, false, errors.New("pki: malformed subjectAltName: not a single SEQUENCE")
	}
	for data := seq.Bytes; len(data) > 0; {
		var gn asn1.RawValue
		if data, err = asn1.Unmarshal(data, &gn); err != nil {
			return nil, nil, false, fmt.Errorf("pki: malformed subjectAltName: %w", err)
		}
		if gn.Class != asn1.ClassContextSpecific || gn.Tag != tagOtherName {
			continue
		}
		if !gn.IsCompound {
			return nil, nil, false, errors.New("pki: malformed otherName: not constructed")
		}
		var id asn1.ObjectIdentifier
		r, err := asn1.Unmarshal(gn.Bytes, &id)
		if err != nil {
			return nil, nil, false, fmt.Errorf("pki: malformed otherName type: %w", err)
		}
		if !id.Equal(OIDHardwareModuleName) {
			continue
		}
		if ok {
			return nil, nil, false, errors.New("pki: more than one hardwareModuleName")
		}
		var v asn1.RawValue
		r, err = asn1.Unmarshal(r, &v)
		if err != nil {
			return nil, nil, false, fmt.Errorf("pki: malformed hardwareModuleName: %w", err)
		}
		if len(r) > 0 || v.Class != asn1.ClassContextSpecific || v.Tag != 0 || !v.IsCompound {
			return nil, nil, false, errors.New("pki: malformed hardwareModuleName: value is not [0] EXPLICIT")
		}
		var h hardwareModuleName
		r, err = asn1.Unmarshal(v.Bytes, &h)
		if err != nil {
			return nil, nil, false, fmt.Errorf("pki: malformed hardwareModuleName: %w", err)
		}
		if len(r) > 0 {
			return nil, nil, false, errors.New("pki: malformed hardwareModuleName: trailing data")
		}
		if len(h.Type) == 0 {
			return nil, nil, false, errors.New("pki: malformed hardwareModuleName: empty hwType")
		}
		hwType, serial, ok = h.Type, h.SerialNum, true
	}
	return hwType, serial, ok, nil
}

// DeviceURIPrefix starts every device URI.
const DeviceURIPrefix = "urn:cradle:device:"

// DeviceURI returns the URI that names a device in its LDevID:
//
//	urn:cradle:device:<tenant>:<serial>
//
// tenant must pass cradle.ValidateTenantName and serial
// cradle.ValidateSerial; neither can contain ':' or any character that
// needs escaping, so the form is unambiguous and never percent-encoded.
// "cradle" is not a registered URN namespace; the URI is only ever
// compared by Cradle. Errors are *cradle.Error with code EINVALID.
func DeviceURI(tenant, serial string) (*url.URL, error) {
	if err := cradle.ValidateTenantName(tenant); err != nil {
		return nil, err
	}
	if err := cradle.ValidateSerial(serial); err != nil {
		return nil, err
	}
	return &url.URL{Scheme: "urn", Opaque: "cradle:device:" + tenant + ":" + serial}, nil
}

// ParseDeviceURI reads a URI that DeviceURI wrote, byte for byte (lower
// case prefix, no escapes). Anything else is a *cradle.Error with code
// EINVALID. The input is outside data.
func ParseDeviceURI(s string) (tenant, serial string, err error) {
	rest, found := strings.CutPrefix(s, DeviceURIPrefix)
	if !found {
		return "", "", cradle.Errorf(cradle.EINVALID, "invalid device URI %q: must start with %s", clip(s), DeviceURIPrefix)
	}
	tenant, serial, found = strings.Cut(rest, ":")
	if !found {
		return "", "", cradle.Errorf(cradle.EINVALID, "invalid device URI %q: want %s<tenant>:<serial>", clip(s), DeviceURIPrefix)
	}
	if err := cradle.ValidateTenantName(tenant); err != nil {
		return "", "", cradle.Errorf(cradle.EINVALID, "invalid device URI %q: %s", clip(s), cradle.ErrorMessage(err))
	}
	if err := cradle.ValidateSerial(serial); err != nil {
		return "", "", cradle.Errorf(cradle.EINVALID, "invalid device URI %q: %s", clip(s), cradle.ErrorMessage(err))
	}
	return tenant, serial, nil
}

// DeviceFromCertificate returns the tenant and serial named by the one
// device URI SAN of cert (an LDevID). EINVALID when there is none, more
// than one, or it is malformed.
func DeviceFromCertificate(cert *x509.Certificate) (tenant, serial string, err error) {
	n := 0
	for _, u := range cert.URIs {
		s := u.String()
		if !strings.HasPrefix(s, DeviceURIPrefix) {
			continue
		}
		n++
		if tenant, serial, err = ParseDeviceURI(s); err != nil {
			return "", "", err
		}
	}
	switch n {
	case 0:
		return "", "", cradle.Errorf(cradle.EINVALID, "certificate %q names no device: no %s URI", clip(cert.Subject.CommonName), DeviceURIPrefix)
	case 1:
		return tenant, serial, nil
	}
	return "", "", cradle.Errorf(cradle.EINVALID, "certificate %q names %d devices", clip(cert.Subject.CommonName), n)
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}
