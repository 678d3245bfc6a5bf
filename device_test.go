package cradle_test

import (
	"fmt"
	"strings"
	"testing"

	"cradle"

	"github.com/google/go-cmp/cmp"
)

func TestValidateSerial(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // the whole message; "" for valid
	}{
		{"simple", "SN-0001", ""},
		{"digits first", "0001.a_b-C", ""},
		{"one character", "7", ""},
		{"64 characters", strings.Repeat("a", 64), ""},
		{"empty", "", "serial is required"},
		{"65 characters", strings.Repeat("a", 65), fmt.Sprintf("invalid serial %q: longer than 64 characters", strings.Repeat("a", 65))},
		{"very long is cut", strings.Repeat("b", 200), fmt.Sprintf("invalid serial %q: longer than 64 characters", strings.Repeat("b", 80)+"…")},
		{"starts with a dash", "-SN", `invalid serial "-SN": must start with a letter or digit`},
		{"starts with a dot", ".SN", `invalid serial ".SN": must start with a letter or digit`},
		{"space", "SN 1", `invalid serial "SN 1": character ' ' not allowed; use letters, digits, '.', '_' and '-'`},
		{"slash", "SN/1", `invalid serial "SN/1": character '/' not allowed; use letters, digits, '.', '_' and '-'`},
		{"newline", "SN\n", `invalid serial "SN\n": character '\n' not allowed; use letters, digits, '.', '_' and '-'`},
		{"non-ASCII letter", "SN-é", `invalid serial "SN-é": character 'é' not allowed; use letters, digits, '.', '_' and '-'`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErrExact(t, cradle.ValidateSerial(tt.in), tt.want)
		})
	}
}

func TestNormalizeMAC(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // "" for invalid
	}{
		{"canonical", "02:00:5e:10:00:01", "02:00:5e:10:00:01"},
		{"upper case", "02:00:5E:10:AB:CD", "02:00:5e:10:ab:cd"},
		{"dashes", "02-00-5e-10-00-01", "02:00:5e:10:00:01"},
		{"dashes and upper case", "02-00-5E-10-AB-CD", "02:00:5e:10:ab:cd"},
		{"EUI-64", "02:00:5e:10:00:01:02:03", ""},
		{"EUI-64 with dashes", "02-00-5e-ff-fe-10-00-01", ""},
		{"20-octet InfiniBand", "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01", ""},
		{"five octets", "02:00:5e:10:00", ""},
		{"short octets", "2:0:5e:10:0:1", ""},
		{"dotted Cisco form", "0200.5e10.0001", ""},
		{"mixed separators", "02:00-5e:10:00:01", ""},
		{"no separators", "02005e100001", ""},
		{"not hex", "02:00:5e:10:00:0g", ""},
		{"surrounding space", " 02:00:5e:10:00:01", ""},
		{"trailing separator", "02:00:5e:10:00:01:", ""},
		{"empty", "", ""},
		{"garbage", "hello, world", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := cradle.NormalizeMAC(tt.in)
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Errorf("NormalizeMAC(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("NormalizeMAC(%q) = %q, want an error", tt.in, got)
			}
			want := fmt.Sprintf("invalid MAC address %q: use six hex octets such as 02:00:5e:10:00:01", tt.in)
			checkErrExact(t, err, want)
		})
	}
}

