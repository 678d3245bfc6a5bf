package cradle_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

// gotRow is what a test compares of an ImportRow: the line, and either the
// error message or the normalized device.
type gotRow struct {
	Line   int
	Serial string
	Err    string
	Device *cradle.DeviceCreate // only for rows without an error
}

// readRows reads every row of an import and returns them with the error
// that ended the stream (nil for a clean io.EOF).
func readRows(t *testing.T, format cradle.ImportFormat, input string) ([]gotRow, error) {
	t.Helper()
	ir, err := cradle.NewImportReader(format, strings.NewReader(input))
	if err != nil {
		return nil, err
	}
	var rows []gotRow
	for i := 0; ; i++ {
		if i > strings.Count(input, "\n")+1 {
			t.Fatalf("more rows than lines in the input")
		}
		row, err := ir.Next()
		if errors.Is(err, io.EOF) {
			return rows, nil
		} else if err != nil {
			return rows, err
		}
		g := gotRow{Line: row.Line, Serial: row.Device.Serial}
		if row.Err != nil {
			if code := cradle.ErrorCode(row.Err); code != cradle.EINVALID {
				t.Errorf("line %d: error code %q, want %q", row.Line, code, cradle.EINVALID)
			}
			g.Err = cradle.ErrorMessage(row.Err)
		} else {
			d := row.Device
			g.Device = &d
		}
		rows = append(rows, g)
	}
}

// dev returns a normalized DeviceCreate for expectations.
func dev(serial, model string, f ...func(*cradle.DeviceCreate)) *cradle.DeviceCreate {
	d := &cradle.DeviceCreate{Serial: serial, Model: model, MACs: []string{}, Labels: map[string]string{}, State: cradle.StateFactory}
	for _, f := range f {
		f(d)
	}
	return d
}

func good(line int, d *cradle.DeviceCreate) gotRow {
	return gotRow{Line: line, Serial: d.Serial, Device: d}
}

func bad(line int, serial, msg string) gotRow {
	return gotRow{Line: line, Serial: serial, Err: msg}
}

func TestImportHeaderErrors(t *testing.T) {
	const known = "serial, model, hardware_uid, hardware_revision, macs, labels, state"
	tests := []struct {
		name   string
		format cradle.ImportFormat
		input  string
		want   string // the whole message
	}{
		{"unknown format", "xml", "", `unknown import format "xml": use csv or jsonl`},
		{"empty format", "", "", `unknown import format "": use csv or jsonl`},
		{"upper-case format", "CSV", "serial,model\n", `unknown import format "CSV": use csv or jsonl`},
		{"empty CSV", cradle.ImportCSV, "", "CSV import is empty: the first row must name the columns (serial, model, …)"},
		{"only blank lines", cradle.ImportCSV, "\n\r\n\n", "CSV import is empty: the first row must name the columns (serial, model, …)"},
		{"unknown column", cradle.ImportCSV, "serial,model,colour\n", `CSV header: unknown column "colour"; known columns: ` + known},
		{"empty column name", cradle.ImportCSV, "serial,model,\n", `CSV header: unknown column ""; known columns: ` + known},
		{"duplicate column", cradle.ImportCSV, "serial,model,Serial\n", `CSV header: column "serial" appears twice`},
		{"duplicate after trimming", cradle.ImportCSV, "serial,model, labels ,labels\n", `CSV header: column "labels" appears twice`},
		{"missing serial", cradle.ImportCSV, "model,labels\nx,y\n", `CSV header: required column "serial" is missing`},
		{"missing model", cradle.ImportCSV, "serial\nSN-1\n", `CSV header: required column "model" is missing`},
		{"unterminated quote in header", cradle.ImportCSV, "\"serial,model\n", `CSV import is not valid CSV: parse error on line 1, column 15: extraneous or missing " in quoted-field`},
		{"bare quote in header", cradle.ImportCSV, "ser\"ial,model\n", `CSV import is not valid CSV: parse error on line 1, column 4: bare " in non-quoted-field`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ir, err := cradle.NewImportReader(tt.format, strings.NewReader(tt.input))
			if err == nil {
				t.Fatalf("NewImportReader = %v, want an error", ir)
			}
			if code := cradle.ErrorCode(err); code != cradle.EINVALID {
				t.Errorf("code %q, want %q", code, cradle.EINVALID)
			}
			if msg := cradle.ErrorMessage(err); msg != tt.want {
				t.Errorf("message:\n got %s\nwant %s", msg, tt.want)
			}
		})
	}
}

