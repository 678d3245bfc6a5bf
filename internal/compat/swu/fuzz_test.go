package swu_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	"cradle"
	"cradle/internal/compat/swu"
)

// FuzzParse feeds arbitrary archives to Parse: it must never panic, and
// must refuse with a cradle error or return an image whose payloads all
// match sw-description.
func FuzzParse(f *testing.F) {
	pki := newPKI(f, "fuzz")
	spec := swu.Spec{Version: "1.0", HardwareCompatibility: []string{"1.0"}}
	f.Add(build(f, spec, sources("/d", "a", "alpha", "b", ""), pki.Signer))
	src := sources("/d", "p", "data")
	src[0].Entry.SHA256 = sha("data")
	f.Add(cpioOf(f, [][2]string{{"sw-description", string(swu.Describe(spec, src))}, {"p", "data"}}))
	f.Add(cpioOf(f, [][2]string{{"sw-description", `{"software":{"version":"1","files":[{"filename":"p","sha256":"` + sha("data") + `"}]}}`}, {"p", "data"}}))
	f.Add([]byte("070701"))
	f.Fuzz(func(t *testing.T, b []byte) {
		img, err := swu.Parse(bytes.NewReader(b), swu.Options{})
		if err != nil {
			var ce *cradle.Error
			if !errors.As(err, &ce) {
				t.Fatalf("Parse returned a non-cradle error: %v", err)
			}
			return
		}
		want := map[string]string{}
		for _, e := range img.Description.Entries {
			want[e.Filename] = e.SHA256
		}
		for _, p := range img.Payloads {
			if want[p.Name] != p.SHA256 {
				t.Fatalf("payload %s accepted with sha256 %s, sw-description says %s", p.Name, p.SHA256, want[p.Name])
			}
		}
	})
}

// FuzzParseSWDescription feeds arbitrary documents to ParseDescription:
// no panics, only cradle errors, and a description that parses renders
// (Describe) into one that parses to the same facts.
func FuzzParseSWDescription(f *testing.F) {
	f.Add([]byte(fmt.Sprintf(handDesc, sha("a"), sha("b"), sha("c"))))
	f.Add([]byte(`software = { version = "1"; x = 0x1F; y = -3L; z = 1.5e3; b = TRUE; s = "a" "b\x41\n"; l = ( 1, "two", [ 3, 4 ], ); };`))
	f.Add([]byte(`{"software":{"version":"1","hardware-compatibility":["1.0"],"images":[{"filename":"x","sha256":"` + sha("x") + `"}]}}`))
	f.Add([]byte("# comment\n// comment\n/* block\n */ software: {};"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		d, err := swu.ParseDescription(doc)
		if err != nil {
			var ce *cradle.Error
			if !errors.As(err, &ce) {
				t.Fatalf("ParseDescription returned a non-cradle error: %v", err)
			}
			return
		}
		var src []swu.Source
		for _, e := range d.Entries {
			if e.Filename == "" {
				continue
			}
			e.Path = ""
			src = append(src, swu.Source{Entry: e})
		}
		again, err := swu.ParseDescription(swu.Describe(swu.Spec{Version: d.Version, Description: d.Description, HardwareCompatibility: d.HardwareCompatibility}, src))
		if err != nil {
			t.Fatalf("Describe of a parsed description does not parse: %v", err)
		}
		if again.Version != d.Version || again.Description != d.Description || len(again.HardwareCompatibility) != len(d.HardwareCompatibility) {
			t.Fatalf("round trip changed the description: %+v vs %+v", again, d)
		}
	})
}