func TestValidateLabels(t *testing.T) {
	many := map[string]string{}
	for i := range cradle.MaxLabels {
		many[fmt.Sprintf("k%d", i)] = "v"
	}
	tooMany := map[string]string{"extra": ""}
	for k, v := range many {
		tooMany[k] = v
	}
	tests := []struct {
		name   string
		labels map[string]string
		want   string // substring of the message; "" for valid
	}{
		{"nil", nil, ""},
		{"simple", map[string]string{"env": "prod", "site": "Berlin Mitte"}, ""},
		{"key punctuation", map[string]string{"cradle.io/ring_1-a": "x"}, ""},
		{"empty value", map[string]string{"gpu": ""}, ""},
		{"unicode value", map[string]string{"city": "Zürich"}, ""},
		{"63-character key", map[string]string{strings.Repeat("k", 63): ""}, ""},
		{"256-byte value", map[string]string{"k": strings.Repeat("v", 256)}, ""},
		{"64 labels", many, ""},
		{"65 labels", tooMany, "too many labels: 65, at most 64"},
		{"empty key", map[string]string{"": "x"}, `invalid label key ""`},
		{"64-character key", map[string]string{strings.Repeat("k", 64): ""}, "invalid label key"},
		{"key ends with a dot", map[string]string{"env.": "x"}, `invalid label key "env."`},
		{"key starts with a slash", map[string]string{"/env": "x"}, `invalid label key "/env"`},
		{"key with a space", map[string]string{"e nv": "x"}, `invalid label key "e nv"`},
		{"key with =", map[string]string{"a=b": "x"}, `invalid label key "a=b"`},
		{"257-byte value", map[string]string{"k": strings.Repeat("v", 257)}, `invalid value for label "k": use at most 256 printable characters`},
		{"value with a newline", map[string]string{"k": "a\nb"}, `invalid value for label "k"`},
		{"value with DEL", map[string]string{"k": "a\x7fb"}, `invalid value for label "k"`},
		{"value not UTF-8", map[string]string{"k": "\xff"}, `invalid value for label "k"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, cradle.ValidateLabels(tt.labels), tt.want)
		})
	}
}

func TestDeviceCreateNormalize(t *testing.T) {
	valid := func() cradle.DeviceCreate {
		return cradle.DeviceCreate{Serial: "SN-0001", Model: "gw-200"}
	}
	with := func(f func(*cradle.DeviceCreate)) cradle.DeviceCreate {
		c := valid()
		f(&c)
		return c
	}
	seventeen := make([]string, 17)
	for i := range seventeen {
		seventeen[i] = fmt.Sprintf("02:00:00:00:00:%02x", i)
	}
	tests := []struct {
		name    string
		in      cradle.DeviceCreate
		want    cradle.DeviceCreate // when wantErr is ""
		wantErr string              // the whole message
	}{
		{
			name: "minimal gets defaults",
			in:   valid(),
			want: cradle.DeviceCreate{Serial: "SN-0001", Model: "gw-200", MACs: []string{}, Labels: map[string]string{}, State: "factory"},
		},
		{
			name: "everything",
			in: cradle.DeviceCreate{Serial: "SN-2", HardwareUID: "04:A3:9F uid 7", MACs: []string{"02-00-5E-10-00-01", "02:00:5e:10:00:02"},
				Model: "gw-200", HardwareRevision: "rev.B+1", Labels: map[string]string{"env": "prod"}, State: "provisioned"},
			want: cradle.DeviceCreate{Serial: "SN-2", HardwareUID: "04:A3:9F uid 7", MACs: []string{"02:00:5e:10:00:01", "02:00:5e:10:00:02"},
				Model: "gw-200", HardwareRevision: "rev.B+1", Labels: map[string]string{"env": "prod"}, State: "provisioned"},
		},
		{name: "bad serial", in: with(func(c *cradle.DeviceCreate) { c.Serial = "" }), wantErr: "serial is required"},
		{
			name:    "hardware_uid with surrounding space",
			in:      with(func(c *cradle.DeviceCreate) { c.HardwareUID = " uid" }),
			wantErr: `invalid hardware_uid " uid": use at most 128 printable characters without surrounding spaces`,
		},
		{
			name:    "hardware_uid with a control character",
			in:      with(func(c *cradle.DeviceCreate) { c.HardwareUID = "u\x00id" }),
			wantErr: `invalid hardware_uid "u\x00id": use at most 128 printable characters without surrounding spaces`,
		},
		{name: "hardware_uid of 128", in: with(func(c *cradle.DeviceCreate) { c.HardwareUID = strings.Repeat("u", 128) }),
			want: with(func(c *cradle.DeviceCreate) {
				c.HardwareUID, c.MACs, c.Labels, c.State = strings.Repeat("u", 128), []string{}, map[string]string{}, "factory"
			})},
		{
			name:    "hardware_uid of 129",
			in:      with(func(c *cradle.DeviceCreate) { c.HardwareUID = strings.Repeat("u", 129) }),
			wantErr: fmt.Sprintf("invalid hardware_uid %q: use at most 128 printable characters without surrounding spaces", strings.Repeat("u", 129)),
		},
		{name: "no model", in: with(func(c *cradle.DeviceCreate) { c.Model = "" }), wantErr: "model is required"},
		{
			name:    "model with a space",
			in:      with(func(c *cradle.DeviceCreate) { c.Model = "gw 200" }),
			wantErr: `invalid model "gw 200": use 1 to 64 letters, digits, '.', '_', '-', '+', starting with a letter or digit`,
		},
		{
			name:    "model of 65",
			in:      with(func(c *cradle.DeviceCreate) { c.Model = strings.Repeat("m", 65) }),
			wantErr: fmt.Sprintf("invalid model %q: use 1 to 64 letters, digits, '.', '_', '-', '+', starting with a letter or digit", strings.Repeat("m", 65)),
		},
		{
			name:    "model starts with +",
			in:      with(func(c *cradle.DeviceCreate) { c.Model = "+gw" }),
			wantErr: `invalid model "+gw": use 1 to 64 letters, digits, '.', '_', '-', '+', starting with a letter or digit`,
		},
		{
			name:    "revision of 33",
			in:      with(func(c *cradle.DeviceCreate) { c.HardwareRevision = strings.Repeat("r", 33) }),
			wantErr: fmt.Sprintf("invalid hardware_revision %q: use 1 to 32 letters, digits, '.', '_', '-', '+', starting with a letter or digit", strings.Repeat("r", 33)),
		},
		{
			name:    "bad MAC",
			in:      with(func(c *cradle.DeviceCreate) { c.MACs = []string{"02:00:5e:10:00:01", "02:00:5e:10:00:01:02:03"} }),
			wantErr: `invalid MAC address "02:00:5e:10:00:01:02:03": use six hex octets such as 02:00:5e:10:00:01`,
		},
		{
			name:    "same MAC twice in different spelling",
			in:      with(func(c *cradle.DeviceCreate) { c.MACs = []string{"02:00:5e:10:00:01", "02-00-5E-10-00-01"} }),
			wantErr: "MAC address 02:00:5e:10:00:01 is listed twice",
		},
		{
			name:    "too many MACs",
			in:      with(func(c *cradle.DeviceCreate) { c.MACs = seventeen }),
			wantErr: "too many MAC addresses: 17, at most 16",
		},
		{
			name:    "bad label",
			in:      with(func(c *cradle.DeviceCreate) { c.Labels = map[string]string{"-x": ""} }),
			wantErr: `invalid label key "-x": use 1 to 63 letters, digits, '.', '_', '-', '/', starting and ending with a letter or digit`,
		},
		{
			name:    "created deployed",
			in:      with(func(c *cradle.DeviceCreate) { c.State = "deployed" }),
			wantErr: `invalid initial state "deployed": a device is created in state factory or provisioned`,
		},
		{
			name:    "unknown state",
			in:      with(func(c *cradle.DeviceCreate) { c.State = "new" }),
			wantErr: `invalid initial state "new": a device is created in state factory or provisioned`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.in
			err := c.Normalize()
			checkErrExact(t, err, tt.wantErr)
			if tt.wantErr != "" || err != nil {
				return
			}
			if diff := cmp.Diff(tt.want, c); diff != "" {
				t.Errorf("Normalize (-want +got):\n%s", diff)
			}
			again := c
			if err := again.Normalize(); err != nil {
				t.Fatalf("second Normalize: %v", err)
			}
			if diff := cmp.Diff(c, again); diff != "" {
				t.Errorf("Normalize is not idempotent (-first +second):\n%s", diff)
			}
		})
	}
	t.Run("every initial state", func(t *testing.T) {
		for _, s := range cradle.States {
			c := with(func(c *cradle.DeviceCreate) { c.State = s })
			err := c.Normalize()
			if initial := s == "factory" || s == "provisioned"; initial != (err == nil) {
				t.Errorf("created in %s: err %v", s, err)
			}
		}
	})
}

func TestDeviceUpdateValidate(t *testing.T) {
	tests := []struct {
		name string
		u    cradle.DeviceUpdate
		want string
	}{
		{"set", cradle.DeviceUpdate{SetLabels: map[string]string{"env": "prod"}}, ""},
		{"remove", cradle.DeviceUpdate{RemoveLabels: []string{"env"}}, ""},
		{"both on different keys", cradle.DeviceUpdate{SetLabels: map[string]string{"a": "1"}, RemoveLabels: []string{"b"}}, ""},
		{"nothing", cradle.DeviceUpdate{}, "nothing to update: give set_labels or remove_labels"},
		{"empty collections", cradle.DeviceUpdate{SetLabels: map[string]string{}, RemoveLabels: []string{}}, "nothing to update"},
		{"bad set key", cradle.DeviceUpdate{SetLabels: map[string]string{"a b": "1"}}, `invalid label key "a b"`},
		{"bad value", cradle.DeviceUpdate{SetLabels: map[string]string{"a": "\n"}}, `invalid value for label "a"`},
		{"bad remove key", cradle.DeviceUpdate{RemoveLabels: []string{"-a"}}, `invalid label key "-a"`},
		{"set and removed", cradle.DeviceUpdate{SetLabels: map[string]string{"a": "1"}, RemoveLabels: []string{"a"}}, `label "a" is both set and removed`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, tt.u.Validate(), tt.want)
		})
	}
}

func TestSortedLabelKeys(t *testing.T) {
	got := cradle.SortedLabelKeys(map[string]string{"b": "", "a/x": "", "B": "", "a": ""})
	if diff := cmp.Diff([]string{"B", "a", "a/x", "b"}, got); diff != "" {
		t.Errorf("SortedLabelKeys (-want +got):\n%s", diff)
	}
	if got := cradle.SortedLabelKeys(nil); len(got) != 0 {
		t.Errorf("SortedLabelKeys(nil) = %v", got)
	}
}

// FuzzDeviceCreateNormalize decodes a JSON device request as the API and the
// JSON-lines import do, and checks that Normalize either refuses it with
// EINVALID or leaves it in canonical form, which a second Normalize keeps.
func FuzzDeviceCreateNormalize(f *testing.F) {
	for _, s := range []string{
		`{"serial":"SN-1","model":"gw"}`,
		`{"serial":"SN-1","model":"gw","macs":["02-00-5E-10-00-01","02:00:5e:10:00:02"],"labels":{"env":"prod"},"state":"provisioned"}`,
		`{"serial":"SN-1","model":"gw","macs":["02:00:5e:10:00:01","02-00-5E-10-00-01"]}`,
		`{"serial":"SN-1","model":"gw","macs":["02:00:5e:10:00:01:02:03"]}`,
		`{"serial":"SN-1","model":"gw","hardware_uid":" x","hardware_revision":"B"}`,
		`{"serial":"SN-1","model":"gw","labels":{"":""},"state":"eol"}`,
		`{"serial":"SN-1","model":"gw","labels":null,"macs":null}`,
		`{"serial":"SN-\u00e9","model":"gw"}`,
		`{"serial":1}`, `{"unknown":true}`, `null`, `[]`, ``, `{`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var c cradle.DeviceCreate
		if err := cradle.DecodeStrictJSON(data, &c); err != nil {
			if code := cradle.ErrorCode(err); code != cradle.EINVALID {
				t.Fatalf("DecodeStrictJSON(%q): code %q, want %q", data, code, cradle.EINVALID)
			}
			return
		}
		if err := c.Normalize(); err != nil {
			if code := cradle.ErrorCode(err); code != cradle.EINVALID {
				t.Fatalf("Normalize(%q): code %q, want %q", data, code, cradle.EINVALID)
			}
			return
		}
		checkNormalized(t, c)
	})
}

// checkNormalized checks that c is in the canonical form Normalize promises
// and that normalizing it again changes nothing.
func checkNormalized(t *testing.T, c cradle.DeviceCreate) {
	t.Helper()
	if c.MACs == nil || c.Labels == nil {
		t.Fatalf("normalized device has nil collections: %+v", c)
	}
	if c.State != cradle.StateFactory && c.State != cradle.StateProvisioned {
		t.Fatalf("normalized device in state %q", c.State)
	}
	for _, m := range c.MACs {
		if n, err := cradle.NormalizeMAC(m); err != nil || n != m {
			t.Fatalf("normalized device has MAC %q (NormalizeMAC: %q, %v)", m, n, err)
		}
	}
	again := c
	again.MACs = append([]string(nil), c.MACs...)
	again.Labels = map[string]string{}
	for k, v := range c.Labels {
		again.Labels[k] = v
	}
	if err := again.Normalize(); err != nil {
		t.Fatalf("a normalized device fails Normalize: %v (%+v)", err, c)
	}
	if diff := cmp.Diff(c, again); diff != "" {
		t.Fatalf("Normalize changed a normalized device (-first +second):\n%s", diff)
	}
}

// checkErrExact checks that err is nil when want is empty, and otherwise an
// EINVALID error whose message is want.
func checkErrExact(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" {
		if err != nil {
			t.Errorf("unexpected error: %v", err)
		}
		return
	}
	if err == nil {
		t.Errorf("no error; want %q", want)
		return
	}
	if code := cradle.ErrorCode(err); code != cradle.EINVALID {
		t.Errorf("code %q, want %q (%v)", code, cradle.EINVALID, err)
	}
	if msg := cradle.ErrorMessage(err); msg != want {
		t.Errorf("message:\n got %s\nwant %s", msg, want)
	}
}
