// Package spool is the agent's on-disk queue of outgoing records (telemetry
// payloads) kept while the server cannot be reached: bounded, crash-safe,
// first in first out, delivered at least once.
//
// The spool is one file, spool.log, of records appended one after another:
//
//	"CSP" state(1) length(4, big-endian) crc32c(4, of length and data) data
//
// state is 'L' while the record waits and 'A' once it is acknowledged (or
// dropped): Ack overwrites that one byte in place and syncs, so a record is
// removed only after the server has it. Append writes the whole record and
// syncs before it returns.
//
// Failure modes: a crash in the middle of an append leaves a torn tail,
// cut off when the spool is opened (Stats.CutBytes). A damaged record (bad
// checksum, bad header) is skipped and counted (Stats.Damaged); the next
// record is found by its "CSP" marker, so the rest is still delivered. A
// crash between sending and Ack sends the record again: the server keeps
// one point per metric and time, so a resend changes nothing.
//
// Bounds: at most MaxBytes of data in at most MaxRecords records. An
// Append that would go over drops the oldest records first and counts them
// (Stats.Dropped). The file is rewritten without its acknowledged records
// (atomically: a temporary file renamed over it) once they take more than
// half of it.
package spool

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sync"

	"cradle/internal/atomicfile"
)

// FileName is the spool's file in its directory.
const FileName = "spool.log"

// Defaults of Options.
const (
	DefaultMaxBytes   = 4 << 20
	DefaultMaxRecords = 10000
	// MaxRecordSize is the largest record Append takes.
	MaxRecordSize = 1 << 20
)

const headerSize = 12

var magic = []byte("CSP")

