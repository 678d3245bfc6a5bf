package pki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"

	"cradle/internal/pki"
)

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

func sanOf(c *x509.Certificate) []byte {
	for _, e := range c.Extensions {
		if e.Id.Equal(oidSAN) {
			return e.Value
		}
	}
	return nil
}

// FuzzParseHardwareModuleName feeds arbitrary subjectAltName values (as a
// device's certificate may carry) to ParseHardwareModuleName.
func FuzzParseHardwareModuleName(f *testing.F) {
	p := sharedPKI(f, pki.ProfileProduction)
	idev := sanOf(p.issueIDevID(f, "SN-FUZZ", t0))
	f.Add(idev)
	f.Add(idev[:len(idev)-3])
	f.Add(sanOf(p.issueLDevID(f, "SN-FUZZ", t0)))
	f.Add(sanOf(p.h.Server))
	f.Add([]byte{})
	f.Add([]byte{0x30, 0x00})
	f.Add([]byte{0x30, 0x02, 0xa0, 0x00})
	f.Add(append(append([]byte{}, idev...), idev...))
	f.Fuzz(func(t *testing.T, san []byte) {
		c := &x509.Certificate{Extensions: []pkix.Extension{{Id: oidSAN, Value: san}}}
		hwType, serial, ok, err := pki.ParseHardwareModuleName(c)
		if err != nil && ok {
			t.Fatalf("ok and error %v", err)
		}
		if ok && len(hwType) == 0 {
			t.Fatalf("ok with empty hwType (serial %x)", serial)
		}
		if !ok && (hwType != nil || serial != nil) {
			t.Fatalf("not ok but returned %v %x", hwType, serial)
		}
	})
}

// FuzzParseDeviceURI checks that ParseDeviceURI accepts only what
// DeviceURI writes.
func FuzzParseDeviceURI(f *testing.F) {
	for _, s := range []string{
		"urn:cradle:device:acme:SN-1", "urn:cradle:device:acme:", "urn:cradle:device::x",
		"urn:cradle:device:a:b:c", "urn:cradle:device:a-b:SN_1.2", "urn:cradle:device:acme:SN%2D1",
		"urn:cradle:device:acme:Ω", "URN:CRADLE:DEVICE:acme:1", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tenant, serial, err := pki.ParseDeviceURI(s)
		if err != nil {
			return
		}
		u, err := pki.DeviceURI(tenant, serial)
		if err != nil {
			t.Fatalf("ParseDeviceURI(%q) = %q, %q but DeviceURI refuses them: %v", s, tenant, serial, err)
		}
		if u.String() != s {
			t.Fatalf("ParseDeviceURI(%q) accepted a non-canonical form of %q", s, u)
		}
	})
}
