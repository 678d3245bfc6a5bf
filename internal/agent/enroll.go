package agent

import (
	"bytes"
	"context"
	"crypto"
	cryptorand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"cradle"
	"cradle/internal/agent/hw"
	"cradle/internal/est"
)

// The files of the factory data partition the agent reads. They are the
// factory station's identity bundle: internal/factory's FileIDevID,
// FileRoot and FileDeviceInfo (the agent cannot import the station).
const (
	FactoryFileIDevID     = "idevid.pem"  // the IDevID, then the manufacturing CA
	FactoryFileRoot       = "root.pem"    // the trust anchor
	FactoryFileDeviceInfo = "device.json" // {"serial": …, …}
)

// ErrNotProvisioned: the unit lacks what the factory gives it (factory
// data, the IDevID key) or its lifecycle fuses forbid enrolling.
var ErrNotProvisioned = errors.New("agent: unit not provisioned for enrollment")

// Backoff shapes the retries after a failure: the n-th consecutive
// failure waits a uniformly random time in (0, min(Max, Base·2^(n−1))]
// ("full jitter"), or the server's Retry-After if that is longer. The
// zero value means Base one minute, Max six hours.
type Backoff struct {
	Base, Max time.Duration
}

// Delay returns the wait after the failures-th consecutive failure, drawn
// with r.
func (b Backoff) Delay(failures int, r interface{ Int64N(int64) int64 }) time.Duration {
	base, max := b.Base, b.Max
	if base <= 0 {
		base = time.Minute
	}
	if max <= 0 {
		max = 6 * time.Hour
	}
	d := max
	if failures < 1 {
		failures = 1
	}
	if failures <= 62 && base <= max>>(failures-1) {
		d = base << (failures - 1)
	}
	return time.Duration(r.Int64N(int64(d))) + 1
}

// IdentityOptions configures OpenIdentity.
type IdentityOptions struct {
	// Device is the unit; required.
	Device *hw.Device
	// StateDir holds StateFile; required.
	StateDir string
	// ServerURL is the device listener's base URL ("https://host:8443");
	// EST lives under it at /.well-known/est/. Required.
	ServerURL string
	// IDevIDKey names the IDevID's key; "" means DefaultKeyName.
	IDevIDKey string
	// KeyAlgorithm is the LDevID keys' algorithm; "" means ECDSA P-256.
	KeyAlgorithm hw.Algorithm
	// Backoff shapes retries; see Backoff for the zero value.
	Backoff Backoff
	// Guard is the restart-loop guard; see RestartGuard for the zero
	// value.
	Guard RestartGuard
	// Rand draws the jitter; nil means math/rand/v2's global source.
	// Inject a seeded *rand.Rand for a reproducible simulation.
	Rand interface{ Int64N(int64) int64 }
	// RequestTimeout bounds each exchange with the server; 0 means one
	// minute.
	RequestTimeout time.Duration
	// Logger receives a line per enrollment, renewal, failure and hold;
	// nil discards.
	Logger *slog.Logger
}

// Identity keeps a unit's operational identity: it enrolls, renews and
// recovers, one Step at a time, on a clock the caller drives (the real
// clock in cradle-agent, a virtual one in the simulator). An Identity is
// not safe for concurrent use; run one per unit and state directory.
type Identity struct {
	opts  IdentityOptions
	state *State
}

type globalRand struct{}

func (globalRand) Int64N(n int64) int64 { return rand.Int64N(n) }

