package cradle_test

import (
	"strings"
	"testing"

	"cradle"
)

func TestClaimCodeRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for range 200 {
		code, err := cradle.NewClaimCode()
		if err != nil {
			t.Fatal(err)
		}
		if len(code) != 13 || code[4] != '-' || code[9] != '-' {
			t.Fatalf("NewClaimCode() = %q, want XXXX-XXXX-XXX", code)
		}
		if seen[code] {
			t.Fatalf("NewClaimCode() repeated %q", code)
		}
		seen[code] = true
		canon, err := cradle.ParseClaimCode(code)
		if err != nil {
			t.Fatalf("ParseClaimCode(%q): %v", code, err)
		}
		if want := strings.ReplaceAll(code, "-", ""); canon != want {
			t.Fatalf("ParseClaimCode(%q) = %q, want %q", code, canon, want)
		}
		// As a person may type it: lower case, spaces, no hyphens.
		typed := strings.ToLower(code[:4]) + " " + code[5:9] + code[10:]
		if got, err := cradle.ParseClaimCode(typed); err != nil || got != canon {
			t.Fatalf("ParseClaimCode(%q) = %q, %v; want %q", typed, got, err, canon)
		}
		// Every single mistyped data symbol is caught by the check symbol.
		for i := 0; i < len(canon)-1; i++ {
			for _, c := range "0123456789ABCDEFGHJKMNPQRSTVWXYZ" {
				if byte(c) == canon[i] {
					continue
				}
				bad := canon[:i] + string(c) + canon[i+1:]
				if _, err := cradle.ParseClaimCode(bad); err == nil {
					t.Fatalf("ParseClaimCode(%q) (one symbol of %q changed) succeeded", bad, canon)
				}
			}
		}
	}
}

func TestParseClaimCodeRefuses(t *testing.T) {
	good, _ := cradle.NewClaimCode()
	canon, _ := cradle.ParseClaimCode(good)
	for _, tc := range []struct{ name, in, want string }{
		{"empty", "", "has 0 symbols"},
		{"short", "ABCD-EFGH", "has 8 symbols"},
		{"long", good + "7", "has 12 symbols"},
		{"letter U", "UUUU-UUUU-UUU", "symbol 'U' is not used"},
		{"punctuation", "AB*D-EFGH-JKM", "symbol '*' is not used"},
		{"swapped neighbours", canon[1:2] + canon[:1] + canon[2:], "check symbol does not match"},
		{"huge", strings.Repeat("A", 1000), "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.name == "swapped neighbours" && canon[0] == canon[1] {
				t.Skip("the code's first two symbols are equal")
			}
			_, err := cradle.ParseClaimCode(tc.in)
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tc.want) {
				t.Errorf("ParseClaimCode(%q) = %v, want EINVALID containing %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestClaimCodeHash(t *testing.T) {
	code, _ := cradle.NewClaimCode()
	h := cradle.ClaimCodeHash("SN-1", code)
	if len(h) != 64 {
		t.Fatalf("ClaimCodeHash = %q, want 64 hex digits", h)
	}
	if cradle.ClaimCodeHash("SN-1", strings.ToLower(strings.ReplaceAll(code, "-", ""))) != h {
		t.Error("the hash depends on how the code is written")
	}
	if cradle.ClaimCodeHash("SN-2", code) == h {
		t.Error("two serials with the same code hash alike")
	}
	if cradle.ClaimCodeHash("SN-1", "nonsense") != "" {
		t.Error("an invalid code has a hash")
	}
}

func TestDeviceClaimValidate(t *testing.T) {
	code, _ := cradle.NewClaimCode()
	for _, tc := range []struct {
		name string
		c    cradle.DeviceClaim
		want string
	}{
		{"no code", cradle.DeviceClaim{Site: "s"}, "code is required"},
		{"no binding", cradle.DeviceClaim{Code: code}, "give a site, an owner or both"},
		{"bad site", cradle.DeviceClaim{Code: code, Site: " s"}, "invalid site"},
		{"bad owner", cradle.DeviceClaim{Code: code, Owner: "a\x00b"}, "invalid owner"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			if cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), tc.want) {
				t.Errorf("Validate() = %v, want EINVALID containing %q", err, tc.want)
			}
		})
	}
	c := cradle.DeviceClaim{Code: strings.ToLower(code), Site: "plant-7"}
	if err := c.Validate(); err != nil || c.Code != strings.ReplaceAll(code, "-", "") {
		t.Errorf("Validate() = %v, code %q", err, c.Code)
	}
}

func FuzzParseClaimCode(f *testing.F) {
	for _, s := range []string{"7K3M-9QXA-2PZ", "0000-0000-000", "zzzz zzzz zz", "oil1-0000-00*", "", "----", "ÄBCD-EFGH-JKM"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		canon, err := cradle.ParseClaimCode(s)
		if err != nil {
			if cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("ParseClaimCode(%q): %v is not EINVALID", s, err)
			}
			return
		}
		// A valid code is canonical: parsing it again gives itself, and
		// its formatted form parses too.
		if again, err := cradle.ParseClaimCode(canon); err != nil || again != canon {
			t.Fatalf("ParseClaimCode(%q) = %q, then %q, %v", s, canon, again, err)
		}
		if len(canon) != cradle.ClaimCodeSymbols+1 || cradle.ClaimCodeHash("SN", s) == "" {
			t.Fatalf("ParseClaimCode(%q) = %q", s, canon)
		}
	})
}
