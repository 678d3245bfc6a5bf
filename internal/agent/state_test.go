package agent_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/agent"
)

// selfSigned returns a PEM certificate for state fixtures.
func selfSigned(t testing.TB) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "SN-1", SerialNumber: "SN-1"},
		NotBefore: time.Unix(1e9, 0), NotAfter: time.Unix(2e9, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func enrolledState(t testing.TB) *agent.State {
	t.Helper()
	at := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	return &agent.State{
		Version: agent.StateVersion, Status: agent.StatusEnrolled,
		Current: &agent.Credential{KeyName: "ldevid-3", Chain: selfSigned(t), NotAfter: at.Add(90 * 24 * time.Hour)},
		KeySeq:  3, RenewAt: at.Add(60 * 24 * time.Hour), NextAttempt: at.Add(60 * 24 * time.Hour),
		Failures: 0, Starts: []time.Time{at},
	}
}

func TestStateSaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	got, err := agent.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(agent.NewState(), got); diff != "" {
		t.Fatalf("state of a new unit (-want +got):\n%s", diff)
	}
	want := enrolledState(t)
	if err := agent.SaveState(dir, want); err != nil {
		t.Fatal(err)
	}
	// A temporary file left by a crash mid-save is cleaned up on load.
	stale := filepath.Join(dir, "."+agent.StateFile+".tmp-123")
	if err := os.WriteFile(stale, []byte(`{"version":1,"sta`), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err = agent.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("reloaded state (-want +got):\n%s", diff)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the stale temporary file is still there: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("state directory holds %d entries, want only %s", len(entries), agent.StateFile)
	}
	var raw map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, agent.StateFile))
	if err := json.Unmarshal(b, &raw); err != nil || raw["version"] != float64(agent.StateVersion) {
		t.Errorf("state file has version %v (%v), want %d", raw["version"], err, agent.StateVersion)
	}
}

func TestParseStateRefuses(t *testing.T) {
	cert := selfSigned(t)
	for _, tt := range []struct {
		name, json, want string
	}{
		{"not JSON", `{"version":`, "does not parse"},
		{"no version", `{"status":"unenrolled"}`, "no version"},
		{"newer agent", `{"version":2,"status":"unenrolled"}`, "newer agent"},
		{"unknown status", `{"version":1,"status":"happy"}`, "unknown status"},
		{"enrolled without LDevID", `{"version":1,"status":"enrolled"}`, "no current LDevID"},
		{"unenrolled with LDevID", `{"version":1,"status":"unenrolled","current":{"key_name":"ldevid-1","chain":` + jsonString(cert) + `}}`, "holds an LDevID"},
		{"enrolled with previous", `{"version":1,"status":"enrolled","current":{"key_name":"ldevid-2","chain":` + jsonString(cert) + `},"previous":{"key_name":"ldevid-1","chain":` + jsonString(cert) + `}}`, "previous"},
		{"bad key name", `{"version":1,"status":"enrolled","current":{"key_name":"idevid","chain":` + jsonString(cert) + `}}`, "not ldevid-<n>"},
		{"bad chain", `{"version":1,"status":"enrolled","current":{"key_name":"ldevid-1","chain":"nope"}}`, "not PEM"},
		{"negative failures", `{"version":1,"status":"unenrolled","failures":-1}`, "negative"},
		{"wipe without command", `{"version":1,"status":"unenrolled","wipe":{"phase":"erase"}}`, "no command ID"},
		{"wipe in an unknown phase", `{"version":1,"status":"unenrolled","wipe":{"command_id":"c","phase":"later"}}`, "unknown phase"},
		{"wipe of a nameless object", `{"version":1,"status":"unenrolled","wipe":{"command_id":"c","phase":"erase","erase":[{"store":"state","kind":"config"}]}}`, "without store or name"},
		{"oversize", `{"version":1,"last_error":"` + strings.Repeat("x", 1<<20) + `"}`, "more than"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := agent.ParseState([]byte(tt.json))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseState: %v; want an error mentioning %q", err, tt.want)
			}
		})
	}
}

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// FuzzParseState: any input either is refused or round-trips through
// SaveState's encoding to an equal state.
func FuzzParseState(f *testing.F) {
	good, _ := json.Marshal(enrolledState(f))
	f.Add(good)
	f.Add([]byte(`{"version":1,"status":"unenrolled"}`))
	f.Add([]byte(`{"version":1,"status":"confirming","current":{"key_name":"ldevid-1","chain":""}}`))
	f.Add([]byte(`{"version":99}`))
	f.Add([]byte(`{"version":1,"status":"unenrolled","wipe":{"command_id":"cmd_1","sequence":3,"phase":"erase","erase":[{"store":"file","kind":"key","name":"idevid"},{"store":"state","kind":"secret","name":"state.json"}],"delivered":true,"started_at":"2026-05-01T12:00:00Z","tombstone":{"payload":"e30=","signature":"AQ==","certificate":"Ag=="}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := agent.ParseState(b)
		if err != nil {
			return
		}
		dir := t.TempDir()
		if err := agent.SaveState(dir, s); err != nil {
			t.Fatal(err)
		}
		again, err := agent.LoadState(dir)
		if err != nil {
			t.Fatalf("a state that parsed does not reload: %v", err)
		}
		if diff := cmp.Diff(s, again); diff != "" {
			t.Fatalf("round trip (-first +second):\n%s", diff)
		}
	})
}
