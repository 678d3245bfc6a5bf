package spool_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"cradle/internal/agent/spool"
)

func open(t *testing.T, dir string, opts spool.Options) *spool.Spool {
	t.Helper()
	s, err := spool.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// drain takes everything waiting, acknowledging it, and returns the data.
func drain(t *testing.T, s *spool.Spool) []string {
	t.Helper()
	var got []string
	for {
		recs, err := s.Peek(100)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return got
		}
		var ids []uint64
		for _, r := range recs {
			got = append(got, string(r.Data))
			ids = append(ids, r.ID)
		}
		if err := s.Ack(ids...); err != nil {
			t.Fatal(err)
		}
	}
}

func appendN(t *testing.T, s *spool.Spool, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		if err := s.Append(fmt.Appendf(nil, "record-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
}

func names(from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("record-%03d", i))
	}
	return out
}

func TestFIFOAcrossReopen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, spool.Options{})
	appendN(t, s, 0, 10)
	recs, _ := s.Peek(30) // three 10-byte records
	if len(recs) != 3 || string(recs[0].Data) != "record-000" {
		t.Fatalf("Peek(30) = %d records, first %q", len(recs), recs[0].Data)
	}
	if err := s.Ack(recs[0].ID, recs[1].ID); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The unacknowledged third is sent again after a restart.
	s = open(t, dir, spool.Options{})
	if diff := cmp.Diff(names(2, 10), drain(t, s)); diff != "" {
		t.Errorf("after reopen (-want +got):\n%s", diff)
	}
	if st := s.Stats(); st.Records != 0 || st.Bytes != 0 {
		t.Errorf("stats after draining: %+v", st)
	}
	if fi, _ := os.Stat(filepath.Join(dir, spool.FileName)); fi.Size() != 0 {
		t.Errorf("an empty spool's file has %d bytes", fi.Size())
	}
}

func TestBoundsDropOldest(t *testing.T) {
	for _, tc := range []struct {
		name    string
		opts    spool.Options
		kept    []string
		dropped int64
	}{
		{"records", spool.Options{MaxRecords: 4}, names(6, 10), 6},
		{"bytes", spool.Options{MaxBytes: 35}, names(7, 10), 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, t.TempDir(), tc.opts)
			appendN(t, s, 0, 10)
			st := s.Stats()
			if st.Dropped != tc.dropped {
				t.Errorf("dropped %d, want %d", st.Dropped, tc.dropped)
			}
			if diff := cmp.Diff(tc.kept, drain(t, s)); diff != "" {
				t.Errorf("kept (-want +got):\n%s", diff)
			}
		})
	}
	s := open(t, t.TempDir(), spool.Options{MaxBytes: 5})
	if err := s.Append([]byte("too large")); err == nil {
		t.Error("a record larger than the spool was taken")
	}
	if err := s.Append(nil); err == nil {
		t.Error("an empty record was taken")
	}
}

func TestLoweredBoundsAtOpen(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, spool.Options{})
	appendN(t, s, 0, 5)
	s.Close()
	s = open(t, dir, spool.Options{MaxRecords: 2})
	if st := s.Stats(); st.Dropped != 3 || st.Records != 2 {
		t.Errorf("stats: %+v", st)
	}
}