func TestImportCSV(t *testing.T) {
	tests := []struct {
		name    string
		input   string
		want    []gotRow
		wantErr string // message of the error that ends the stream
	}{
		{
			name:  "header only",
			input: "serial,model\n",
		},
		{
			name:  "two rows",
			input: "serial,model\nSN-1,gw\nSN-2,gw-2\n",
			want:  []gotRow{good(2, dev("SN-1", "gw")), good(3, dev("SN-2", "gw-2"))},
		},
		{
			name:  "every column, in any order, header case and spaces ignored",
			input: " State ,MACS,labels,hardware_revision,hardware_uid,Model,SERIAL\nprovisioned,02-00-5E-10-00-01;02:00:5e:10:00:02,env=prod; site = ber ,B,uid-7,gw,SN-1\n",
			want: []gotRow{good(2, dev("SN-1", "gw", func(d *cradle.DeviceCreate) {
				d.State = "provisioned"
				d.MACs = []string{"02:00:5e:10:00:01", "02:00:5e:10:00:02"}
				d.Labels = map[string]string{"env": "prod", "site": "ber"}
				d.HardwareRevision = "B"
				d.HardwareUID = "uid-7"
			}))},
		},
		{
			name:  "byte order mark",
			input: "\ufeffserial,model\nSN-1,gw\n",
			want:  []gotRow{good(2, dev("SN-1", "gw"))},
		},
		{
			name:  "byte order mark before a quoted header",
			input: "\ufeff\"serial\",\"model\"\nSN-1,gw\n",
			want:  []gotRow{good(2, dev("SN-1", "gw"))},
		},
		{
			name:  "CRLF and no final newline",
			input: "serial,model\r\nSN-1,gw\r\nSN-2,gw",
			want:  []gotRow{good(2, dev("SN-1", "gw")), good(3, dev("SN-2", "gw"))},
		},
		{
			name:  "fields are trimmed",
			input: "serial,model,state\n  SN-1 , gw ,  \n",
			want:  []gotRow{good(2, dev("SN-1", "gw"))},
		},
		{
			name:  "blank lines and a quoted newline keep line numbers",
			input: "serial,model,labels\n\nSN-1,gw,\"note=a\nb\"\n\nSN-2,gw,\n",
			want: []gotRow{
				bad(3, "SN-1", `invalid value for label "note": use at most 256 printable characters`),
				good(6, dev("SN-2", "gw")),
			},
		},
		{
			name:  "macs separated by spaces",
			input: "serial,model,macs\nSN-1,gw,02:00:5e:10:00:01 02:00:5e:10:00:02\n",
			want: []gotRow{good(2, dev("SN-1", "gw", func(d *cradle.DeviceCreate) {
				d.MACs = []string{"02:00:5e:10:00:01", "02:00:5e:10:00:02"}
			}))},
		},
		{
			name:  "bad rows do not stop the import",
			input: "serial,model,macs,labels,state\nSN-1,gw,02:00:5e:10:00:01:02:03,,\n-SN,gw,,,\nSN-3,gw,,,deployed\nSN-4,gw,,,\n",
			want: []gotRow{
				bad(2, "SN-1", `invalid MAC address "02:00:5e:10:00:01:02:03": use six hex octets such as 02:00:5e:10:00:01`),
				bad(3, "-SN", `invalid serial "-SN": must start with a letter or digit`),
				bad(4, "SN-3", `invalid initial state "deployed": a device is created in state factory or provisioned`),
				good(5, dev("SN-4", "gw")),
			},
		},
		{
			name:  "wrong field counts",
			input: "serial,model\nSN-1,gw,extra\nSN-2\n\"\",\nSN-4,gw\n",
			want: []gotRow{
				bad(2, "SN-1", "row has 3 fields, the header has 2"),
				bad(3, "SN-2", "row has 1 fields, the header has 2"),
				bad(4, "", "serial is required"),
				good(5, dev("SN-4", "gw")),
			},
		},
		{
			name:  "labels",
			input: "serial,model,labels\nSN-1,gw,url=a=b;empty=\nSN-2,gw,env\nSN-3,gw,=x\nSN-4,gw,a=1;a=2\nSN-5,gw,a=1;\nSN-6,gw,-a=1\n",
			want: []gotRow{
				good(2, dev("SN-1", "gw", func(d *cradle.DeviceCreate) { d.Labels = map[string]string{"url": "a=b", "empty": ""} })),
				bad(3, "SN-2", `labels: "env" is not key=value`),
				bad(4, "SN-3", `labels: "=x" is not key=value`),
				bad(5, "SN-4", `labels: key "a" given twice`),
				bad(6, "SN-5", `labels: "" is not key=value`),
				bad(7, "SN-6", `invalid label key "-a": use 1 to 63 letters, digits, '.', '_', '-', '/', starting and ending with a letter or digit`),
			},
		},
		{
			name:    "bare quote stops the stream",
			input:   "serial,model\nSN-1,gw\nSN\"2,gw\nSN-3,gw\n",
			want:    []gotRow{good(2, dev("SN-1", "gw"))},
			wantErr: `CSV import is not valid CSV: parse error on line 3, column 3: bare " in non-quoted-field`,
		},
		{
			name:    "unterminated quote stops the stream",
			input:   "serial,model\nSN-1,gw\n\"SN-2,gw\nSN-3,gw\n",
			want:    []gotRow{good(2, dev("SN-1", "gw"))},
			wantErr: `CSV import is not valid CSV: record on line 3; parse error on line 4, column 9: extraneous or missing " in quoted-field`,
		},
		{
			name:    "text after a closing quote stops the stream",
			input:   "serial,model\n\"SN-1\"x,gw\n",
			wantErr: `CSV import is not valid CSV: parse error on line 2, column 6: extraneous or missing " in quoted-field`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, err := readRows(t, cradle.ImportCSV, tt.input)
			if diff := cmp.Diff(tt.want, rows); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
			checkStreamErr(t, err, tt.wantErr)
		})
	}
}

