package kms

import (
	"fmt"
	"slices"
	"strings"
)

// PKCS11URI is a parsed RFC 7512 "pkcs11:" URI naming one private key in
// one token:
//
//	pkcs11:token=LABEL;object=LABEL;id=%01%02?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/path
//
// Path attributes (separated by ";"): token (the token label, required),
// object (the key's CKA_LABEL) and id (its CKA_ID, percent-encoded bytes),
// at least one of the two; type, when present, must be "private". Query
// attributes (separated by "&"): module-path (required), and at most one of
// pin-value (the PIN itself) and pin-source (file:PATH, or a path, of a file
// holding the PIN). Values are percent-decoded. Any other attribute, and any
// repeated one, is refused rather than ignored, so a URI never selects a key
// other than the one its author meant.
type PKCS11URI struct {
	Token      string // token label
	Object     string // key label (CKA_LABEL); "" if not given
	ID         []byte // key id (CKA_ID); nil if not given
	ModulePath string // path of the PKCS#11 module (shared library)
	PINValue   string // the PIN, from pin-value
	PINSource  string // path of a file holding the PIN, from pin-source (without "file:")
}

// maxURILen bounds the URI; a key URI is a line of configuration.
const maxURILen = 4096

// ParsePKCS11URI parses and validates s. Errors begin "kms: pkcs11 URI"
// and name the attribute that is missing, unknown, repeated or malformed.
func ParsePKCS11URI(s string) (*PKCS11URI, error) {
	if len(s) > maxURILen {
		return nil, fmt.Errorf("kms: pkcs11 URI is %d bytes long, more than %d", len(s), maxURILen)
	}
	if !isPKCS11(s) {
		return nil, fmt.Errorf("kms: pkcs11 URI %q must begin with \"pkcs11:\"", s)
	}
	rest := s[len("pkcs11:"):]
	path, query, _ := strings.Cut(rest, "?")
	if i := strings.IndexByte(query, '#'); i >= 0 {
		return nil, fmt.Errorf("kms: pkcs11 URI must not have a fragment (%q)", query[i:])
	}
	u := &PKCS11URI{}
	seen := map[string]bool{}
	if path != "" {
		for attr := range strings.SplitSeq(path, ";") {
			name, value, err := splitAttr(attr, "path", seen, pathChar)
			if err != nil {
				return nil, err
			}
			switch name {
			case "token":
				u.Token = value
			case "object":
				u.Object = value
			case "id":
				u.ID = []byte(value)
			case "type":
				if value != "private" {
					return nil, fmt.Errorf("kms: pkcs11 URI attribute type=%q: a signing key is type=private (or leave type out)", value)
				}
			case "manufacturer", "model", "serial", "library-manufacturer", "library-description",
				"library-version", "slot-description", "slot-manufacturer", "slot-id":
				return nil, fmt.Errorf("kms: pkcs11 URI attribute %q is not supported: select the token by its label (token=LABEL)", name)
			default:
				return nil, fmt.Errorf("kms: pkcs11 URI has unknown path attribute %q (known: token, object, id, type)", name)
			}
		}
	}
	if query != "" {
		for attr := range strings.SplitSeq(query, "&") {
			name, value, err := splitAttr(attr, "query", seen, queryChar)
			if err != nil {
				return nil, err
			}
			switch name {
			case "module-path":
				u.ModulePath = value
			case "pin-value":
				u.PINValue = value
			case "pin-source":
				p := value
				if rest, ok := strings.CutPrefix(value, "file:"); ok {
					p = rest
				} else if strings.Contains(value, ":") {
					return nil, fmt.Errorf("kms: pkcs11 URI attribute pin-source=%q: only file:PATH (or a path) is supported", value)
				}
				if p == "" || strings.HasPrefix(p, "//") {
					return nil, fmt.Errorf("kms: pkcs11 URI attribute pin-source=%q: write file:/absolute/path", value)
				}
				u.PINSource = p
			case "module-name":
				return nil, fmt.Errorf("kms: pkcs11 URI attribute module-name is not supported: give module-path=/path/to/module.so")
			default:
				return nil, fmt.Errorf("kms: pkcs11 URI has unknown query attribute %q (known: module-path, pin-value, pin-source)", name)
			}
		}
	}
	switch {
	case u.Token == "":
		return nil, fmt.Errorf("kms: pkcs11 URI %q has no token attribute: add token=LABEL (the token's label)", redact(s))
	case u.Object == "" && u.ID == nil:
		return nil, fmt.Errorf("kms: pkcs11 URI %q names no key: add object=LABEL or id=%%XX…", redact(s))
	case u.ModulePath == "":
		return nil, fmt.Errorf("kms: pkcs11 URI %q has no module-path attribute: add ?module-path=/usr/lib/softhsm/libsofthsm2.so (or your HSM's module)", redact(s))
	case u.PINValue != "" && u.PINSource != "":
		return nil, fmt.Errorf("kms: pkcs11 URI has both pin-value and pin-source: keep one")
	}
	return u, nil
}

