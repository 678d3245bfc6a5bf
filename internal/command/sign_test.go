package command_test

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/pki"
)

func TestSignEnvelope(t *testing.T) {
	h := hierarchy(t, "prod")
	env := h.sign(t, cmd(3))
	var e map[string]json.RawMessage
	if err := json.Unmarshal(env, &e); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"payload", "signature", "chain"} {
		if _, ok := e[k]; !ok || len(e) != 3 {
			t.Fatalf("envelope members %v; want exactly payload, signature, chain", e)
		}
	}
	var parsed command.Envelope
	if err := json.Unmarshal(env, &parsed); err != nil {
		t.Fatal(err)
	}
	if len(parsed.Chain) != 1 || string(parsed.Chain[0]) != string(h.h.CommandSigner.Raw) {
		t.Errorf("chain is not [command signer DER]")
	}
	var c map[string]any
	if err := json.Unmarshal(parsed.Payload, &c); err != nil {
		t.Fatal(err)
	}
	if c["device"] != serial || c["kind"] != "reboot" || c["sequence"] != 3.0 || c["issued_at"] != "2026-03-01T13:00:00Z" {
		t.Errorf("payload %s", parsed.Payload)
	}
}

func TestSignRefuses(t *testing.T) {
	h := hierarchy(t, "prod")
	chain := []*x509.Certificate{h.h.CommandSigner}
	bad := func(f func(*command.Command)) command.Command {
		c := cmd(1)
		f(&c)
		return c
	}
	tests := []struct {
		name    string
		cmd     command.Command
		key     crypto.Signer
		chain   []*x509.Certificate
		wantMsg string
	}{
		{"no id", bad(func(c *command.Command) { c.ID = "" }), h.signer(), chain, "command id"},
		{"id with a space", bad(func(c *command.Command) { c.ID = "a b" }), h.signer(), chain, "command id"},
		{"bad serial", bad(func(c *command.Command) { c.Device = "-x" }), h.signer(), chain, "command device"},
		{"unknown kind", bad(func(c *command.Command) { c.Kind = "explode" }), h.signer(), chain, "command kind"},
		{"args not an object", bad(func(c *command.Command) { c.Args = json.RawMessage(`"x"`) }), h.signer(), chain, "args"},
		{"sequence 0", bad(func(c *command.Command) { c.Sequence = 0 }), h.signer(), chain, "sequence 0"},
		{"no expiry", bad(func(c *command.Command) { c.ExpiresAt = time.Time{} }), h.signer(), chain, "expires_at"},
		{"expires before issue", bad(func(c *command.Command) { c.ExpiresAt = c.IssuedAt }), h.signer(), chain, "not after issued_at"},
		{"wrong key", cmd(1), newKey(t), chain, "not the key of the command signer"},
		{"server certificate", cmd(1), h.keys[pki.NameServer], []*x509.Certificate{h.h.Server}, "command signing extended key usage"},
		{"no chain", cmd(1), h.signer(), nil, "chain of 0"},
		{"oversize", bad(func(c *command.Command) {
			c.Args = json.RawMessage(`{"blob":"` + strings.Repeat("a", command.MaxEnvelopeSize) + `"}`)
		}), h.signer(), chain, "over the"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env, err := command.Sign(tc.cmd, tc.key, tc.chain)
			if err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("Sign = %v; want an error containing %q", err, tc.wantMsg)
			}
			if env != nil {
				t.Error("Sign returned an envelope with its error")
			}
		})
	}
	if _, err := command.Sign(bad(func(c *command.Command) { c.Kind = "x" }), h.signer(), chain); cradle.ErrorCode(err) != cradle.EINVALID {
		t.Errorf("invalid command: code %q; want EINVALID", cradle.ErrorCode(err))
	}
}

func TestResult(t *testing.T) {
	at := time.Date(2026, 3, 1, 13, 2, 0, 0, time.UTC)
	done := command.Result{CommandID: "cmd-1", Sequence: 1, Status: command.StatusDone, At: at}
	b, err := json.Marshal(done)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"command_id":"cmd-1","sequence":1,"status":"done","at":"2026-03-01T13:02:00Z"}`; string(b) != want {
		t.Errorf("JSON %s; want %s", b, want)
	}
	got, err := command.ParseResult(b)
	if err != nil || *got != done {
		t.Errorf("ParseResult = %+v, %v", got, err)
	}
	unauth := command.Refused(&command.VerifyError{Reason: command.ErrBadSignature, Detail: "x"}, at)
	ub, _ := json.Marshal(unauth)
	if r, err := command.ParseResult(ub); err != nil || r.CommandID != "" || r.Status != command.StatusRefused {
		t.Errorf("refusal of an unauthenticated envelope: %+v, %v", r, err)
	}
	for name, doc := range map[string]string{
		"unknown status":    `{"command_id":"c","sequence":1,"status":"ok","at":"2026-03-01T13:02:00Z"}`,
		"done with error":   `{"command_id":"c","sequence":1,"status":"done","error":"x","at":"2026-03-01T13:02:00Z"}`,
		"failed, no error":  `{"command_id":"c","sequence":1,"status":"failed","at":"2026-03-01T13:02:00Z"}`,
		"done, no id":       `{"sequence":1,"status":"done","at":"2026-03-01T13:02:00Z"}`,
		"no time":           `{"command_id":"c","sequence":1,"status":"done"}`,
		"unknown field":     `{"command_id":"c","sequence":1,"status":"done","at":"2026-03-01T13:02:00Z","x":1}`,
		"negative sequence": `{"command_id":"c","sequence":-1,"status":"done","at":"2026-03-01T13:02:00Z"}`,
		"oversize":          `{"command_id":"c","error":"` + strings.Repeat("e", command.MaxResultSize) + `"}`,
		"not JSON":          `done`,
	} {
		if _, err := command.ParseResult([]byte(doc)); cradle.ErrorCode(err) != cradle.EINVALID {
			t.Errorf("%s: ParseResult error %v; want EINVALID", name, err)
		}
	}
	if !errors.Is(&command.VerifyError{Reason: command.ErrReplay}, command.ErrReplay) {
		t.Error("VerifyError does not unwrap to its reason")
	}
}