func TestImportJSONL(t *testing.T) {
	longOK := `{"serial":"SN-L","model":"gw"}`
	longOK += strings.Repeat(" ", cradle.MaxImportLineLen-1-len(longOK))
	tooLong := `{"serial":"SN-X","model":"gw","hardware_uid":"` + strings.Repeat("u", cradle.MaxImportLineLen) + `"}`
	tooLongMsg := fmt.Sprintf("line longer than %d bytes", cradle.MaxImportLineLen)
	tests := []struct {
		name    string
		input   string
		want    []gotRow
		wantErr string
	}{
		{name: "empty"},
		{name: "blank lines only", input: "\n \n\t\r\n"},
		{
			name:  "two rows",
			input: `{"serial":"SN-1","model":"gw"}` + "\n" + `{"serial":"SN-2","model":"gw","macs":["02-00-5E-10-00-01"],"labels":{"env":"prod"},"state":"provisioned"}` + "\n",
			want: []gotRow{
				good(1, dev("SN-1", "gw")),
				good(2, dev("SN-2", "gw", func(d *cradle.DeviceCreate) {
					d.MACs = []string{"02:00:5e:10:00:01"}
					d.Labels = map[string]string{"env": "prod"}
					d.State = "provisioned"
				})),
			},
		},
		{
			name:  "blank lines count, CRLF, last line without newline",
			input: "\n" + `{"serial":"SN-1","model":"gw"}` + "\r\n  \r\n\n" + `  {"serial":"SN-2","model":"gw"}  `,
			want:  []gotRow{good(2, dev("SN-1", "gw")), good(5, dev("SN-2", "gw"))},
		},
		{
			name:  "whitespace after the last newline",
			input: `{"serial":"SN-1","model":"gw"}` + "\n   ",
			want:  []gotRow{good(1, dev("SN-1", "gw"))},
		},
		{
			name: "row errors",
			input: strings.Join([]string{
				`{"serial":"SN-1","model":"gw","colour":"red"}`,
				`{"serial":"SN-2","model":"gw"} {"serial":"SN-3"}`,
				`{"serial":"SN-4","model":"gw"}}`,
				`{"serial":"SN-5","model":"gw"`,
				`{"serial":5}`,
				`not json`,
				`null`,
				`{"serial":"SN-8","model":"gw","state":"eol"}`,
				`{"serial":"SN-9","model":"gw"}`,
			}, "\n"),
			want: []gotRow{
				bad(1, "SN-1", `invalid JSON: unknown field "colour"`),
				bad(2, "SN-2", "invalid JSON: unexpected data after the object"),
				bad(3, "SN-4", "invalid JSON: unexpected data after the object"),
				bad(4, "", "invalid JSON: document ends too early"),
				bad(5, "", `invalid JSON: field "serial" must be string, not number`),
				bad(6, "", "invalid JSON at byte 2: invalid character 'o' in literal null (expecting 'u')"),
				bad(7, "", "serial is required"),
				bad(8, "SN-8", `invalid initial state "eol": a device is created in state factory or provisioned`),
				good(9, dev("SN-9", "gw")),
			},
		},
		{
			name:  "line just under the limit",
			input: longOK + "\n" + `{"serial":"SN-2","model":"gw"}` + "\n",
			want:  []gotRow{good(1, dev("SN-L", "gw")), good(2, dev("SN-2", "gw"))},
		},
		{
			name:  "overlong line is skipped, not split",
			input: `{"serial":"SN-1","model":"gw"}` + "\n" + tooLong + "\n" + `{"serial":"SN-3","model":"gw"}` + "\n",
			want:  []gotRow{good(1, dev("SN-1", "gw")), bad(2, "", tooLongMsg), good(3, dev("SN-3", "gw"))},
		},
		{
			name:  "overlong last line without newline",
			input: `{"serial":"SN-1","model":"gw"}` + "\n" + tooLong,
			want:  []gotRow{good(1, dev("SN-1", "gw")), bad(2, "", tooLongMsg)},
		},
		{
			name:  "several overlong lines in a row",
			input: tooLong + "\n" + tooLong + tooLong + "\n\n" + `{"serial":"SN-4","model":"gw"}`,
			want:  []gotRow{bad(1, "", tooLongMsg), bad(2, "", tooLongMsg), good(4, dev("SN-4", "gw"))},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rows, err := readRows(t, cradle.ImportJSONL, tt.input)
			if diff := cmp.Diff(tt.want, rows); diff != "" {
				t.Errorf("rows (-want +got):\n%s", diff)
			}
			checkStreamErr(t, err, tt.wantErr)
		})
	}
}

