package factory

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"cradle"
)

// stationIdentity is a throwaway station key and certificate.
func stationIdentity(t testing.TB) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "line-1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

func failedRecord(id, serial string) *cradle.TraceRecord {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	return &cradle.TraceRecord{ID: id, Batch: "b1", Station: "line-1", Operator: "ada", Profile: cradle.ProfileTest,
		Serial: serial, MAC: "02:00:00:00:00:01", Model: "m", HardwareRevision: "A", Status: cradle.UnitFailed,
		FailedStep: "fuses", Reason: "fuse write failed", StartedAt: now, FinishedAt: now}
}

// TestJournal: entries survive reopening; a torn last line is cut off; a
// damaged line makes the journal corrupt (read-only); an edited record
// with a recomputed checksum is refused by its signature.
func TestJournal(t *testing.T) {
	key, cert := stationIdentity(t)
	verify := func(s cradle.SignedTrace) error { return s.Verify(cert) }
	path := filepath.Join(t.TempDir(), "journal.log")
	j, err := OpenJournal(path, verify)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.AddBatch(&cradle.Batch{ID: "b1", Model: "m", HardwareRevision: "A", Profile: cradle.ProfileTest}); err != nil {
		t.Fatal(err)
	}
	units := []cradle.UnitAllocation{{Serial: "S1", MAC: "02:00:00:00:00:01", Batch: "b1"}, {Serial: "S2", MAC: "02:00:00:00:00:02", Batch: "b1"}}
	if err := j.Reserve(units); err != nil {
		t.Fatal(err)
	}
	u, ok, durable, err := j.StartAsync("b1", "dev/1", "ada", "tr-1")
	if err == nil && ok {
		err = durable()
	}
	if err != nil || !ok || u.Serial != "S1" {
		t.Fatalf("Start = %v %v %v", u, ok, err)
	}
	signed, err := cradle.SignTrace(failedRecord("tr-1", "S1"), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.AddRecord(signed); err != nil {
		t.Fatal(err)
	}
	if err := j.AddRecord(signed); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Fatalf("second AddRecord: %v, want ECONFLICT", err)
	}
	if _, ok, durable, _ := j.StartAsync("b1", "dev/2", "ada", "tr-2"); !ok || durable() != nil {
		t.Fatal("no second unit")
	}
	j.Close()

	// A crash mid-append: half a line at the end.
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(strings.Repeat("ab", 40) + ` {"t":"synced","ids":["tr`)
	f.Close()
	j, err = OpenJournal(path, verify)
	if err != nil {
		t.Fatal(err)
	}
	if j.Recovered() == 0 || len(j.Corrupt()) != 0 {
		t.Fatalf("Recovered = %d, Corrupt = %v; want a cut tail and no corruption", j.Recovered(), j.Corrupt())
	}
	if p := j.Pending(); len(p) != 1 || p[0].Record.ID != "tr-1" {
		t.Fatalf("Pending = %v", p)
	}
	if in := j.Interrupted(); len(in) != 1 || in[0].Unit.Serial != "S2" || in[0].RecordID != "tr-2" {
		t.Fatalf("Interrupted = %+v, want S2", in)
	}
	if err := j.MarkSynced("tr-1"); err != nil {
		t.Fatal(err)
	}
	if p := j.Pending(); len(p) != 0 {
		t.Fatalf("Pending after MarkSynced = %v", p)
	}
	j.Close()

	// Tampering: change the record's reason and recompute the line's
	// checksum, as someone editing the file would.
	data, _ := os.ReadFile(path)
	lines := bytes.Split(bytes.TrimSuffix(data, []byte{'\n'}), []byte{'\n'})
	var out [][]byte
	for _, l := range lines {
		if bytes.Contains(l, []byte(`"t":"record"`)) {
			_, body, _ := bytes.Cut(l, []byte{' '})
			e, err := parseLine(l)
			if err != nil {
				t.Fatal(err)
			}
			e.Signed.Payload = bytes.Replace(e.Signed.Payload, []byte("fuse write failed"), []byte("all good, honest"), 1)
			body = mustJSON(t, e)
			sum := sha256.Sum256(body)
			l = append([]byte(hex.EncodeToString(sum[:])+" "), body...)
		}
		out = append(out, l)
	}
	if err := os.WriteFile(path, append(bytes.Join(out, []byte{'\n'}), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err = OpenJournal(path, verify)
	if err != nil {
		t.Fatal(err)
	}
	recs := j.Records()
	if len(recs) != 1 || recs[0].Err == nil || !strings.Contains(recs[0].Err.Error(), "signature does not verify") {
		t.Fatalf("tampered record: %+v, want refused by its signature", recs)
	}
	j.Close()

	// Damage: flip a byte of the first line.
	data, _ = os.ReadFile(path)
	data[70] ^= 0x20
	os.WriteFile(path, data, 0o600)
	j, err = OpenJournal(path, verify)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if bad := j.Corrupt(); len(bad) != 1 || !strings.Contains(bad[0].Error(), "line 1: checksum mismatch") {
		t.Fatalf("Corrupt = %v, want line 1 checksum mismatch", bad)
	}
	if err := j.Reserve(units); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("Reserve on a corrupt journal: %v", err)
	}
}

// FuzzJournalLine: any line is parsed or refused, never a panic, and what
// parses has a checksum that matches.
func FuzzJournalLine(f *testing.F) {
	body := []byte(`{"t":"synced","at":"2026-11-24T12:00:00Z","ids":["tr-1"]}`)
	sum := sha256.Sum256(body)
	f.Add(append([]byte(hex.EncodeToString(sum[:])+" "), body...))
	f.Add([]byte("00 {}"))
	f.Add([]byte(strings.Repeat("0", 64) + ` {"t":"record"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := parseLine(line)
		if err == nil && e == nil {
			t.Fatal("nil entry without error")
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