// splitAttr splits one "name=value" attribute and percent-decodes its value.
func splitAttr(attr, part string, seen map[string]bool, allowed func(byte) bool) (string, string, error) {
	if attr == "" {
		return "", "", fmt.Errorf("kms: pkcs11 URI has an empty %s attribute (a stray separator)", part)
	}
	name, raw, ok := strings.Cut(attr, "=")
	if !ok {
		return "", "", fmt.Errorf("kms: pkcs11 URI %s attribute %q has no \"=value\"", part, clip(attr))
	}
	if name == "" {
		return "", "", fmt.Errorf("kms: pkcs11 URI has a %s attribute with no name (%q)", part, clip(attr))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return "", "", fmt.Errorf("kms: pkcs11 URI attribute name %q is not valid (lower-case letters, digits and \"-\")", clip(name))
		}
	}
	if seen[name] {
		return "", "", fmt.Errorf("kms: pkcs11 URI attribute %q is given more than once", name)
	}
	seen[name] = true
	value, err := percentDecode(raw, allowed)
	if err != nil {
		return "", "", fmt.Errorf("kms: pkcs11 URI attribute %q: %v", name, err)
	}
	if value == "" {
		return "", "", fmt.Errorf("kms: pkcs11 URI attribute %q is empty", name)
	}
	return name, value, nil
}

func percentDecode(s string, allowed func(byte) bool) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '%':
			if i+2 >= len(s) {
				return "", fmt.Errorf("truncated percent-encoding %q", s[i:])
			}
			h, l := unhex(s[i+1]), unhex(s[i+2])
			if h < 0 || l < 0 {
				return "", fmt.Errorf("bad percent-encoding %q", s[i:i+3])
			}
			b.WriteByte(byte(h<<4 | l))
			i += 2
		case allowed(c):
			b.WriteByte(c)
		default:
			return "", fmt.Errorf("character %q must be percent-encoded", c)
		}
	}
	return b.String(), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

func unreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// pathChar is RFC 7512's pk11-pchar less pct-encoded: unreserved and
// ":[]@!$'()*+,=&".
func pathChar(c byte) bool {
	return unreserved(c) || strings.IndexByte(":[]@!$'()*+,=&", c) >= 0
}

// queryChar is RFC 7512's pk11-qchar less pct-encoded: unreserved and
// ":[]@!$'()*+,=/?|".
func queryChar(c byte) bool {
	return unreserved(c) || strings.IndexByte(":[]@!$'()*+,=/?|", c) >= 0
}

// String returns the URI in RFC 7512 form, with pin-value shown as "***"
// so the result can be logged.
func (u *PKCS11URI) String() string {
	return u.format(true)
}

func (u *PKCS11URI) format(hidePIN bool) string {
	var b strings.Builder
	b.WriteString("pkcs11:token=")
	b.WriteString(percentEncode(u.Token, pathChar))
	if u.Object != "" {
		b.WriteString(";object=")
		b.WriteString(percentEncode(u.Object, pathChar))
	}
	if u.ID != nil {
		b.WriteString(";id=")
		for _, c := range u.ID {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	b.WriteString("?module-path=")
	b.WriteString(percentEncode(u.ModulePath, queryChar))
	if u.PINValue != "" {
		b.WriteString("&pin-value=")
		if hidePIN {
			b.WriteString("***")
		} else {
			b.WriteString(percentEncode(u.PINValue, queryChar))
		}
	}
	if u.PINSource != "" {
		b.WriteString("&pin-source=file:")
		b.WriteString(percentEncode(u.PINSource, queryChar))
	}
	return b.String()
}

// percentEncode encodes every byte that allowed rejects, and the
// separators "&", ";", "=" and "%" always, so the result parses back.
func percentEncode(s string, allowed func(byte) bool) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if allowed(c) && !slices.Contains([]byte("&;=?%"), c) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// redact hides a pin-value in a URI quoted in an error message.
func redact(s string) string {
	i := strings.Index(s, "pin-value=")
	if i < 0 {
		return s
	}
	j := strings.IndexByte(s[i:], '&')
	if j < 0 {
		return s[:i] + "pin-value=***"
	}
	return s[:i] + "pin-value=***" + s[i+j:]
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