func TestImportReadError(t *testing.T) {
	broken := errors.New("connection reset")
	for _, format := range []cradle.ImportFormat{cradle.ImportCSV, cradle.ImportJSONL} {
		t.Run(string(format), func(t *testing.T) {
			first := "serial,model\nSN-1,gw\n"
			if format == cradle.ImportJSONL {
				first = `{"serial":"SN-1","model":"gw"}` + "\n"
			}
			ir, err := cradle.NewImportReader(format, io.MultiReader(strings.NewReader(first), &failingReader{broken}))
			if err != nil {
				t.Fatal(err)
			}
			if row, err := ir.Next(); err != nil || row.Err != nil || row.Device.Serial != "SN-1" {
				t.Fatalf("first row = %v, %v (row error %v)", row, err, row.Err)
			}
			if _, err := ir.Next(); !errors.Is(err, broken) {
				t.Errorf("Next after a read error = %v, want the read error", err)
			}
		})
	}
}

type failingReader struct{ err error }

func (r *failingReader) Read([]byte) (int, error) { return 0, r.err }

func TestImportRowString(t *testing.T) {
	r := cradle.ImportRow{Line: 7, Device: cradle.DeviceCreate{Serial: "SN-7"}}
	if got := r.String(); got != "line 7 (SN-7)" {
		t.Errorf("String() = %q", got)
	}
}

