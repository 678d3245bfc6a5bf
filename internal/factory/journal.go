package factory

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"cradle"
)

// The journal is the station's durable memory: an append-only file of
// lines, each "<sha256 hex of body> <body JSON>\n", fsynced before Append
// returns. Replaying it gives the batches the station knows, the serials
// and MACs it holds, the units it started, the signed records it made and
// which of them the server acknowledged.
//
// A crash (SIGKILL, power loss) in the middle of an append leaves a last
// line without its newline: OpenJournal cuts it off, since that entry was
// never acknowledged to anyone. Any other damage — a checksum that does
// not match, a line that is not an entry — is corruption: the journal
// opens read-only for syncing the intact records, and the station refuses
// to provision until it is dealt with. A record whose signature does not
// verify with the station's certificate (edited, with its checksum
// recomputed) is tampered: it is never uploaded, and the server refuses
// it too.

// Entry kinds.
const (
	entryBatch  = "batch"  // a batch definition fetched from the server
	entryAlloc  = "alloc"  // units (serial + MAC) reserved for this station
	entryStart  = "start"  // provisioning of a unit began
	entryRecord = "record" // a unit's signed trace record
	entrySynced = "synced" // the server acknowledged records
)

// entry is one journal line.
type entry struct {
	Type   string                  `json:"t"`
	At     time.Time               `json:"at"`
	Batch  *cradle.Batch           `json:"batch,omitempty"`
	Units  []cradle.UnitAllocation `json:"units,omitempty"`
	Start  *unitStart              `json:"start,omitempty"`
	Signed *cradle.SignedTrace     `json:"signed,omitempty"`
	IDs    []string                `json:"ids,omitempty"`
}

// unitStart is what the station knows of a unit when it starts it.
type unitStart struct {
	Unit     cradle.UnitAllocation `json:"unit"`
	RecordID string                `json:"record_id"`
	Device   string                `json:"device"` // how to reach the unit again
	Operator string                `json:"operator"`
}

// JournalRecord is a signed record in the journal.
type JournalRecord struct {
	Line   int
	Record *cradle.TraceRecord
	Signed cradle.SignedTrace
	Synced bool
	// Err says why the record cannot be uploaded (its signature does not
	// verify); nil for a good record.
	Err error
}

// Journal is an open station journal. It is safe for concurrent use.
type Journal struct {
	path   string
	verify func(cradle.SignedTrace) error

	mu        sync.Mutex
	f         *os.File
	lines     int
	recovered int64 // bytes of a torn last line cut off at open
	corrupt   []error
	batches   map[string]*cradle.Batch
	free      []cradle.UnitAllocation // reserved, not started
	started   map[string]*unitStart   // started, no record yet, by serial
	records   []*JournalRecord
	byID      map[string]*JournalRecord
	syncNS    atomic.Int64 // time spent writing and syncing appends
}

// MaxJournalLine bounds one journal line.
const MaxJournalLine = 1 << 20

// OpenJournal opens (creating it if needed) the journal at path and
// replays it. verify checks a record's signature (with the station's
// certificate). A torn last line is cut off; other damage is reported by
// Corrupt, not an error, so that the intact records can still be synced.
func OpenJournal(path string, verify func(cradle.SignedTrace) error) (*Journal, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("factory: open journal: %w", err)
	}
	j := &Journal{path: path, verify: verify, f: f, batches: map[string]*cradle.Batch{},
		started: map[string]*unitStart{}, byID: map[string]*JournalRecord{}}
	if err := j.replay(); err != nil {
		f.Close()
		return nil, err
	}
	return j, nil
}

// replay reads the whole file, cutting off a torn last line.
func (j *Journal) replay() error {
	data, err := io.ReadAll(j.f)
	if err != nil {
		return fmt.Errorf("factory: read journal %s: %w", j.path, err)
	}
	good := len(data)
	if i := bytes.LastIndexByte(data, '\n'); i+1 < len(data) {
		good = i + 1
		j.recovered = int64(len(data) - good)
		if err := j.f.Truncate(int64(good)); err != nil {
			return fmt.Errorf("factory: cut the torn last line of journal %s: %w", j.path, err)
		}
		if err := j.f.Sync(); err != nil {
			return fmt.Errorf("factory: journal %s: %w", j.path, err)
		}
	}
	if _, err := j.f.Seek(int64(good), io.SeekStart); err != nil {
		return err
	}
	sc := bufio.NewScanner(bytes.NewReader(data[:good]))
	sc.Buffer(make([]byte, 64*1024), MaxJournalLine+80)
	for sc.Scan() {
		j.lines++
		e, err := parseLine(sc.Bytes())
		if err != nil {
			j.corrupt = append(j.corrupt, fmt.Errorf("journal %s line %d: %w", j.path, j.lines, err))
			continue
		}
		j.apply(e, j.lines)
	}
	if err := sc.Err(); err != nil {
		j.corrupt = append(j.corrupt, fmt.Errorf("journal %s after line %d: %w", j.path, j.lines, err))
	}
	return nil
}

