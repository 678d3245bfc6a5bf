package agent

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"cradle/internal/agent/hw"
)

// The attestation routes of the device listener (internal/attest has the
// protocol; the agent cannot import it, so the bodies are restated here).
const (
	attestStartPath  = "/device/v1/attestation/start"
	attestFinishPath = "/device/v1/attestation/finish"
)

// Attester is a key store that can prove its keys are in a TPM
// (hw.TPMKeyStore). Identity attests with it before enrolling when the
// unit's key store is one; other key stores are never attested.
type Attester interface {
	EndorsementCertificate(ctx context.Context) ([]byte, error)
	CreateAttestationKey(ctx context.Context) (*hw.AttestationKey, error)
	Certify(ctx context.Context, ak *hw.AttestationKey, keyName string, nonce []byte) (*hw.Certification, error)
	ActivateCredential(ctx context.Context, ak *hw.AttestationKey, ekCert, blob, encSecret []byte) ([]byte, error)
}

var _ Attester = (*hw.TPMKeyStore)(nil)

// AttestationError is the server's refusal of an attestation: its HTTP
// status and its code and message.
type AttestationError struct {
	Step       string // "start" or "finish"
	StatusCode int
	Code       string
	Message    string
}

func (e *AttestationError) Error() string {
	return fmt.Sprintf("agent: attestation %s refused (%d %s): %s", e.Step, e.StatusCode, e.Code, e.Message)
}

// Attested reports whether the server verified the unit's TPM
// attestation: the security state's "attested" (telemetry
// security.attested).
func (id *Identity) Attested() bool { return id.state.Attestation != nil }

// attest runs TPM attestation when the key store is an Attester and the
// unit is not attested yet: EK certificate and a new AK to the server
// (start), then TPM2_Certify of the IDevID's key with the server's nonce
// and TPM2_ActivateCredential of its challenge (finish). The verdict is
// stored in the state (saved with the enrollment that follows). A TPM
// without an EK certificate, or a server that attests nothing (501),
// lets the unit enroll unattested, as it could never be otherwise; any
// other failure (a refusal, the network, the TPM) is returned, and the
// enrollment waits and retries.
func (id *Identity) attest(ctx context.Context, f *factory, chain [][]byte, key crypto.Signer, now time.Time) error {
	a, ok := id.opts.Device.Keys.(Attester)
	if !ok || id.state.Attestation != nil {
		return nil
	}
	ek, err := a.EndorsementCertificate(ctx)
	if errors.Is(err, hw.ErrNotFound) {
		// Nothing to attest with, now or later: enroll unattested.
		id.opts.Logger.Warn("the TPM holds no EK certificate: enrolling without attestation", "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("agent: attestation: %w", err)
	}
	ak, err := a.CreateAttestationKey(ctx)
	if err != nil {
		return fmt.Errorf("agent: attestation: %w", err)
	}
	hc, tr := id.httpClient(f, chain, key, now)
	defer tr.CloseIdleConnections()

	var ch struct {
		Session         string `json:"session"`
		Nonce           []byte `json:"nonce"`
		CredentialBlob  []byte `json:"credential_blob"`
		EncryptedSecret []byte `json:"encrypted_secret"`
	}
	start := map[string][]byte{"ek_certificate": ek, "ak_public": ak.Public}
	err = id.postJSON(ctx, hc, "start", attestStartPath, start, &ch)
	var ae *AttestationError
	if errors.As(err, &ae) && ae.StatusCode == http.StatusNotImplemented {
		id.opts.Logger.Warn("the server does not attest TPMs: enrolling without attestation", "err", err)
		return nil
	}
	if err != nil {
		return err
	}
	cert, err := a.Certify(ctx, ak, id.opts.IDevIDKey, ch.Nonce)
	if err != nil {
		return fmt.Errorf("agent: attestation: %w", err)
	}
	secret, err := a.ActivateCredential(ctx, ak, ek, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		return fmt.Errorf("agent: attestation: %w", err)
	}
	finish := map[string]any{"session": ch.Session, "key_public": cert.KeyPublic, "certify_info": cert.Info,
		"signature": cert.Signature, "secret": secret}
	var res Attestation
	if err := id.postJSON(ctx, hc, "finish", attestFinishPath, finish, &res); err != nil {
		return err
	}
	id.state.Attestation = &res
	id.opts.Logger.Info("TPM attestation verified by the server", "ek_sha256", res.EKCertificate, "ak_name", res.AKName)
	return nil
}

// postJSON posts in to the server at path and decodes a 200 answer into
// out; another answer is an *AttestationError.
func (id *Identity) postJSON(ctx context.Context, hc *http.Client, step, path string, in, out any) error {
	body, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("agent: attestation %s: %w", step, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(id.opts.ServerURL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("agent: attestation %s: %w", step, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("agent: attestation %s: %w", step, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("agent: attestation %s: read the answer: %w", step, err)
	}
	if resp.StatusCode != http.StatusOK {
		e := &AttestationError{Step: step, StatusCode: resp.StatusCode}
		var je struct{ Code, Message string }
		if json.Unmarshal(b, &je) == nil && je.Message != "" {
			e.Code, e.Message = je.Code, je.Message
		} else {
			e.Message = strings.TrimSpace(string(b))
		}
		return e
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("agent: attestation %s: the server's answer does not parse: %w", step, err)
	}
	return nil
}