func checkStreamErr(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Errorf("stream error: %v", err)
		}
		return
	}
	if err == nil {
		t.Errorf("no stream error; want %q", want)
		return
	}
	if code := cradle.ErrorCode(err); code != cradle.EINVALID {
		t.Errorf("stream error code %q, want %q", code, cradle.EINVALID)
	}
	if msg := cradle.ErrorMessage(err); msg != want {
		t.Errorf("stream error:\n got %s\nwant %s", msg, want)
	}
}

func TestDecodeStrictJSON(t *testing.T) {
	type doc struct {
		Name  string            `json:"name"`
		N     int               `json:"n"`
		Tags  []string          `json:"tags"`
		Attrs map[string]string `json:"attrs"`
	}
	tests := []struct {
		name  string
		input string
		want  string // the whole message; "" for success
	}{
		{"valid", `{"name":"a","n":1,"tags":["x"],"attrs":{"k":"v"}}`, ""},
		{"surrounding whitespace", " \n{\"name\":\"a\"}\n\t ", ""},
		{"empty object", `{}`, ""},
		{"empty", ``, "invalid JSON: empty document"},
		{"only whitespace", " \r\n\t", "invalid JSON: empty document"},
		{"cut short", `{"name":"a"`, "invalid JSON: document ends too early"},
		{"cut inside a string", `{"name":"a`, "invalid JSON: document ends too early"},
		{"missing value", `{"name":}`, "invalid JSON at byte 9: invalid character '}' looking for beginning of value"},
		{"missing colon", `{"name" "a"}`, `invalid JSON at byte 9: invalid character '"' after object key`},
		{"single quotes", `{'name':'a'}`, `invalid JSON at byte 2: invalid character '\'' looking for beginning of object key string`},
		{"trailing comma", `{"name":"a",}`, `invalid JSON at byte 13: invalid character '}' looking for beginning of object key string`},
		{"string for int", `{"n":"1"}`, `invalid JSON: field "n" must be int, not string`},
		{"float for int", `{"n":1.5}`, `invalid JSON: field "n" must be int, not number 1.5`},
		{"too large for int", `{"n":1e400}`, `invalid JSON: field "n" must be int, not number 1e400`},
		{"string for list", `{"tags":"x"}`, `invalid JSON: field "tags" must be []string, not string`},
		{"number in list", `{"tags":[1]}`, `invalid JSON: field "tags" must be string, not number`},
		{"array for object", `[]`, "invalid JSON: expected cradle_test.doc, not array"},
		{"unknown field", `{"name":"a","colour":"red"}`, `invalid JSON: unknown field "colour"`},
		{"second object", `{"name":"a"}{"name":"b"}`, "invalid JSON: unexpected data after the object"},
		{"trailing word", `{"name":"a"} x`, "invalid JSON: unexpected data after the object"},
		{"trailing brace", `{"name":"a"}}`, "invalid JSON: unexpected data after the object"},
		{"trailing bracket", `{"name":"a"}]`, "invalid JSON: unexpected data after the object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d doc
			checkErrExact(t, cradle.DecodeStrictJSON([]byte(tt.input), &d), tt.want)
		})
	}
}