// OpenIdentity loads the state in opts.StateDir (NewState when there is
// none) and records this start at now for the restart guard. When the
// guard trips, the state says so (HoldUntil) and Step holds off; the
// start is logged either way. It fails when the options are incomplete or
// the state cannot be read or written.
func OpenIdentity(opts IdentityOptions, now time.Time) (*Identity, error) {
	switch {
	case opts.Device == nil || opts.Device.Keys == nil || opts.Device.FactoryData == nil || opts.Device.Fuses == nil:
		return nil, errors.New("agent: identity: no device, or a device without key store, fuses or factory data")
	case opts.StateDir == "":
		return nil, errors.New("agent: identity: no state directory")
	case opts.ServerURL == "":
		return nil, errors.New("agent: identity: no server URL; set the device listener's address (https://host:8443)")
	}
	if opts.IDevIDKey == "" {
		opts.IDevIDKey = DefaultKeyName
	}
	if opts.Rand == nil {
		opts.Rand = globalRand{}
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := LoadState(opts.StateDir)
	if err != nil {
		return nil, err
	}
	id := &Identity{opts: opts, state: s}
	if opts.Guard.recordStart(s, now) {
		opts.Logger.Error("restart loop: holding off", "err", restartLoopError(opts.Guard, s.HoldUntil))
	}
	if err := SaveState(opts.StateDir, s); err != nil {
		return nil, err
	}
	return id, nil
}

// State returns a copy of the current state.
func (id *Identity) State() State {
	s := *id.state
	s.Starts = append([]time.Time(nil), s.Starts...)
	return s
}

// Certificate returns the current LDevID as a TLS client certificate
// (with its issuing CA) for the device channels, or an error wrapping
// hw.ErrNotFound while the unit is not enrolled.
func (id *Identity) Certificate(ctx context.Context) (tls.Certificate, error) {
	if id.state.Current == nil {
		return tls.Certificate{}, fmt.Errorf("agent: no LDevID yet (status %s): %w", id.state.Status, hw.ErrNotFound)
	}
	return id.tlsCert(ctx, id.state.Current)
}

// Step does what is due at now and returns when to call it next. Due is
// enrollment (unenrolled), confirmation of a freshly stored LDevID,
// renewal (from State.RenewAt), re-enrollment with the IDevID (the LDevID
// expired), or nothing (before State.NextAttempt, or while the restart
// guard holds: then the error wraps ErrRestartLoop). A failed attempt
// changes no working credential; its error is returned with the retry
// time, and a failure that the unit cannot mend itself (no factory data,
// wrong lifecycle) wraps ErrNotProvisioned. The error of a failure to
// write the state is returned with next = now.
func (id *Identity) Step(ctx context.Context, now time.Time) (next time.Time, err error) {
	s := id.state
	if now.Before(s.HoldUntil) {
		return s.HoldUntil, restartLoopError(id.opts.Guard, s.HoldUntil)
	}
	if now.Before(s.NextAttempt) {
		return s.NextAttempt, nil
	}
	switch {
	case s.Status == StatusUnenrolled:
		err = id.obtain(ctx, now, false)
	case s.Status == StatusConfirming:
		var f *factory
		if f, err = id.readFactory(ctx); err == nil {
			err = id.confirm(ctx, f, now)
		}
	case !now.Before(s.Current.NotAfter):
		id.opts.Logger.Warn("LDevID expired; enrolling again with the IDevID", "not_after", s.Current.NotAfter)
		err = id.obtain(ctx, now, false)
	case !now.Before(s.RenewAt):
		err = id.obtain(ctx, now, true)
	default:
		s.NextAttempt = s.RenewAt
		return s.RenewAt, nil
	}
	if err != nil {
		s.Failures++
		s.LastError = err.Error()
		delay := id.opts.Backoff.Delay(s.Failures, id.opts.Rand)
		var se *est.StatusError
		if errors.As(err, &se) && se.RetryAfter > delay {
			delay = se.RetryAfter
		}
		s.NextAttempt = now.Add(delay)
		id.opts.Logger.Warn("identity step failed", "status", s.Status, "failures", s.Failures, "retry_at", s.NextAttempt, "err", err)
		if serr := SaveState(id.opts.StateDir, s); serr != nil {
			return now, errors.Join(err, serr)
		}
		return s.NextAttempt, err
	}
	return s.NextAttempt, nil
}

// factory is what the agent reads from the factory data partition.
type factory struct {
	serial string
	idevid [][]byte // DER: the IDevID, then the manufacturing CA
	roots  *x509.CertPool
	root   *x509.Certificate
}

// readFactory reads and checks the factory data and the lifecycle fuse.
func (id *Identity) readFactory(ctx context.Context) (*factory, error) {
	d := id.opts.Device
	fuses, err := d.Fuses.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: read the fuses: %w", err)
	}
	stage, err := hw.ParseLifecycle(fuses[hw.FuseLifecycle])
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if stage != hw.LifecycleProvisioned && stage != hw.LifecycleDeployed {
		return nil, fmt.Errorf("agent: the lifecycle fuses say %s; a unit enrolls only when %s or %s: %w", stage, hw.LifecycleProvisioned, hw.LifecycleDeployed, ErrNotProvisioned)
	}
	files, _, err := d.FactoryData.Read(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: read the factory data: %w", err)
	}
	f := &factory{}
	chain, err := parseChain(files[FactoryFileIDevID])
	if err != nil {
		return nil, fmt.Errorf("agent: factory data %s: %v: %w", FactoryFileIDevID, err, ErrNotProvisioned)
	}
	roots, err := parseChain(files[FactoryFileRoot])
	if err != nil {
		return nil, fmt.Errorf("agent: factory data %s: %v: %w", FactoryFileRoot, err, ErrNotProvisioned)
	}
	f.root = roots[0]
	f.roots = x509.NewCertPool()
	f.roots.AddCert(f.root)
	for _, c := range chain {
		f.idevid = append(f.idevid, c.Raw)
	}
	var info struct {
		Serial string `json:"serial"`
	}
	if b, ok := files[FactoryFileDeviceInfo]; ok {
		if err := json.Unmarshal(b, &info); err != nil {
			return nil, fmt.Errorf("agent: factory data %s: %v: %w", FactoryFileDeviceInfo, err, ErrNotProvisioned)
		}
	}
	f.serial = info.Serial
	if f.serial == "" {
		f.serial = chain[0].Subject.SerialNumber
	}
	if f.serial == "" {
		return nil, fmt.Errorf("agent: neither %s nor the IDevID names the unit's serial: %w", FactoryFileDeviceInfo, ErrNotProvisioned)
	}
	if sn := chain[0].Subject.SerialNumber; sn != "" && sn != f.serial {
		return nil, fmt.Errorf("agent: %s names serial %q but the IDevID %q: %w", FactoryFileDeviceInfo, f.serial, sn, ErrNotProvisioned)
	}
	return f, nil
}

