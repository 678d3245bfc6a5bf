package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"cradle"
)

// BenchmarkAuthenticateDeviceToken measures the check every Mender and
// hawkBit request starts with, on SQLite: 10,000 deployed devices with a
// target token each (and a gateway token), tokens checked in turn, so the
// reads are spread over the table like a fleet's polls.
//
//	go test -run '^$' -bench BenchmarkAuthenticateDeviceToken ./internal/sqlstore/
func BenchmarkAuthenticateDeviceToken(b *testing.B) {
	const devices = 10000
	db, _, sys := benchStore(b)
	var rows strings.Builder
	for i := range devices {
		fmt.Fprintf(&rows, `{"serial":"bench-%05d","model":"gw-1","state":"provisioned"}`+"\n", i)
	}
	if rep, err := NewDeviceService(db).ImportDevices(sys, cradle.ImportJSONL, strings.NewReader(rows.String())); err != nil || !rep.Committed {
		b.Fatalf("import: %v %+v", err, rep)
	}
	ps := NewProtocolService(db)
	secrets := make([]string, devices)
	for i := range devices {
		serial := fmt.Sprintf("bench-%05d", i)
		tok, err := ps.CreateDeviceToken(sys, cradle.DeviceTokenCreate{Kind: cradle.TokenHawkbitTarget, Serial: serial})
		if err != nil {
			b.Fatal(err)
		}
		secrets[i] = tok.Secret
	}
	if _, err := ps.CreateDeviceToken(sys, cradle.DeviceTokenCreate{Kind: cradle.TokenGateway}); err != nil {
		b.Fatal(err)
	}
	ctx := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(0, "bench"))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		a, err := ps.AuthenticateDeviceToken(ctx, secrets[i%devices])
		if err != nil {
			b.Fatal(err)
		}
		if a.Device == nil || a.Device.State != cradle.StateProvisioned {
			b.Fatalf("auth: %+v", a)
		}
	}
}

// FuzzParseDeviceToken checks that the token parser accepts exactly the
// strings the server issues: "dtk_", 16 lower-case hex digits, '.', and 43
// strict base64url characters; and that it never panics.
func FuzzParseDeviceToken(f *testing.F) {
	for range 3 {
		_, tok, err := newDeviceToken()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tok)
	}
	f.Add("")
	f.Add("dtk_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB")
	f.Add("dtk_0123456789ABCDEF.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("cradle_0123456789abcdef_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("dtk_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA+/")
	f.Fuzz(func(t *testing.T, s string) {
		id, ok := parseDeviceToken(s)
		if !ok {
			if id != "" {
				t.Fatalf("refused %q but returned id %q", s, id)
			}
			return
		}
		if len(s) != deviceTokenLen || id != s[:deviceTokenIDLen] || !strings.HasPrefix(id, deviceTokenIDPrefix) || !isHex(id[4:]) || s[deviceTokenIDLen] != '.' {
			t.Fatalf("accepted %q (id %q)", s, id)
		}
		if strings.ContainsAny(s[deviceTokenIDLen+1:], "+/=.") {
			t.Fatalf("accepted non-base64url secret in %q", s)
		}
	})
}

func TestParseDeviceToken(t *testing.T) {
	_, tok, err := newDeviceToken()
	if err != nil {
		t.Fatal(err)
	}
	if id, ok := parseDeviceToken(tok); !ok || id != tok[:deviceTokenIDLen] {
		t.Fatalf("an issued token %q does not parse", tok)
	}
	for name, s := range map[string]string{
		"empty":        "",
		"short":        tok[:len(tok)-1],
		"long":         tok + "A",
		"upper hex":    "dtk_0123456789ABCDEF" + tok[deviceTokenIDLen:],
		"no dot":       strings.Replace(tok, ".", "_", 1),
		"other prefix": "tok_" + tok[4:],
		"bad char":     tok[:len(tok)-1] + "=",
		"loose bits":   "dtk_0123456789abcdef.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB",
	} {
		if _, ok := parseDeviceToken(s); ok {
			t.Errorf("%s: %q accepted", name, s)
		}
	}
}