const (
	stateLive  = 'L'
	stateAcked = 'A'
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// Options bounds a spool. Zero values take the defaults.
type Options struct {
	MaxBytes   int64 // data bytes kept; zero: DefaultMaxBytes (4 MiB)
	MaxRecords int   // records kept; zero: DefaultMaxRecords (10,000)
}

// Record is a record waiting to be sent.
type Record struct {
	ID   uint64 // for Ack; increasing in append order
	Data []byte
}

// Stats counts what the spool holds and what it lost.
type Stats struct {
	Records  int   // waiting
	Bytes    int64 // their data bytes
	Dropped  int64 // oldest records dropped to make room, since Open
	Damaged  int64 // damaged records skipped, since Open
	CutBytes int64 // bytes of a torn tail cut at Open
}

// entry is a live record in the file.
type entry struct {
	id  uint64
	off int64
	n   int
}

// Spool is an open spool. Its methods are safe for concurrent use.
type Spool struct {
	mu     sync.Mutex
	path   string
	f      *os.File
	opts   Options
	size   int64   // file size
	live   []entry // in append order
	bytes  int64   // data bytes of live
	nextID uint64
	stats  Stats
}

// Open opens (or creates) the spool in dir, cutting a torn tail and
// skipping damaged records.
func Open(dir string, opts Options) (*Spool, error) {
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.MaxRecords <= 0 {
		opts.MaxRecords = DefaultMaxRecords
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	s := &Spool{path: filepath.Join(dir, FileName), opts: opts, nextID: 1}
	if err := s.open(); err != nil {
		return nil, err
	}
	// Records over the bounds (the bounds were lowered) go now.
	if err := s.makeRoom(0); err != nil {
		s.f.Close()
		return nil, err
	}
	return s, nil
}

func (s *Spool) open() error {
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("spool: %w", err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("spool: read %s: %w", s.path, err)
	}
	sc := Scan(data)
	if sc.End < int64(len(data)) {
		if err := f.Truncate(sc.End); err != nil {
			f.Close()
			return fmt.Errorf("spool: cut the torn tail of %s: %w", s.path, err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return fmt.Errorf("spool: %w", err)
		}
		s.stats.CutBytes += int64(len(data)) - sc.End
	}
	s.f, s.size = f, sc.End
	s.live, s.bytes = s.live[:0], 0
	for _, r := range sc.Live {
		s.live = append(s.live, entry{id: s.nextID, off: r.Offset, n: r.Len})
		s.nextID++
		s.bytes += int64(r.Len)
	}
	s.stats.Damaged += int64(sc.Damaged)
	return nil
}

// ScannedRecord is a live record found by Scan: its offset in the file
// and its data length.
type ScannedRecord struct {
	Offset int64
	Len    int
}

// ScanResult is what Scan found in a spool file.
type ScanResult struct {
	Live    []ScannedRecord
	Acked   int   // acknowledged records
	Damaged int   // damaged records skipped
	End     int64 // where the last whole record ends: the rest is a torn tail
}

// Scan parses the contents of a spool file. It never fails: what is not a
// whole, valid record is either skipped as damaged (when a valid-looking
// record marker follows it) or the torn tail (when none does).
func Scan(data []byte) ScanResult {
	var r ScanResult
	off := 0
	for off < len(data) {
		n, st, ok := checkRecord(data[off:])
		if ok {
			if st == stateLive {
				r.Live = append(r.Live, ScannedRecord{Offset: int64(off + headerSize), Len: n})
			} else {
				r.Acked++
			}
			off += headerSize + n
			continue
		}
		next := nextMarker(data, off+1)
		if next < 0 {
			break // a torn tail: an append that did not finish
		}
		r.Damaged++
		off = next
	}
	r.End = int64(off)
	return r
}

// checkRecord checks the record at the start of b: its data length, its
// state and whether it is whole and valid.
func checkRecord(b []byte) (n int, state byte, ok bool) {
	if len(b) < headerSize || !bytes.Equal(b[:3], magic) || (b[3] != stateLive && b[3] != stateAcked) {
		return 0, 0, false
	}
	l := binary.BigEndian.Uint32(b[4:8])
	if l > MaxRecordSize || int64(len(b)) < headerSize+int64(l) {
		return 0, 0, false
	}
	n = int(l)
	sum := crc32.Update(crc32.Checksum(b[4:8], crcTable), crcTable, b[headerSize:headerSize+n])
	if sum != binary.BigEndian.Uint32(b[8:12]) {
		return 0, 0, false
	}
	return n, b[3], true
}

// nextMarker returns the offset of the next record marker at or after
// from that begins a whole valid record, or -1.
func nextMarker(data []byte, from int) int {
	for from < len(data) {
		i := bytes.Index(data[from:], magic)
		if i < 0 {
			return -1
		}
		if _, _, ok := checkRecord(data[from+i:]); ok {
			return from + i
		}
		from += i + 1
	}
	return -1
}

// Close closes the spool's file.
func (s *Spool) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil
	}
	err := s.f.Close()
	s.f = nil
	return err
}

// Stats returns the spool's counts.
func (s *Spool) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Records, st.Bytes = len(s.live), s.bytes
	return st
}

// Append adds data as the newest record and syncs it to disk, dropping
// the oldest records first when the bounds require. It refuses empty data
// and data over MaxRecordSize or MaxBytes.
func (s *Spool) Append(data []byte) error {
	if len(data) == 0 {
		return errors.New("spool: empty record")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return errors.New("spool: closed")
	}
	if len(data) > MaxRecordSize || int64(len(data)) > s.opts.MaxBytes {
		return fmt.Errorf("spool: record of %d bytes is larger than the spool takes (%d bytes)", len(data), min(MaxRecordSize, s.opts.MaxBytes))
	}
	if err := s.makeRoom(len(data)); err != nil {
		return err
	}
	rec := make([]byte, headerSize, headerSize+len(data))
	copy(rec, magic)
	rec[3] = stateLive
	binary.BigEndian.PutUint32(rec[4:8], uint32(len(data)))
	binary.BigEndian.PutUint32(rec[8:12], crc32.Update(crc32.Checksum(rec[4:8], crcTable), crcTable, data))
	rec = append(rec, data...)
	if _, err := s.f.WriteAt(rec, s.size); err != nil {
		s.f.Truncate(s.size) // best effort; Open cuts a torn tail anyway
		return fmt.Errorf("spool: append: %w", err)
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("spool: append: %w", err)
	}
	s.live = append(s.live, entry{id: s.nextID, off: s.size + headerSize, n: len(data)})
	s.nextID++
	s.bytes += int64(len(data))
	s.size += int64(len(rec))
	return s.maybeCompact()
}