// client returns an EST client presenting chain (DER) and key, trusting
// only the factory root, verifying at now, and a function that closes its
// connections.
func (id *Identity) client(f *factory, chain [][]byte, key crypto.Signer, now time.Time) (*est.Client, func(), error) {
	hc, tr := id.httpClient(f, chain, key, now)
	c, err := est.NewClient(id.opts.ServerURL, nil, hc)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: %w", err)
	}
	return c, tr.CloseIdleConnections, nil
}

// httpClient is the HTTP client of client: mTLS with chain and key to the
// server, trusting only the factory root, verifying at now.
func (id *Identity) httpClient(f *factory, chain [][]byte, key crypto.Signer, now time.Time) (*http.Client, *http.Transport) {
	cfg := &tls.Config{
		RootCAs:    f.roots,
		MinVersion: tls.VersionTLS12,
		Time:       func() time.Time { return now },
	}
	if key != nil {
		cfg.Certificates = []tls.Certificate{{Certificate: chain, PrivateKey: key}}
	}
	tr := &http.Transport{TLSClientConfig: cfg, Proxy: http.ProxyFromEnvironment, ForceAttemptHTTP2: true,
		TLSHandshakeTimeout: id.opts.RequestTimeout, MaxIdleConnsPerHost: 1}
	return &http.Client{Transport: tr, Timeout: id.opts.RequestTimeout}, tr
}