func TestTornTailIsCut(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, spool.Options{})
	appendN(t, s, 0, 3)
	s.Close()
	path := filepath.Join(dir, spool.FileName)
	whole, _ := os.ReadFile(path)
	// Every cut of a fourth record's bytes is a torn append.
	rec4, _ := os.ReadFile(filepath.Join(s2dir(t, "record-003"), spool.FileName))
	for cut := 1; cut < len(rec4); cut++ {
		os.WriteFile(path, append(bytes.Clone(whole), rec4[:cut]...), 0o600)
		s := open(t, dir, spool.Options{})
		st := s.Stats()
		if st.Records != 3 || st.CutBytes != int64(cut) || st.Damaged != 0 {
			t.Fatalf("cut at %d: %+v", cut, st)
		}
		s.Close()
		if fi, _ := os.Stat(path); fi.Size() != int64(len(whole)) {
			t.Fatalf("cut at %d: file is %d bytes, want %d", cut, fi.Size(), len(whole))
		}
	}
	s = open(t, dir, spool.Options{})
	if diff := cmp.Diff(names(0, 3), drain(t, s)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// s2dir makes a spool holding one record and returns its directory.
func s2dir(t *testing.T, data string) string {
	t.Helper()
	dir := t.TempDir()
	s := open(t, dir, spool.Options{})
	if err := s.Append([]byte(data)); err != nil {
		t.Fatal(err)
	}
	s.Close()
	return dir
}

func TestDamagedRecordIsSkipped(t *testing.T) {
	for _, tc := range []struct {
		name string
		at   int // offset in the second record to flip
	}{
		{"data", 14},
		{"checksum", 9},
		{"length", 6},
		{"marker", 1},
		{"state", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s := open(t, dir, spool.Options{})
			appendN(t, s, 0, 4)
			s.Close()
			path := filepath.Join(dir, spool.FileName)
			b, _ := os.ReadFile(path)
			b[22+tc.at] ^= 0x40 // records are 22 bytes: 12 of header, 10 of data
			os.WriteFile(path, b, 0o600)
			s = open(t, dir, spool.Options{})
			if st := s.Stats(); st.Damaged != 1 || st.Records != 3 {
				t.Errorf("stats: %+v", st)
			}
			want := []string{"record-000", "record-002", "record-003"}
			if diff := cmp.Diff(want, drain(t, s)); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompaction(t *testing.T) {
	dir := t.TempDir()
	s := open(t, dir, spool.Options{})
	big := bytes.Repeat([]byte("x"), 8<<10)
	for i := 0; i < 40; i++ {
		if err := s.Append(big); err != nil {
			t.Fatal(err)
		}
	}
	recs, _ := s.Peek(30 * len(big))
	var ids []uint64
	for _, r := range recs {
		ids = append(ids, r.ID)
	}
	if err := s.Ack(ids...); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(filepath.Join(dir, spool.FileName))
	if fi.Size() > 12*int64(len(big)) {
		t.Errorf("after acknowledging 30 of 40 records the file has %d bytes", fi.Size())
	}
	// IDs from before the rewrite still work.
	appendN(t, s, 0, 1)
	got := drain(t, s)
	if len(got) != 11 || got[10] != "record-000" {
		t.Errorf("after compaction: %d records, last %q", len(got), got[len(got)-1])
	}
	s.Close()
	if s = open(t, dir, spool.Options{}); s.Stats().Records != 0 {
		t.Errorf("after reopen: %+v", s.Stats())
	}
}

// FuzzScan: whatever the file holds, Scan never panics, its records lie
// within the data, and opening a spool over it keeps exactly them.
func FuzzScan(f *testing.F) {
	dir := f.TempDir()
	s, err := spool.Open(dir, spool.Options{})
	if err != nil {
		f.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		s.Append(fmt.Appendf(nil, `{"metrics":{"health.cpu_pct":%d}}`, i))
	}
	s.Close()
	valid, _ := os.ReadFile(filepath.Join(dir, spool.FileName))
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	f.Add(append([]byte("CSPL\x00\x00\x00\x05junk"), valid...))
	f.Add([]byte("CSPA\xff\xff\xff\xff"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := spool.Scan(data)
		if r.End < 0 || r.End > int64(len(data)) {
			t.Fatalf("end %d of %d bytes", r.End, len(data))
		}
		for _, rec := range r.Live {
			if rec.Offset < 12 || rec.Offset+int64(rec.Len) > r.End {
				t.Fatalf("record %+v outside [0, %d)", rec, r.End)
			}
		}
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, spool.FileName), data, 0o600)
		s, err := spool.Open(dir, spool.Options{MaxBytes: 1 << 30, MaxRecords: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		if st := s.Stats(); st.Records != len(r.Live) || st.Damaged != int64(r.Damaged) {
			t.Fatalf("open: %+v, scan: %d live, %d damaged", st, len(r.Live), r.Damaged)
		}
	})
}
