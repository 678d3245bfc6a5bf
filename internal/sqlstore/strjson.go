package sqlstore

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"
)

// The macs and labels columns hold JSON that the store wrote itself with
// json.Marshal: compact, and almost always without escapes. A device
// lookup decodes both, and encoding/json's reflection was a tenth of its
// time, so these decoders slice the common form directly and leave
// anything else (escapes, spaces, odd bytes) to encoding/json. A fuzz test
// holds them equal to encoding/json.

// decodeStringList decodes a JSON array of strings.
func decodeStringList(b []byte) ([]string, error) {
	if out, ok := fastStringList(b); ok {
		return out, nil
	}
	var out []string
	err := json.Unmarshal(b, &out)
	return out, err
}

// decodeStringMap decodes a JSON object of strings.
func decodeStringMap(b []byte) (map[string]string, error) {
	if out, ok := fastStringMap(b); ok {
		return out, nil
	}
	var out map[string]string
	err := json.Unmarshal(b, &out)
	return out, err
}

func fastStringList(b []byte) ([]string, bool) {
	if len(b) < 2 || b[0] != '[' || b[len(b)-1] != ']' {
		return nil, false
	}
	b = b[1 : len(b)-1]
	out := make([]string, 0, bytes.Count(b, []byte{','})+1)
	if len(b) == 0 {
		return out, true
	}
	for {
		s, rest, ok := plainString(b)
		if !ok {
			return nil, false
		}
		out = append(out, s)
		if len(rest) == 0 {
			return out, true
		}
		if rest[0] != ',' {
			return nil, false
		}
		b = rest[1:]
	}
}

func fastStringMap(b []byte) (map[string]string, bool) {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return nil, false
	}
	b = b[1 : len(b)-1]
	out := make(map[string]string, bytes.Count(b, []byte{':'}))
	if len(b) == 0 {
		return out, true
	}
	for {
		k, rest, ok := plainString(b)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return nil, false
		}
		v, rest, ok := plainString(rest[1:])
		if !ok {
			return nil, false
		}
		out[k] = v // a repeated key: the last wins, as in encoding/json
		if len(rest) == 0 {
			return out, true
		}
		if rest[0] != ',' {
			return nil, false
		}
		b = rest[1:]
	}
}

// plainString reads a JSON string without escapes or control characters
// at the start of b and returns it and the rest of b.
func plainString(b []byte) (string, []byte, bool) {
	if len(b) == 0 || b[0] != '"' {
		return "", nil, false
	}
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			s := b[1:i]
			if !utf8.Valid(s) {
				return "", nil, false
			}
			return string(s), b[i+1:], true
		case c == '\\' || c < 0x20:
			return "", nil, false
		}
	}
	return "", nil, false
}
