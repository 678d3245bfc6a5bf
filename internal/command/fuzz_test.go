package command_test

import (
	"encoding/json"
	"errors"
	"testing"

	"cradle/internal/command"
)

var reasons = []error{
	command.ErrTooLarge, command.ErrMalformed, command.ErrUntrustedChain, command.ErrNotCommandSigner,
	command.ErrTestSigner, command.ErrBadSignature, command.ErrForeignDevice, command.ErrExpired,
	command.ErrNotYetValid, command.ErrReplay, command.ErrSequenceStore,
}

// FuzzVerify feeds envelopes to a device. Whatever the input, Verify
// either accepts a valid command for this device and advances the store
// to its sequence, or refuses with one of the sentinels and leaves the
// store alone.
func FuzzVerify(f *testing.F) {
	h := hierarchy(f, "prod")
	valid := h.sign(f, cmd(1))
	f.Add(valid)
	f.Add(tamper(f, valid))
	f.Add(hierarchy(f, "other").sign(f, cmd(1)))
	f.Add([]byte(`{"payload":"e30=","signature":"AA==","chain":["AA=="]}`))
	f.Add([]byte(`{"payload":"","signature":"","chain":[]}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, env []byte) {
		store := &command.MemorySequence{}
		at := now
		got, err := h.verifier(store, &at).Verify(env)
		if err != nil {
			if got != nil {
				t.Fatalf("command returned with error %v", err)
			}
			known := false
			for _, r := range reasons {
				known = known || errors.Is(err, r)
			}
			if !known {
				t.Fatalf("error %v has no known reason", err)
			}
			if store.Last() != 0 {
				t.Fatalf("refusal advanced the store to %d", store.Last())
			}
			return
		}
		if err := got.Validate(); err != nil {
			t.Fatalf("accepted an invalid command: %v", err)
		}
		if got.Device != serial || store.Last() != got.Sequence || !at.Before(got.ExpiresAt) {
			t.Fatalf("accepted %+v with the store at %d", got, store.Last())
		}
	})
}

// FuzzParseResult feeds result documents as a device would send them.
func FuzzParseResult(f *testing.F) {
	f.Add([]byte(`{"command_id":"cmd-1","sequence":1,"status":"done","at":"2026-03-01T13:02:00Z"}`))
	f.Add([]byte(`{"command_id":"cmd-1","sequence":1,"status":"failed","error":"reboot hook exited 1","at":"2026-03-01T13:02:00Z"}`))
	f.Add([]byte(`{"status":"refused","error":"command: bad signature","at":"2026-03-01T13:02:00Z"}`))
	f.Add([]byte(`{"status":"done"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := command.ParseResult(data)
		if err != nil {
			return
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		again, err := command.ParseResult(b)
		if err != nil || again.CommandID != r.CommandID || again.Status != r.Status || again.Error != r.Error || !again.At.Equal(r.At) {
			t.Fatalf("round trip of %+v: %+v, %v", r, again, err)
		}
	})
}
