package cradle_test

import (
	"strings"
	"testing"

	"cradle"
)

func TestReleaseCreateValidate(t *testing.T) {
	sum := strings.Repeat("ab", 32)
	good := cradle.ReleaseCreate{Model: "gw-1", Version: "1.2.3+4", HardwareRevisions: []string{"B1", "B2"}, Kind: cradle.ReleaseMCUboot,
		SHA256: sum, Size: 1, FileName: "gw-1.2.3.bin", SecurityCounter: 5, Notes: "notes", ImageKey: sum}
	revs := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "r" + strings.Repeat("x", i)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		edit func(*cradle.ReleaseCreate)
		msg  string // "" means valid
	}{
		{"good", func(*cradle.ReleaseCreate) {}, ""},
		{"every kind", func(c *cradle.ReleaseCreate) { c.Kind, c.ImageKey = cradle.ReleaseSWUpdate, "" }, ""},
		{"no revisions", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = nil }, ""},
		{"most revisions", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = revs(cradle.MaxHardwareRevs) }, ""},
		{"longest version", func(c *cradle.ReleaseCreate) { c.Version = strings.Repeat("9", cradle.MaxReleaseVersion) }, ""},
		{"longest file name", func(c *cradle.ReleaseCreate) { c.FileName = strings.Repeat("f", cradle.MaxReleaseFileName) }, ""},
		{"unicode file name", func(c *cradle.ReleaseCreate) { c.FileName = "Firmware für B2.bin" }, ""},
		{"longest notes", func(c *cradle.ReleaseCreate) { c.Notes = strings.Repeat("n", cradle.MaxReleaseNotes) }, ""},
		{"no model", func(c *cradle.ReleaseCreate) { c.Model = "" }, "model is required"},
		{"model starts with dash", func(c *cradle.ReleaseCreate) { c.Model = "-gw" }, `invalid model "-gw"`},
		{"no version", func(c *cradle.ReleaseCreate) { c.Version = "" }, "version is required"},
		{"version with space", func(c *cradle.ReleaseCreate) { c.Version = "1 2" }, `invalid version "1 2"`},
		{"version too long", func(c *cradle.ReleaseCreate) { c.Version = strings.Repeat("9", cradle.MaxReleaseVersion+1) }, "invalid version"},
		{"too many revisions", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = revs(cradle.MaxHardwareRevs + 1) }, "33 revisions, at most 32"},
		{"duplicate revision", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = []string{"B1", "B1"} }, `"B1" is listed twice`},
		{"revision too long", func(c *cradle.ReleaseCreate) {
			c.HardwareRevisions = []string{strings.Repeat("r", cradle.MaxRevisionLen+1)}
		}, "invalid hardware revision"},
		{"empty kind", func(c *cradle.ReleaseCreate) { c.Kind = "" }, `invalid kind ""`},
		{"unknown kind", func(c *cradle.ReleaseCreate) { c.Kind = "MCUBOOT" }, `invalid kind "MCUBOOT"`},
		{"empty sha256", func(c *cradle.ReleaseCreate) { c.SHA256 = "" }, `invalid sha256 ""`},
		{"sha256 too long", func(c *cradle.ReleaseCreate) { c.SHA256 = sum + "0" }, "invalid sha256"},
		{"upper-case sha256", func(c *cradle.ReleaseCreate) { c.SHA256 = strings.ToUpper(sum) }, "64 lower-case hex digits"},
		{"zero size", func(c *cradle.ReleaseCreate) { c.Size = 0 }, "invalid size 0"},
		{"no file name", func(c *cradle.ReleaseCreate) { c.FileName = "" }, "file_name is required"},
		{"path as file name", func(c *cradle.ReleaseCreate) { c.FileName = "../../etc/passwd" }, "invalid file_name"},
		{"dot-dot file name", func(c *cradle.ReleaseCreate) { c.FileName = ".." }, "invalid file_name"},
		{"backslash in file name", func(c *cradle.ReleaseCreate) { c.FileName = `..\x` }, "invalid file_name"},
		{"control character in file name", func(c *cradle.ReleaseCreate) { c.FileName = "a\tb" }, "invalid file_name"},
		{"DEL in file name", func(c *cradle.ReleaseCreate) { c.FileName = "a\x7fb" }, "invalid file_name"},
		{"trailing space in file name", func(c *cradle.ReleaseCreate) { c.FileName = "a.bin " }, "invalid file_name"},
		{"file name too long", func(c *cradle.ReleaseCreate) { c.FileName = strings.Repeat("f", cradle.MaxReleaseFileName+1) }, "invalid file_name"},
		{"notes too long", func(c *cradle.ReleaseCreate) { c.Notes = strings.Repeat("n", cradle.MaxReleaseNotes+1) }, "invalid notes"},
		{"notes not UTF-8", func(c *cradle.ReleaseCreate) { c.Notes = "\xff" }, "invalid notes"},
		{"image key on a mender artifact", func(c *cradle.ReleaseCreate) { c.Kind = cradle.ReleaseMender }, "only an MCUboot image"},
		{"image key not a digest", func(c *cradle.ReleaseCreate) { c.ImageKey = "key-1" }, `invalid image_key "key-1"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.HardwareRevisions = append([]string(nil), good.HardwareRevisions...)
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.msg == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.msg == "":
			case cradle.ErrorCode(err) != cradle.EINVALID:
				t.Fatalf("Validate = %v, want EINVALID", err)
			case !strings.Contains(cradle.ErrorMessage(err), tc.msg):
				t.Fatalf("Validate = %q, want it to mention %q", cradle.ErrorMessage(err), tc.msg)
			}
		})
	}
}

func TestValidateTargetPath(t *testing.T) {
	for _, tc := range []struct {
		path string
		ok   bool
	}{
		{"gw-1/1.0/fw.bin", true},
		{"fw.bin", true},
		{"gw-1/1.0/fw.bin.from-0.9.zst", true},
		{"", false},
		{"/gw-1/fw.bin", false},
		{"gw-1/fw.bin/", false},
		{"gw-1//fw.bin", false},
		{"gw-1/./fw.bin", false},
		{"gw-1/../fw.bin", false},
		{`gw-1\fw.bin`, false},
		{"gw-1/f\nw.bin", false},
		{strings.Repeat("a", cradle.MaxTargetPath), true},
		{strings.Repeat("a", cradle.MaxTargetPath+1), false},
	} {
		err := cradle.ValidateTargetPath("target_path", tc.path)
		if tc.ok != (err == nil) {
			t.Errorf("ValidateTargetPath(%q) = %v, want ok=%v", tc.path, err, tc.ok)
		}
		if err != nil && (cradle.ErrorCode(err) != cradle.EINVALID || !strings.Contains(cradle.ErrorMessage(err), "invalid target_path")) {
			t.Errorf("ValidateTargetPath(%q) = %v: want EINVALID naming target_path", tc.path, err)
		}
	}
}