// obtain gets a new LDevID: by simplereenroll with the current one when
// renew is set, else by simpleenroll with the IDevID. It stores the new
// credential (StatusConfirming, the current one kept as Previous) and
// confirms it.
func (id *Identity) obtain(ctx context.Context, now time.Time, renew bool) error {
	s := id.state
	f, err := id.readFactory(ctx)
	if err != nil {
		return err
	}
	var authChain [][]byte
	var authKey crypto.Signer
	if renew {
		tc, err := id.tlsCert(ctx, s.Current)
		if err != nil {
			return err
		}
		authChain, authKey = tc.Certificate, tc.PrivateKey.(crypto.Signer)
	} else {
		if authKey, err = id.opts.Device.Keys.Key(ctx, id.opts.IDevIDKey); err != nil {
			return fmt.Errorf("agent: the IDevID key %q: %v: %w", id.opts.IDevIDKey, err, ErrNotProvisioned)
		}
		authChain = f.idevid
		// A TPM proves to the server that the IDevID's key is in it before
		// the first enrollment; a failure is retried like one of EST.
		if err := id.attest(ctx, f, authChain, authKey, now); err != nil {
			return err
		}
	}
	c, closeConns, err := id.client(f, authChain, authKey, now)
	if err != nil {
		return err
	}
	defer closeConns()
	cas, err := id.refreshCACerts(ctx, c, f, now)
	if err != nil {
		return err
	}

	// The key name is fixed by the sequence before anything is stored: a
	// key left by a crash at this point is replaced, never leaked.
	keyName := ldevidKeyPrefix + strconv.Itoa(s.KeySeq+1)
	key, err := id.opts.Device.Keys.CreateKey(ctx, keyName, id.opts.KeyAlgorithm)
	if errors.Is(err, hw.ErrExists) {
		if err = id.opts.Device.Keys.DestroyKey(ctx, keyName); err == nil {
			key, err = id.opts.Device.Keys.CreateKey(ctx, keyName, id.opts.KeyAlgorithm)
		}
	}
	if err != nil {
		return fmt.Errorf("agent: create the LDevID key %s: %w", keyName, err)
	}
	stored := false
	defer func() {
		if !stored {
			id.destroyKey(context.WithoutCancel(ctx), keyName)
		}
	}()

	var tmpl *x509.CertificateRequest
	if renew {
		cur, err := parseChain([]byte(s.Current.Chain))
		if err != nil {
			return fmt.Errorf("agent: current LDevID: %w", err)
		}
		tmpl = reenrollTemplate(cur[0])
	} else {
		tmpl = &x509.CertificateRequest{Subject: pkix.Name{CommonName: f.serial, SerialNumber: f.serial}}
	}
	csr, err := x509.CreateCertificateRequest(cryptorand.Reader, tmpl, key)
	if err != nil {
		return fmt.Errorf("agent: sign the CSR with key %s: %w", keyName, err)
	}
	var cert *x509.Certificate
	if renew {
		cert, err = c.SimpleReenroll(ctx, csr)
	} else {
		cert, err = c.SimpleEnroll(ctx, csr)
	}
	if err != nil {
		op := "simpleenroll"
		if renew {
			op = "simplereenroll"
		}
		return fmt.Errorf("agent: %s: %w", op, err)
	}
	chain, err := id.checkLDevID(cert, key.Public(), f, cas, now)
	if err != nil {
		var again []*x509.Certificate
		// A rotation between /cacerts and the answer: fetch once more.
		if again, err = id.refreshCACerts(ctx, c, f, now); err == nil {
			chain, err = id.checkLDevID(cert, key.Public(), f, again, now)
		}
		if err != nil {
			return err
		}
	}
	closeConns()

	cred := &Credential{KeyName: keyName, Chain: string(pemChain(chain)), NotAfter: cert.NotAfter}
	s.Previous = s.Current
	s.Current, s.KeySeq, s.Status = cred, s.KeySeq+1, StatusConfirming
	s.RenewAt = RenewAt(cert)
	if err := SaveState(id.opts.StateDir, s); err != nil {
		return err
	}
	stored = true
	id.opts.Logger.Info("LDevID stored", "renewal", renew, "key", keyName, "serial", cradle.SerialHex(cert.SerialNumber),
		"issuer", cert.Issuer.CommonName, "not_after", cert.NotAfter, "renew_at", s.RenewAt)
	return id.confirm(ctx, f, now)
}

