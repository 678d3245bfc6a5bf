package hw

import (
	"encoding/json"
	"reflect"
	"testing"
)

// FuzzParseTPMIndex: the index parser never panics, and what it accepts
// survives a write and a read unchanged.
func FuzzParseTPMIndex(f *testing.F) {
	f.Add([]byte(`{"version":1,"keys":{}}`))
	f.Add([]byte(`{"version":1,"keys":{"idevid":{"handle":2164326400,"name":"000b0123456789abcdef"}}}`))
	f.Add([]byte(`{"version":1,"keys":{"a":{"handle":2164326400,"name":"000b00"},"b":{"handle":2164326400,"name":"000b00"}}}`))
	f.Add([]byte(`{"version":2,"keys":{}}`))
	f.Add([]byte(`{"version":1,"keys":{"../x":{"handle":2164326401,"name":"000b00"}}}`))
	f.Add([]byte(`{"version":1}{}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		idx, err := parseTPMIndex(data)
		if err != nil {
			return
		}
		out, err := json.Marshal(idx)
		if err != nil {
			t.Fatalf("marshal a parsed index: %v", err)
		}
		idx2, err := parseTPMIndex(out)
		if err != nil {
			t.Fatalf("reparse %s: %v", out, err)
		}
		if !reflect.DeepEqual(idx, idx2) {
			t.Fatalf("round trip changed the index: %+v, then %+v", idx, idx2)
		}
	})
}
