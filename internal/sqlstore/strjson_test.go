package sqlstore

import (
	"encoding/json"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzStringJSON holds the fast decoders of the macs and labels columns
// equal to encoding/json on any input: the same value, or both an error.
func FuzzStringJSON(f *testing.F) {
	for _, s := range []string{
		`[]`, `{}`, `["02:00:5e:10:00:01","02:00:5e:10:00:02"]`, `{"site":"berlin","tier":"edge"}`,
		`["a\"b"]`, `{"k":"\u00e9"}`, `[ "a" ]`, `{"a":"1","a":"2"}`, `["a",]`, `{"a":1}`, "[\"\xff\"]", `null`, `["é"]`, `[""]`, `{"":""}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var wantL []string
		errL := json.Unmarshal(b, &wantL)
		gotL, err := decodeStringList(b)
		if (err != nil) != (errL != nil) || (err == nil && !cmp.Equal(wantL, gotL, cmpEmpty)) {
			t.Errorf("list %q: got %q, %v; encoding/json %q, %v", b, gotL, err, wantL, errL)
		}
		var wantM map[string]string
		errM := json.Unmarshal(b, &wantM)
		gotM, err := decodeStringMap(b)
		if (err != nil) != (errM != nil) || (err == nil && !cmp.Equal(wantM, gotM, cmpEmpty)) {
			t.Errorf("map %q: got %q, %v; encoding/json %q, %v", b, gotM, err, wantM, errM)
		}
	})
}

// cmpEmpty treats nil and empty alike: the callers replace nil with empty.
var cmpEmpty = cmp.FilterValues(func(x, y any) bool {
	return isEmpty(x) && isEmpty(y)
}, cmp.Comparer(func(_, _ any) bool { return true }))

func isEmpty(v any) bool {
	switch v := v.(type) {
	case []string:
		return len(v) == 0
	case map[string]string:
		return len(v) == 0
	}
	return false
}