func TestJSONError(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"wrapped EOF", fmt.Errorf("read body: %w", io.EOF), "invalid JSON: empty document"},
		{"wrapped unexpected EOF", fmt.Errorf("read body: %w", io.ErrUnexpectedEOF), "invalid JSON: document ends too early"},
		{"other error", errors.New("http: request body too large"), "invalid JSON: http: request body too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErrExact(t, cradle.JSONError(tt.err), tt.want)
		})
	}
}

func FuzzImportCSV(f *testing.F) {
	for _, s := range []string{
		"serial,model\nSN-1,gw\n",
		"\ufeffSerial,MODEL,macs,labels,state,hardware_uid,hardware_revision\nSN-1,gw,02-00-5E-10-00-01;02:00:5e:10:00:02,env=prod;site=ber,provisioned,uid,B\n",
		"serial,model,labels\nSN-1,gw,\"a=1\nb=2\"\n\nSN-2,gw,a=1;a=2\n",
		"serial,model\nSN-1,gw,extra\nSN-2\n",
		"serial,model\n\"SN-1,gw\n",
		"serial,model\nSN\"1,gw\n",
		"serial,model,serial\n",
		"model\n",
		"",
		"serial,model\r\nSN-1,gw\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkImportStream(t, cradle.ImportCSV, data)
	})
}

func FuzzImportJSONL(f *testing.F) {
	for _, s := range []string{
		`{"serial":"SN-1","model":"gw"}` + "\n",
		`{"serial":"SN-1","model":"gw","macs":["02-00-5E-10-00-01"],"labels":{"env":"prod"},"state":"provisioned","hardware_uid":"u","hardware_revision":"B"}`,
		"\n\r\n" + `{"serial":"SN-1","model":"gw"}` + "\r\n" + `{"serial":"SN-2","model":"gw"}`,
		`{"serial":"SN-1","model":"gw"}}` + "\n" + `{"serial":"SN-1","model":"gw"} x`,
		`{"serial":"SN-1","model":"gw","x":1}` + "\n" + `{"serial":1}` + "\n" + `null` + "\n" + `[`,
		"",
	} {
		f.Add([]byte(s))
	}
	f.Add(append([]byte(strings.Repeat("x", cradle.MaxImportLineLen+10)+"\n"), `{"serial":"SN-2","model":"gw"}`...))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkImportStream(t, cradle.ImportJSONL, data)
	})
}

// checkImportStream reads a whole import and checks what every fuzz input
// must satisfy: no panic; an end in a bounded number of rows; increasing
// line numbers; every row either refused with EINVALID or holding a device
// that Normalize leaves unchanged; stream errors EINVALID (CSV only; a
// JSON-lines stream from memory has no stream errors).
func checkImportStream(t *testing.T, format cradle.ImportFormat, data []byte) {
	ir, err := cradle.NewImportReader(format, bytes.NewReader(data))
	if err != nil {
		if format != cradle.ImportCSV || cradle.ErrorCode(err) != cradle.EINVALID {
			t.Fatalf("NewImportReader(%s): %v", format, err)
		}
		return
	}
	maxRows := bytes.Count(data, []byte("\n")) + 1
	last := 0
	for n := 0; ; n++ {
		row, err := ir.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			if format != cradle.ImportCSV || cradle.ErrorCode(err) != cradle.EINVALID {
				t.Fatalf("Next: %v", err)
			}
			return
		}
		if n >= maxRows {
			t.Fatalf("more than %d rows from %d lines", n, maxRows)
		}
		if row.Line <= last {
			t.Fatalf("row at line %d follows line %d", row.Line, last)
		}
		last = row.Line
		if row.Err != nil {
			if code := cradle.ErrorCode(row.Err); code != cradle.EINVALID {
				t.Fatalf("%v: error code %q, want %q (%v)", row, code, cradle.EINVALID, row.Err)
			}
			continue
		}
		checkNormalized(t, row.Device)
	}
}