// makeRoom drops the oldest records until n more bytes and one more
// record fit (n = 0: until the spool is within its bounds).
func (s *Spool) makeRoom(n int) error {
	extra := 0
	if n > 0 {
		extra = 1
	}
	drop := 0
	bytes := s.bytes
	for drop < len(s.live) && (bytes+int64(n) > s.opts.MaxBytes || len(s.live)-drop+extra > s.opts.MaxRecords) {
		bytes -= int64(s.live[drop].n)
		drop++
	}
	if drop == 0 {
		return nil
	}
	if err := s.mark(s.live[:drop]); err != nil {
		return err
	}
	s.live = s.live[drop:]
	s.bytes = bytes
	s.stats.Dropped += int64(drop)
	return nil
}

// mark sets the records acknowledged on disk and syncs.
func (s *Spool) mark(es []entry) error {
	for _, e := range es {
		if _, err := s.f.WriteAt([]byte{stateAcked}, e.off-headerSize+3); err != nil {
			return fmt.Errorf("spool: acknowledge: %w", err)
		}
	}
	if err := s.f.Sync(); err != nil {
		return fmt.Errorf("spool: acknowledge: %w", err)
	}
	return nil
}

// Peek returns the oldest waiting records, as many as fit in maxBytes of
// data but at least one (none when the spool is empty), without removing
// them.
func (s *Spool) Peek(maxBytes int) ([]Record, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return nil, errors.New("spool: closed")
	}
	var out []Record
	total := 0
	for _, e := range s.live {
		if len(out) > 0 && total+e.n > maxBytes {
			break
		}
		b := make([]byte, e.n)
		if _, err := s.f.ReadAt(b, e.off); err != nil {
			return nil, fmt.Errorf("spool: read: %w", err)
		}
		out = append(out, Record{ID: e.id, Data: b})
		total += e.n
	}
	return out, nil
}

// Ack removes the records with these IDs (from Peek) once they were
// delivered; IDs no longer waiting (dropped meanwhile) are ignored.
func (s *Spool) Ack(ids ...uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f == nil {
		return errors.New("spool: closed")
	}
	want := make(map[uint64]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	var done []entry
	kept := s.live[:0:0]
	for _, e := range s.live {
		if want[e.id] {
			done = append(done, e)
		} else {
			kept = append(kept, e)
		}
	}
	if len(done) == 0 {
		return nil
	}
	if err := s.mark(done); err != nil {
		return err
	}
	s.live = kept
	for _, e := range done {
		s.bytes -= int64(e.n)
	}
	return s.maybeCompact()
}

// maybeCompact rewrites the file without acknowledged records once they
// take more than half of it (and more than 64 KiB), or empties it when
// nothing waits.
func (s *Spool) maybeCompact() error {
	liveSize := s.bytes + int64(len(s.live))*headerSize
	if len(s.live) == 0 && s.size > 0 {
		if err := s.f.Truncate(0); err != nil {
			return fmt.Errorf("spool: empty: %w", err)
		}
		if err := s.f.Sync(); err != nil {
			return fmt.Errorf("spool: empty: %w", err)
		}
		s.size = 0
		return nil
	}
	if s.size-liveSize <= 64<<10 || s.size-liveSize <= liveSize {
		return nil
	}
	var buf bytes.Buffer
	buf.Grow(int(liveSize))
	moved := make([]entry, len(s.live))
	for i, e := range s.live {
		hdr := make([]byte, headerSize+e.n)
		if _, err := s.f.ReadAt(hdr, e.off-headerSize); err != nil {
			return fmt.Errorf("spool: compact: %w", err)
		}
		moved[i] = entry{id: e.id, off: int64(buf.Len()) + headerSize, n: e.n}
		buf.Write(hdr)
	}
	if err := atomicfile.WriteFile(s.path, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("spool: compact: %w", err)
	}
	f, err := os.OpenFile(s.path, os.O_RDWR, 0o600)
	if err != nil {
		return fmt.Errorf("spool: compact: %w", err)
	}
	s.f.Close()
	s.f, s.live, s.size = f, moved, int64(buf.Len())
	return nil
}