// parseLine checks a line's checksum and decodes its entry.
func parseLine(line []byte) (*entry, error) {
	sum, body, ok := bytes.Cut(line, []byte{' '})
	if !ok || len(sum) != 64 {
		return nil, errors.New("not a journal entry (no checksum)")
	}
	want := sha256.Sum256(body)
	got := make([]byte, 32)
	if _, err := hex.Decode(got, sum); err != nil || !bytes.Equal(got, want[:]) {
		return nil, errors.New("checksum mismatch: the line was damaged or edited")
	}
	var e entry
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil {
		return nil, fmt.Errorf("not a journal entry: %v", err)
	}
	switch {
	case e.Type == entryBatch && e.Batch != nil,
		e.Type == entryAlloc && len(e.Units) > 0,
		e.Type == entryStart && e.Start != nil,
		e.Type == entryRecord && e.Signed != nil,
		e.Type == entrySynced && len(e.IDs) > 0:
		return &e, nil
	}
	return nil, fmt.Errorf("unknown or incomplete entry of type %q", e.Type)
}

// apply updates the state with one entry; j.mu is held (or not yet
// shared).
func (j *Journal) apply(e *entry, line int) {
	switch e.Type {
	case entryBatch:
		j.batches[e.Batch.ID] = e.Batch
	case entryAlloc:
		j.free = append(j.free, e.Units...)
	case entryStart:
		s := e.Start
		j.free = slices.DeleteFunc(j.free, func(u cradle.UnitAllocation) bool { return u.Serial == s.Unit.Serial })
		j.started[s.Unit.Serial] = s
	case entryRecord:
		r := &JournalRecord{Line: line, Signed: *e.Signed}
		rec, err := e.Signed.Record()
		if err == nil && j.verify != nil {
			err = j.verify(*e.Signed)
		}
		if err != nil {
			r.Err = fmt.Errorf("journal %s line %d: record refused: %s", j.path, line, cradle.ErrorMessage(err))
		} else {
			r.Record = rec
			delete(j.started, rec.Serial)
			if _, dup := j.byID[rec.ID]; dup {
				r.Err = fmt.Errorf("journal %s line %d: record %s appears twice", j.path, line, rec.ID)
			} else {
				j.byID[rec.ID] = r
			}
		}
		j.records = append(j.records, r)
	case entrySynced:
		for _, id := range e.IDs {
			if r, ok := j.byID[id]; ok {
				r.Synced = true
			}
		}
	}
}

// append writes one entry and syncs the file, then applies it.
func (j *Journal) append(e *entry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.appendLocked(e)
}

func (j *Journal) appendLocked(e *entry) error {
	return j.write(e, true)
}

// write appends an entry, syncing the file when sync is set; the entry is
// applied either way.
func (j *Journal) write(e *entry, sync bool) error {
	if len(j.corrupt) > 0 {
		return fmt.Errorf("factory: journal %s is corrupt (%v): not writing to it", j.path, j.corrupt[0])
	}
	if e.At.IsZero() {
		e.At = time.Now().UTC()
	}
	body, err := json.Marshal(e)
	if err != nil {
		return fmt.Errorf("factory: journal entry: %w", err)
	}
	if len(body) > MaxJournalLine {
		return fmt.Errorf("factory: journal entry of %d bytes is too large", len(body))
	}
	sum := sha256.Sum256(body)
	line := make([]byte, 0, 66+len(body))
	line = hex.AppendEncode(line, sum[:])
	line = append(line, ' ')
	line = append(line, body...)
	line = append(line, '\n')
	start := time.Now()
	defer func() { j.syncNS.Add(int64(time.Since(start))) }()
	if _, err := j.f.Write(line); err != nil {
		return fmt.Errorf("factory: write journal %s: %w", j.path, err)
	}
	if sync {
		if err := j.f.Sync(); err != nil {
			return fmt.Errorf("factory: sync journal %s: %w", j.path, err)
		}
	}
	j.lines++
	j.apply(e, j.lines)
	return nil
}

// Close closes the file.
func (j *Journal) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.f.Close()
}

// Path returns the journal's file name.
func (j *Journal) Path() string { return j.path }