// confirm makes an authenticated request with the current LDevID. When
// the server accepts it, the previous key is destroyed, the lifecycle fuse
// moves to deployed and the status to enrolled. When the server refuses
// it (401), the new credential is dropped and the previous one (or none)
// restored.
func (id *Identity) confirm(ctx context.Context, f *factory, now time.Time) error {
	s := id.state
	tc, err := id.tlsCert(ctx, s.Current)
	if err != nil {
		return err
	}
	c, closeConns, err := id.client(f, tc.Certificate, tc.PrivateKey.(crypto.Signer), now)
	if err != nil {
		return err
	}
	_, err = c.CSRAttrs(ctx)
	closeConns()
	var se *est.StatusError
	if errors.As(err, &se) && se.StatusCode == http.StatusUnauthorized {
		return id.rollback(ctx, err)
	}
	if err != nil {
		return fmt.Errorf("agent: confirm the new LDevID: %w", err)
	}
	if p := s.Previous; p != nil {
		if err := id.opts.Device.Keys.DestroyKey(ctx, p.KeyName); err != nil && !errors.Is(err, hw.ErrNotFound) {
			return fmt.Errorf("agent: destroy the previous LDevID key %s: %w", p.KeyName, err)
		}
	}
	if err := id.markDeployed(ctx); err != nil {
		return err
	}
	s.Previous, s.Status, s.Failures, s.LastError = nil, StatusEnrolled, 0, ""
	s.NextAttempt = s.RenewAt
	if err := SaveState(id.opts.StateDir, s); err != nil {
		return err
	}
	id.opts.Logger.Info("LDevID confirmed", "key", s.Current.KeyName, "renew_at", s.RenewAt)
	return nil
}

// rollback drops a new credential the server refused.
func (id *Identity) rollback(ctx context.Context, cause error) error {
	s := id.state
	dropped := s.Current
	s.Current, s.Previous = s.Previous, nil
	s.Status = StatusEnrolled
	if s.Current == nil {
		s.Status = StatusUnenrolled
		s.RenewAt = time.Time{}
	} else if cs, err := parseChain([]byte(s.Current.Chain)); err == nil {
		s.RenewAt = RenewAt(cs[0])
	}
	if err := SaveState(id.opts.StateDir, s); err != nil {
		return errors.Join(cause, err)
	}
	id.destroyKey(ctx, dropped.KeyName)
	return fmt.Errorf("agent: the server refused the new LDevID (key %s); kept the previous identity: %w", dropped.KeyName, cause)
}

// destroyKey removes a key no credential refers to any more. A failure
// is logged, not returned: the caller's outcome does not depend on it,
// and an unused key left in the store only takes room.
func (id *Identity) destroyKey(ctx context.Context, name string) {
	if err := id.opts.Device.Keys.DestroyKey(ctx, name); err != nil && !errors.Is(err, hw.ErrNotFound) {
		id.opts.Logger.Warn("unused LDevID key not destroyed", "key", name, "err", err)
	}
}

// markDeployed moves the lifecycle fuse from provisioned to deployed.
func (id *Identity) markDeployed(ctx context.Context) error {
	fuses, err := id.opts.Device.Fuses.Read(ctx)
	if err != nil {
		return fmt.Errorf("agent: read the fuses: %w", err)
	}
	if stage, err := hw.ParseLifecycle(fuses[hw.FuseLifecycle]); err != nil || stage != hw.LifecycleProvisioned {
		return nil
	}
	w, err := hw.LifecycleWord(hw.LifecycleDeployed)
	if err == nil {
		err = id.opts.Device.Fuses.Program(ctx, hw.FuseLifecycle, w)
	}
	if err != nil {
		return fmt.Errorf("agent: program the lifecycle fuse to %s: %w", hw.LifecycleDeployed, err)
	}
	return nil
}

