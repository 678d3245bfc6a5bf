package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/agent"
	"cradle/internal/agent/hw"
	"cradle/internal/attest"
	"cradle/internal/pki"
	"cradle/internal/testkit"
)

// TestTPMAttestationEndToEnd: a unit whose IDevID key is in swtpm, with an
// EK certificate from a test TPM maker in NV, against the real server
// trusting that maker (device.tpm_ek_roots). A tampered certify, a wrong
// secret and a replayed session are refused (403, 400) and audited; then
// the agent's Identity attests and enrolls, the device shows "attested"
// in `cradle device show` and the agent's state says so. A server that
// does not trust the maker refuses the EK certificate.
func TestTPMAttestationEndToEnd(t *testing.T) {
	sw := testkit.StartSWTPM(t)
	maker := testkit.NewTPMManufacturer(t, "Test TPM Maker")
	sw.ProvisionEKCertificate(t, maker)
	rootsFile := filepath.Join(t.TempDir(), "ek-roots.pem")
	os.WriteFile(rootsFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: maker.Root.Raw}), 0o600)
	s := startPKIServer(t, func(cfg *Config) {
		cfg.Device.MQTTListen = ""
		cfg.Device.TPMEKRoots = rootsFile
	})
	m, dataDir, api, line := s.m, s.dataDir, s.api, s.line

	// The unit: IDevID key in the TPM, IDevID from the manufacturing CA,
	// factory data and lifecycle fuse as the station leaves them.
	const serial = "SN-TPM-1"
	unitDir := filepath.Join(t.TempDir(), "unit")
	dev, err := hw.CreateSimDevice(unitDir, "UID-0000TPM1")
	if err != nil {
		t.Fatal(err)
	}
	tpmKeys := hw.NewTPMKeyStore(hw.TPMTCP(sw.Addr), filepath.Join(unitDir, "tpm"))
	dev.Keys = tpmKeys
	ctx := t.Context()
	devKey, err := tpmKeys.CreateKey(ctx, agent.DefaultKeyName, "")
	if err != nil {
		t.Fatal(err)
	}
	h, keys, closeKeys, err := openPKI(ctx, dataDir, noPrompt(), pki.NameManufacturingCA, pki.NameServer)
	if err != nil {
		t.Fatal(err)
	}
	defer closeKeys()
	idevid, err := pki.Issue(ctx, h.ManufacturingCA, keys[pki.NameManufacturingCA], devKey.Public(), &x509.Certificate{},
		pki.IDevID(pki.IDevIDConfig{Organization: "Acme"}, serial, nil, time.Now())...)
	if err != nil {
		t.Fatal(err)
	}
	if err := dev.FactoryData.Write(ctx, map[string][]byte{
		agent.FactoryFileIDevID: certsPEM(idevid, h.ManufacturingCA), agent.FactoryFileRoot: certsPEM(h.Root),
		agent.FactoryFileDeviceInfo: []byte(`{"serial":"` + serial + `"}`),
	}); err != nil {
		t.Fatal(err)
	}
	w, _ := hw.LifecycleWord(hw.LifecycleProvisioned)
	if err := dev.Fuses.Program(ctx, hw.FuseLifecycle, w); err != nil {
		t.Fatal(err)
	}
	idevFile := filepath.Join(t.TempDir(), "idevid.pem")
	os.WriteFile(idevFile, certsPEM(idevid), 0o600)
	ok(t, append([]string{"device", "create", "--serial", serial, "--model", "gw-100"}, line...)...)
	ok(t, append([]string{"pki", "record", "--device", serial, idevFile}, line...)...)
	ok(t, append([]string{"device", "transition", serial, "provisioned"}, line...)...)
	if out := ok(t, append([]string{"device", "show", serial}, api...)...); !strings.Contains(out, "not attested") {
		t.Errorf("device show before attestation:\n%s", out)
	}

	// A raw client with the IDevID, to send what the agent would not.
	pool := x509.NewCertPool()
	pool.AddCert(h.Root)
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		Certificates: []tls.Certificate{{Certificate: [][]byte{idevid.Raw, h.ManufacturingCA.Raw}, PrivateKey: devKey}}}}}
	post := func(path string, in, out any) (int, string) {
		t.Helper()
		b, _ := json.Marshal(in)
		resp, err := client.Post(m.device.Addr()+path, "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == http.StatusOK && out != nil {
			if err := json.Unmarshal(body, out); err != nil {
				t.Fatalf("%s answered %s: %v", path, body, err)
			}
		}
		return resp.StatusCode, string(body)
	}
	ek, err := tpmKeys.EndorsementCertificate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		certify *hw.Certification
		secret  []byte
		ch      attest.Challenge
	}
	challenge := func() answer {
		t.Helper()
		ak, err := tpmKeys.CreateAttestationKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var a answer
		if status, body := post("/device/v1/attestation/start", attest.StartRequest{EKCertificate: ek, AKPublic: ak.Public}, &a.ch); status != http.StatusOK {
			t.Fatalf("start: %d %s", status, body)
		}
		if a.certify, err = tpmKeys.Certify(ctx, ak, agent.DefaultKeyName, a.ch.Nonce); err != nil {
			t.Fatal(err)
		}
		if a.secret, err = tpmKeys.ActivateCredential(ctx, ak, ek, a.ch.CredentialBlob, a.ch.EncryptedSecret); err != nil {
			t.Fatal(err)
		}
		return a
	}
	finish := func(a answer) attest.FinishRequest {
		return attest.FinishRequest{Session: a.ch.Session, KeyPublic: a.certify.KeyPublic, CertifyInfo: a.certify.Info,
			Signature: a.certify.Signature, Secret: a.secret}
	}
	refusals := []struct {
		name   string
		change func(*attest.FinishRequest)
		status int
		msg    string
	}{
		{"tampered certify", func(r *attest.FinishRequest) {
			r.CertifyInfo = bytes.Clone(r.CertifyInfo)
			r.CertifyInfo[len(r.CertifyInfo)-1] ^= 1
		}, http.StatusForbidden, "does not verify with the AK"},
		{"wrong secret", func(r *attest.FinishRequest) {
			r.Secret = bytes.Clone(r.Secret)
			r.Secret[0] ^= 1
		}, http.StatusForbidden, "the activated credential is wrong"},
	}
	for _, rf := range refusals {
		a := challenge()
		req := finish(a)
		rf.change(&req)
		if status, body := post("/device/v1/attestation/finish", req, nil); status != rf.status || !strings.Contains(body, rf.msg) {
			t.Errorf("%s: finish answered %d %s, want %d saying %q", rf.name, status, body, rf.status, rf.msg)
		}
		// The session is spent: the right answer now is a replay.
		if status, body := post("/device/v1/attestation/finish", finish(a), nil); status != http.StatusBadRequest || !strings.Contains(body, "unknown, used") {
			t.Errorf("%s: replayed finish answered %d %s", rf.name, status, body)
		}
	}
	if d := decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", serial, "--json"}, api...)...)); d.Device.Labels["attested"] != "" {
		t.Fatalf("refused attestations left labels %v", d.Device.Labels)
	}
	audit := ok(t, append([]string{"audit", "list", "--json"}, api...)...)
	if n := strings.Count(audit, "device.attestation.refused"); n != 4 {
		t.Errorf("%d device.attestation.refused entries in the audit log, want 4", n)
	}

	// The agent, first against a server (with this PKI's server
	// certificate) that refuses the attestation: the failure is reported,
	// nothing is enrolled, and the step is retried after a backoff.
	refusing := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/device/v1/attestation/start" {
			http.Error(w, "unexpected "+r.URL.Path, http.StatusTeapot)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte(`{"code":"forbidden","message":"attestation: the EK certificate does not chain"}`))
	}))
	refusing.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{h.Server.Raw}, PrivateKey: keys[pki.NameServer]}}}
	refusing.StartTLS()
	defer refusing.Close()
	state := t.TempDir()
	now := time.Now()
	id, err := agent.OpenIdentity(agent.IdentityOptions{Device: dev, StateDir: state, ServerURL: refusing.URL,
		Backoff: agent.Backoff{Base: time.Minute, Max: time.Minute}}, now)
	if err != nil {
		t.Fatal(err)
	}
	if id.Attested() {
		t.Fatal("a new identity says it is attested")
	}
	next, err := id.Step(ctx, now)
	var ae *agent.AttestationError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusForbidden || !strings.Contains(ae.Message, "does not chain") {
		t.Fatalf("step against a refusing server: %v", err)
	}
	if st := id.State(); st.Status != agent.StatusUnenrolled || st.Failures != 1 || !next.After(now) || next.After(now.Add(time.Minute+time.Second)) || id.Attested() {
		t.Fatalf("after a refused attestation: status %s, failures %d, next %v (now %v), attested %v", st.Status, st.Failures, next, now, id.Attested())
	}

	// A server that attests nothing (501) lets the unit go on to EST
	// unattested: here the next thing it asks for, /cacerts, fails.
	notImpl := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/device/v1/attestation/start" {
			writeDeviceError(w, nil, cradle.Errorf(cradle.ENOTIMPLEMENTED, "TPM attestation is not configured"))
			return
		}
		http.Error(w, "no EST here", http.StatusServiceUnavailable)
	}))
	notImpl.TLS = refusing.TLS
	notImpl.StartTLS()
	defer notImpl.Close()
	plain, err := agent.OpenIdentity(agent.IdentityOptions{Device: dev, StateDir: t.TempDir(), ServerURL: notImpl.URL}, now)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Step(ctx, now); err == nil || errors.As(err, &ae) || !strings.Contains(err.Error(), "cacerts") || plain.Attested() {
		t.Fatalf("step against a server without attestation: %v (attested %v); want a cacerts failure", err, plain.Attested())
	}

	// Then against the real server, at the retry time.
	id, err = agent.OpenIdentity(agent.IdentityOptions{Device: dev, StateDir: state, ServerURL: m.device.Addr()}, next)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := id.Step(ctx, next); err != nil {
		t.Fatalf("attest and enroll: %v", err)
	}
	if st := id.State(); !id.Attested() || st.Status != agent.StatusEnrolled || st.Attestation.Method != "tpm" {
		t.Fatalf("agent state after the step: %s, attestation %+v", st.Status, st.Attestation)
	}
	b, _ := os.ReadFile(filepath.Join(state, agent.StateFile))
	if !strings.Contains(string(b), `"attestation"`) {
		t.Errorf("the state file does not record the attestation:\n%s", b)
	}
	d := decodeJSON[deviceDetail](t, ok(t, append([]string{"device", "show", serial, "--json"}, api...)...))
	if d.Device.Labels["attested"] != "tpm" || d.Device.State != cradle.StateDeployed {
		t.Errorf("after the agent's step the device is %s with labels %v", d.Device.State, d.Device.Labels)
	}
	if out := ok(t, append([]string{"device", "show", serial}, api...)...); !regexp.MustCompile(`attestation:\s+tpm \(`).MatchString(out) {
		t.Errorf("device show does not say attested:\n%s", out)
	}

	// A server that trusts another maker refuses this TPM's EK.
	other := testkit.NewTPMManufacturer(t, "Other Maker")
	otherFile := filepath.Join(t.TempDir(), "other.pem")
	os.WriteFile(otherFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: other.Root.Raw}), 0o600)
	roots, _, err := loadEKRoots(otherFile)
	if err != nil {
		t.Fatal(err)
	}
	v := &attest.Verifier{Roots: roots}
	ak, _ := tpmKeys.CreateAttestationKey(ctx)
	if _, err := v.Start(serial, attest.StartRequest{EKCertificate: ek, AKPublic: ak.Public}); cradle.ErrorCode(err) != cradle.EFORBIDDEN {
		t.Errorf("a verifier trusting another maker: %v", err)
	}
}

// TestAttestationNotConfigured: without device.tpm_ek_roots, start
// answers 501 not_implemented before reading anything.
func TestAttestationNotConfigured(t *testing.T) {
	h := &attestationHandler{verifier: &attest.Verifier{}}
	rec := httptest.NewRecorder()
	h.start(rec, httptest.NewRequest(http.MethodPost, "/device/v1/attestation/start", strings.NewReader("{}")))
	if rec.Code != http.StatusNotImplemented || !strings.Contains(rec.Body.String(), `"code":"not_implemented"`) {
		t.Errorf("start without roots answered %d %s", rec.Code, rec.Body)
	}
	if _, _, err := loadEKRoots(""); err != nil {
		t.Errorf("loadEKRoots(\"\"): %v", err)
	}
	bad := filepath.Join(t.TempDir(), "leaf.pem")
	os.WriteFile(bad, []byte("not pem"), 0o600)
	if _, _, err := loadEKRoots(bad); err == nil || !strings.Contains(err.Error(), "no self-signed CA certificate") {
		t.Errorf("loadEKRoots of a file without a root: %v", err)
	}
}
