package kms_test

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/kms"
	"cradle/internal/testkit"
)

const softhsmModule = testkit.SoftHSMModule

func TestParsePKCS11URI(t *testing.T) {
	tests := []struct {
		name string
		uri  string
		want *kms.PKCS11URI
	}{
		{
			name: "token object module pin-source",
			uri:  "pkcs11:token=cradle;object=root-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/cradle/pin",
			want: &kms.PKCS11URI{Token: "cradle", Object: "root-ca", ModulePath: softhsmModule, PINSource: "/etc/cradle/pin"},
		},
		{
			name: "id as percent-encoded bytes, pin-value",
			uri:  "pkcs11:token=t;id=%01%a0%FF?module-path=/m.so&pin-value=1234",
			want: &kms.PKCS11URI{Token: "t", ID: []byte{0x01, 0xa0, 0xff}, ModulePath: "/m.so", PINValue: "1234"},
		},
		{
			name: "percent-encoded label with a space and a semicolon; type=private",
			uri:  "pkcs11:type=private;token=My%20Token;object=a%3Bb?module-path=/m.so",
			want: &kms.PKCS11URI{Token: "My Token", Object: "a;b", ModulePath: "/m.so"},
		},
		{
			name: "pin-source as a plain path",
			uri:  "PKCS11:token=t;object=o?pin-source=/run/pin&module-path=/m.so",
			want: &kms.PKCS11URI{Token: "t", Object: "o", ModulePath: "/m.so", PINSource: "/run/pin"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := kms.ParsePKCS11URI(tt.uri)
			if err != nil {
				t.Fatalf("ParsePKCS11URI: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ParsePKCS11URI (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParsePKCS11URIErrors(t *testing.T) {
	tests := []struct {
		name string
		uri  string
		want string // a part of the error message
	}{
		{"not pkcs11", "file:/x", `must begin with "pkcs11:"`},
		{"no token", "pkcs11:object=o?module-path=/m.so", "no token attribute"},
		{"no key", "pkcs11:token=t?module-path=/m.so", "names no key"},
		{"no module", "pkcs11:token=t;object=o", "no module-path attribute"},
		{"no module, pin-value hidden", "pkcs11:token=t;object=o?pin-value=secret", "pin-value=***"},
		{"both pins", "pkcs11:token=t;object=o?module-path=/m&pin-value=1&pin-source=file:/p", "both pin-value and pin-source"},
		{"repeated", "pkcs11:token=t;token=u;object=o?module-path=/m", `attribute "token" is given more than once`},
		{"unknown path attribute", "pkcs11:token=t;objekt=o?module-path=/m", `unknown path attribute "objekt"`},
		{"unknown query attribute", "pkcs11:token=t;object=o?module-path=/m&pin=1", `unknown query attribute "pin"`},
		{"slot-id unsupported", "pkcs11:token=t;object=o;slot-id=3?module-path=/m", `"slot-id" is not supported`},
		{"module-name unsupported", "pkcs11:token=t;object=o?module-name=softhsm2", "module-name is not supported"},
		{"type public", "pkcs11:token=t;object=o;type=public?module-path=/m", "type=private"},
		{"stray separator", "pkcs11:token=t;;object=o?module-path=/m", "empty path attribute"},
		{"no value", "pkcs11:token?module-path=/m", `has no "=value"`},
		{"empty value", "pkcs11:token=;object=o?module-path=/m", `attribute "token" is empty`},
		{"bad percent", "pkcs11:token=t;id=%zz?module-path=/m", `attribute "id": bad percent-encoding`},
		{"truncated percent", "pkcs11:token=t;id=%0?module-path=/m", `attribute "id": truncated percent-encoding`},
		{"space", "pkcs11:token=a b;object=o?module-path=/m", `attribute "token": character ' ' must be percent-encoded`},
		{"fragment", "pkcs11:token=t;object=o?module-path=/m#x", "fragment"},
		{"pin-source scheme", "pkcs11:token=t;object=o?module-path=/m&pin-source=env:PIN", "only file:PATH"},
		{"upper-case name", "pkcs11:Token=t;object=o?module-path=/m", "is not valid"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := kms.ParsePKCS11URI(tt.uri)
			if err == nil {
				t.Fatalf("ParsePKCS11URI(%q) = %+v, want an error containing %q", tt.uri, u, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the PIN", err)
			}
		})
	}
}

func TestPKCS11URIString(t *testing.T) {
	u := &kms.PKCS11URI{Token: "a b;c", Object: "k=1", ID: []byte{0, 255}, ModulePath: "/m.so", PINValue: "1234"}
	s := u.String()
	if strings.Contains(s, "1234") {
		t.Errorf("String() = %q shows the PIN", s)
	}
	got, err := kms.ParsePKCS11URI(s)
	if err != nil {
		t.Fatalf("ParsePKCS11URI(%q): %v", s, err)
	}
	want := *u
	want.PINValue = "***"
	if diff := cmp.Diff(&want, got); diff != "" {
		t.Errorf("round trip of %q (-want +got):\n%s", s, diff)
	}
}

// FuzzParsePKCS11URI checks that the parser never panics and that what it
// accepts prints to a URI that parses back to the same value.
func FuzzParsePKCS11URI(f *testing.F) {
	for _, s := range []string{
		"pkcs11:token=cradle;object=root-ca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/cradle/pin",
		"pkcs11:token=t;id=%01%a0%FF?module-path=/m.so&pin-value=1234",
		"pkcs11:type=private;token=My%20Token;object=a%3Bb?module-path=/m.so",
		"pkcs11:token=t;;object=o?module-path=/m",
		"pkcs11:token=t;id=%0",
		"pkcs11:",
		"pkcs11:?",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := kms.ParsePKCS11URI(s)
		if err != nil {
			return
		}
		if u.Token == "" || (u.Object == "" && len(u.ID) == 0) || u.ModulePath == "" {
			t.Fatalf("accepted %q without token, key or module: %+v", s, u)
		}
		back, err := kms.ParsePKCS11URI(u.String())
		if err != nil {
			t.Fatalf("String() of %q = %q does not parse: %v", s, u.String(), err)
		}
		want := *u
		if want.PINValue != "" {
			want.PINValue = "***"
		}
		if diff := cmp.Diff(&want, back); diff != "" {
			t.Fatalf("round trip of %q through %q (-want +got):\n%s", s, u.String(), diff)
		}
	})
}