// Recovered returns how many bytes of a torn last line OpenJournal cut
// off (0 when the journal ended cleanly).
func (j *Journal) Recovered() int64 { return j.recovered }

// Corrupt returns the damaged lines found at open, one error each.
func (j *Journal) Corrupt() []error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.corrupt)
}

// Batch returns a batch the journal holds.
func (j *Journal) Batch(id string) (*cradle.Batch, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	b, ok := j.batches[id]
	return b, ok
}

// AddBatch journals a batch definition.
func (j *Journal) AddBatch(b *cradle.Batch) error {
	return j.append(&entry{Type: entryBatch, Batch: b})
}

// Reserve journals units the server allocated to the station.
func (j *Journal) Reserve(units []cradle.UnitAllocation) error {
	if len(units) == 0 {
		return nil
	}
	return j.append(&entry{Type: entryAlloc, Units: units})
}

// Free returns how many reserved units of a batch are not started.
func (j *Journal) Free(batch string) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	n := 0
	for _, u := range j.free {
		if u.Batch == batch {
			n++
		}
	}
	return n
}

// StartAsync takes the next reserved unit of batch and journals its
// start (ok is false when none is left), with the sync of the entry
// running in the background: durable waits for it. The caller must call durable before
// the unit's serial leaves the station (before the identity is written
// to the unit): until then a crash may lose the entry, and the serial
// would be handed out again, which is harmless while nothing carries it.
func (j *Journal) StartAsync(batch, device, operator, recordID string) (u cradle.UnitAllocation, ok bool, durable func() error, err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	i := slices.IndexFunc(j.free, func(u cradle.UnitAllocation) bool { return u.Batch == batch && !u.RMA })
	if i < 0 {
		return u, false, nil, nil
	}
	u = j.free[i]
	if err := j.write(&entry{Type: entryStart, Start: &unitStart{Unit: u, RecordID: recordID, Device: device, Operator: operator}}, false); err != nil {
		return u, false, nil, err
	}
	done := make(chan error, 1)
	go func() {
		err := j.f.Sync()
		if err != nil {
			err = fmt.Errorf("factory: sync journal %s: %w", j.path, err)
		}
		done <- err
	}()
	var once sync.Once
	var syncErr error
	return u, true, func() error {
		once.Do(func() {
			// Only the time spent waiting counts as journal time.
			start := time.Now()
			syncErr = <-done
			j.syncNS.Add(int64(time.Since(start)))
		})
		return syncErr
	}, nil
}

// Interrupted returns the units that were started but have no record: the
// station stopped while provisioning them.
func (j *Journal) Interrupted() []unitStart {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]unitStart, 0, len(j.started))
	for _, s := range j.started {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b unitStart) int { return cmpString(a.Unit.Serial, b.Unit.Serial) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// WriteTime returns the time callers spent writing and syncing entries
// so far (for StartAsync, the time spent waiting for its sync).
func (j *Journal) WriteTime() time.Duration { return time.Duration(j.syncNS.Load()) }

// AddRecord journals a signed record. It refuses a record that does not
// verify, and a second record under an id.
func (j *Journal) AddRecord(s cradle.SignedTrace) error {
	if j.verify != nil {
		if err := j.verify(s); err != nil {
			return err
		}
	}
	return j.addRecord(s)
}

// addRecord journals a record the station has just signed with the key
// New checked against its certificate: its signature is not checked again
// (OpenJournal checks every record when the journal is read back).
func (j *Journal) addRecord(s cradle.SignedTrace) error {
	rec, err := s.Record()
	if err != nil {
		return err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, dup := j.byID[rec.ID]; dup {
		return cradle.Errorf(cradle.ECONFLICT, "record %s is in the journal already", rec.ID)
	}
	return j.appendLocked(&entry{Type: entryRecord, Signed: &s})
}

// Records returns every record in journal order.
func (j *Journal) Records() []*JournalRecord {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]*JournalRecord, len(j.records))
	for i, r := range j.records {
		c := *r
		out[i] = &c
	}
	return out
}

// Pending returns the good records the server has not acknowledged.
func (j *Journal) Pending() []*JournalRecord {
	var out []*JournalRecord
	for _, r := range j.Records() {
		if r.Err == nil && !r.Synced {
			out = append(out, r)
		}
	}
	return out
}

// MarkSynced journals that the server acknowledged records. It works on a
// corrupt journal too: acknowledgements only ever shrink the work left.
func (j *Journal) MarkSynced(ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	corrupt := j.corrupt
	j.corrupt = nil
	err := j.appendLocked(&entry{Type: entrySynced, IDs: ids})
	j.corrupt = corrupt
	return err
}