// refreshCACerts fetches /cacerts, keeps the CA certificates that chain
// to the factory root at now, and stores them in the state (saved with the next
// SaveState). A server that returns none that chain is an error.
func (id *Identity) refreshCACerts(ctx context.Context, c *est.Client, f *factory, now time.Time) ([]*x509.Certificate, error) {
	got, err := c.CACerts(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent: cacerts: %w", err)
	}
	inter := x509.NewCertPool()
	for _, g := range got {
		inter.AddCert(g)
	}
	// Certificates checked before need no second check.
	known := map[string]bool{}
	if prev, err := parseChain([]byte(id.state.CACerts)); err == nil {
		for _, p := range prev {
			known[string(p.Raw)] = true
		}
	}
	var kept []*x509.Certificate
	for _, g := range got {
		if !g.IsCA || g.Equal(f.root) {
			continue
		}
		if known[string(g.Raw)] && now.Before(g.NotAfter) {
			kept = append(kept, g)
			continue
		}
		if _, err := g.Verify(x509.VerifyOptions{Roots: f.roots, Intermediates: inter, CurrentTime: now,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err == nil {
			kept = append(kept, g)
		}
	}
	if len(kept) == 0 {
		return nil, fmt.Errorf("agent: cacerts returned %d certificates and no CA that chains to the factory root %q; is this the unit's server?", len(got), f.root.Subject.CommonName)
	}
	id.state.CACerts = string(pemChain(kept))
	return kept, nil
}

// checkLDevID checks an issued certificate: the CSR's key, the unit's
// serial, client authentication, and a chain to the factory root through
// cas at now. It returns the chain to present: the LDevID and its issuer.
func (id *Identity) checkLDevID(cert *x509.Certificate, pub crypto.PublicKey, f *factory, cas []*x509.Certificate, now time.Time) ([]*x509.Certificate, error) {
	if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pub) {
		return nil, errors.New("agent: the issued LDevID does not hold the new key")
	}
	if cert.Subject.SerialNumber != f.serial {
		return nil, fmt.Errorf("agent: the issued LDevID names serial %q, this unit is %q", cert.Subject.SerialNumber, f.serial)
	}
	inter := x509.NewCertPool()
	for _, c := range cas {
		inter.AddCert(c)
	}
	at := now
	if at.Before(cert.NotBefore) {
		at = cert.NotBefore // the server's clock is ahead: not our concern here
	}
	chains, err := cert.Verify(x509.VerifyOptions{Roots: f.roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		return nil, fmt.Errorf("agent: the issued LDevID does not chain to the factory root through the server's CA certificates: %w", err)
	}
	chain := chains[0]
	if len(chain) > 1 {
		chain = chain[:len(chain)-1] // the root is the server's already
	}
	return chain, nil
}

// tlsCert returns a credential as a TLS certificate with its key from
// the key store.
func (id *Identity) tlsCert(ctx context.Context, c *Credential) (tls.Certificate, error) {
	chain, err := parseChain([]byte(c.Chain))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: LDevID with key %s: %w", c.KeyName, err)
	}
	key, err := id.opts.Device.Keys.Key(ctx, c.KeyName)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("agent: LDevID key: %w", err)
	}
	tc := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, x := range chain {
		tc.Certificate = append(tc.Certificate, x.Raw)
	}
	return tc, nil
}

var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// reenrollTemplate is the CSR of a renewal: the current certificate's
// subject and subjectAltName as they are (RFC 7030 §3.3.2).
func reenrollTemplate(cur *x509.Certificate) *x509.CertificateRequest {
	tmpl := &x509.CertificateRequest{RawSubject: cur.RawSubject}
	for _, e := range cur.Extensions {
		if e.Id.Equal(oidSubjectAltName) {
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
		}
	}
	return tmpl
}

// RenewAt returns when cert should be renewed: two thirds into its
// lifetime. It is internal/pki's RenewAt, which the agent does not import.
func RenewAt(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 3 * 2)
}

// parseChain parses PEM CERTIFICATE blocks; at least one, nothing else.
func parseChain(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q where a CERTIFICATE was expected", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(b)) > 0 {
		return nil, errors.New("text that is not PEM after the certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM CERTIFICATE")
	}
	return out, nil
}

func pemChain(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
