package cradle

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ImportRow is one row read from an import stream: either a normalized
// device, or the reason the row was rejected.
type ImportRow struct {
	Line   int
	Device DeviceCreate
	Err    error // EINVALID, with a message naming the field; nil for a good row
}

// ImportReader reads devices from a CSV or JSON-lines stream one row at a
// time, so an import of any size runs in constant memory. Row errors are
// returned in the row; Next returns an error only when the stream itself is
// unusable (unknown format, bad CSV header, a read error).
type ImportReader struct {
	format ImportFormat
	csv    *csv.Reader
	cols   map[string]int
	lines  *bufio.Reader
	line   int
}

// MaxImportLineLen bounds one JSON line of an import.
const MaxImportLineLen = 64 << 10

const utf8BOM = "\ufeff"

var csvColumns = []string{"serial", "model", "hardware_uid", "hardware_revision", "macs", "labels", "state"}

// NewImportReader returns a reader for the given format. For CSV it reads
// and checks the header row.
func NewImportReader(format ImportFormat, r io.Reader) (*ImportReader, error) {
	ir := &ImportReader{format: format}
	switch format {
	case ImportCSV:
		// A UTF-8 byte order mark (as spreadsheet programs write) must go
		// before the CSV reader sees it: in front of a quoted header it
		// would make the quote a bare one.
		br := bufio.NewReader(r)
		if b, _ := br.Peek(len(utf8BOM)); string(b) == utf8BOM {
			br.Discard(len(utf8BOM))
		}
		ir.csv = csv.NewReader(br)
		ir.csv.FieldsPerRecord = -1
		ir.csv.ReuseRecord = true
		header, err := ir.csv.Read()
		if errors.Is(err, io.EOF) {
			return nil, Errorf(EINVALID, "CSV import is empty: the first row must name the columns (serial, model, …)")
		} else if err != nil {
			return nil, csvStreamError(err)
		}
		ir.cols = map[string]int{}
		for i, h := range header {
			h = strings.ToLower(strings.TrimSpace(h))
			if !containsString(csvColumns, h) {
				return nil, Errorf(EINVALID, "CSV header: unknown column %q; known columns: %s", truncate(h, 80), strings.Join(csvColumns, ", "))
			}
			if _, dup := ir.cols[h]; dup {
				return nil, Errorf(EINVALID, "CSV header: column %q appears twice", h)
			}
			ir.cols[h] = i
		}
		for _, need := range []string{"serial", "model"} {
			if _, ok := ir.cols[need]; !ok {
				return nil, Errorf(EINVALID, "CSV header: required column %q is missing", need)
			}
		}
		ir.line = 1
	case ImportJSONL:
		ir.lines = bufio.NewReaderSize(r, 64<<10)
	default:
		return nil, Errorf(EINVALID, "unknown import format %q: use csv or jsonl", format)
	}
	return ir, nil
}

// Next returns the next row, or io.EOF after the last.
func (ir *ImportReader) Next() (ImportRow, error) {
	if ir.format == ImportCSV {
		return ir.nextCSV()
	}
	return ir.nextJSON()
}

func (ir *ImportReader) nextCSV() (ImportRow, error) {
	rec, err := ir.csv.Read()
	if err != nil {
		var pe *csv.ParseError
		if errors.As(err, &pe) && !errors.Is(pe.Err, csv.ErrFieldCount) {
			// A quoting error makes the rest of the stream unreliable.
			return ImportRow{}, csvStreamError(err)
		}
		return ImportRow{}, err
	}
	line, _ := ir.csv.FieldPos(0)
	row := ImportRow{Line: line}
	get := func(col string) string {
		if i, ok := ir.cols[col]; ok && i < len(rec) {
			return strings.TrimSpace(rec[i])
		}
		return ""
	}
	if len(rec) != len(ir.cols) {
		row.Device.Serial = get("serial")
		row.Err = Errorf(EINVALID, "row has %d fields, the header has %d", len(rec), len(ir.cols))
		return row, nil
	}
	d := DeviceCreate{
		Serial:           get("serial"),
		Model:            get("model"),
		HardwareUID:      get("hardware_uid"),
		HardwareRevision: get("hardware_revision"),
		State:            State(get("state")),
	}
	if m := get("macs"); m != "" {
		d.MACs = strings.FieldsFunc(m, func(r rune) bool { return r == ';' || r == ' ' })
	}
	if l := get("labels"); l != "" {
		d.Labels = map[string]string{}
		for _, kv := range strings.Split(l, ";") {
			k, v, ok := strings.Cut(kv, "=")
			k = strings.TrimSpace(k)
			if !ok || k == "" {
				row.Device = d
				row.Err = Errorf(EINVALID, "labels: %q is not key=value", truncate(kv, 80))
				return row, nil
			}
			if _, dup := d.Labels[k]; dup {
				row.Device = d
				row.Err = Errorf(EINVALID, "labels: key %q given twice", k)
				return row, nil
			}
			d.Labels[k] = strings.TrimSpace(v)
		}
	}
	row.Err = d.Normalize()
	row.Device = d
	return row, nil
}

func csvStreamError(err error) error {
	return Errorf(EINVALID, "CSV import is not valid CSV: %v", err)
}

func (ir *ImportReader) nextJSON() (ImportRow, error) {
	for {
		line, err := ir.lines.ReadSlice('\n')
		tooLong := errors.Is(err, bufio.ErrBufferFull)
		if tooLong {
			// Skip the rest of the overlong line.
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = ir.lines.ReadSlice('\n')
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return ImportRow{}, err
		}
		if len(line) == 0 && errors.Is(err, io.EOF) && !tooLong {
			return ImportRow{}, io.EOF
		}
		ir.line++
		row := ImportRow{Line: ir.line}
		if tooLong {
			row.Err = Errorf(EINVALID, "line longer than %d bytes", MaxImportLineLen)
			return row, nil
		}
		trimmed := bytes.TrimSpace(line)
		if len(trimmed) == 0 {
			if errors.Is(err, io.EOF) {
				return ImportRow{}, io.EOF
			}
			continue // blank lines are allowed
		}
		row.Err = DecodeStrictJSON(trimmed, &row.Device)
		if row.Err == nil {
			row.Err = row.Device.Normalize()
		}
		return row, nil
	}
}

// DecodeStrictJSON decodes exactly one JSON value from data into v, refusing
// unknown fields and trailing data. The error is EINVALID and says where the
// document went wrong.
func DecodeStrictJSON(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return JSONError(err)
	}
	// Not dec.More(): it reports false for a stray '}' or ']'. Anything but
	// JSON whitespace after the value is trailing data.
	if rest := data[dec.InputOffset():]; len(bytes.TrimLeft(rest, " \t\r\n")) > 0 {
		return Errorf(EINVALID, "invalid JSON: unexpected data after the object")
	}
	return nil
}

// JSONError turns an encoding/json error into an EINVALID error that a
// person can act on.
func JSONError(err error) error {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return Errorf(EINVALID, "invalid JSON at byte %d: %v", se.Offset, se)
	case errors.As(err, &te):
		if te.Field != "" {
			return Errorf(EINVALID, "invalid JSON: field %q must be %s, not %s", te.Field, te.Type, te.Value)
		}
		return Errorf(EINVALID, "invalid JSON: expected %s, not %s", te.Type, te.Value)
	case errors.Is(err, io.EOF):
		return Errorf(EINVALID, "invalid JSON: empty document")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return Errorf(EINVALID, "invalid JSON: document ends too early")
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return Errorf(EINVALID, "invalid JSON: unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
	}
	return Errorf(EINVALID, "invalid JSON: %v", err)
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// String returns the row's position and serial for messages.
func (r ImportRow) String() string { return fmt.Sprintf("line %d (%s)", r.Line, r.Device.Serial) }
