package agent_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"cradle"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

var rotationDevices = flag.Int("rotation-devices", 200, "units of TestDeviceCARotationTwoYears (-short: a quarter)")

// TestDeviceCARotationTwoYears: a fleet (-rotation-devices, 200 by
// default) enrolls and then lives two years on an injected clock moved in
// steps of at most a day, each unit renewing its 90-day LDevID at two
// thirds of its life through the real agent identity and the real EST
// stack. On day 365 the device CA is rotated (Hierarchy.RotateDeviceCA,
// what cradle pki rotate-device-ca runs). At every step every unit holds
// a certificate valid at that moment, issued by a CA the listener accepts.
// Retiring the old CA is refused with the count of certificates that
// still depend on it until the last one expires; the store's count is
// checked at every step, and the CA is retired at the first step where it
// is zero. At the end every unit's certificate is from the new CA, the
// old CA is neither in EST cacerts nor an accepted issuer, its CRL is
// still published, and a certificate minted with its key is refused by
// the device listener.
func TestDeviceCARotationTwoYears(t *testing.T) {
	units := *rotationDevices
	if testing.Short() {
		units = max(units/4, 1)
	}
	const (
		lifetime = 90 * 24 * time.Hour
		horizon  = 730 * 24 * time.Hour
		maxStep  = 24 * time.Hour
	)
	s := newESTStack(t, pki.LDevIDPolicy{Lifetime: lifetime})
	store := s.auth.CAStore.(*sqlstore.CertificateService)
	ctx := context.Background()
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "test"))
	start := s.clock.Now()
	rotateAt := start.Add(horizon / 2)
	end := start.Add(horizon)
	oldCA := s.h.DeviceCA()
	oldName := s.h.DeviceCAName()

	began := time.Now()
	ids := s.openFleet(t, units, start, 7)
	provisioned := time.Since(began)

	// verified caches, by serial, that a certificate chains to the root
	// through the CA it names (checked once; its validity period and
	// its CA's acceptance are checked at every step).
	verified := map[string]*x509.Certificate{}
	checkHolds := func(i int, now time.Time) {
		t.Helper()
		st := ids[i].State()
		if st.Current == nil {
			t.Fatalf("unit %d holds no LDevID at %s (status %s, last error %q)", i, now, st.Status, st.LastError)
		}
		c := leaf(t, st)
		if now.Before(c.NotBefore) || !now.Before(c.NotAfter) {
			t.Fatalf("unit %d: its LDevID %s is not valid at %s (valid %s to %s)", i, cradle.SerialHex(c.SerialNumber), now, c.NotBefore, c.NotAfter)
		}
		var issuer *x509.Certificate
		for _, ca := range s.h.AcceptedCAs() {
			if bytes.Equal(ca.RawSubject, c.RawIssuer) {
				issuer = ca
			}
		}
		if issuer == nil {
			t.Fatalf("unit %d at %s: its LDevID's issuer %s is no CA the listener accepts", i, now, c.Issuer)
		}
		key := cradle.SerialHex(c.SerialNumber)
		if verified[key] == nil {
			roots, inter := x509.NewCertPool(), x509.NewCertPool()
			roots.AddCert(s.h.Root)
			inter.AddCert(issuer)
			if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Fatalf("unit %d at %s: %v", i, now, err)
			}
			verified[key] = c
		}
	}

	next := make([]time.Time, units)
	for i := range next {
		next[i] = start
	}
	var (
		events, steps, refusal int
		firstErr               error
		rotated, retiredAt     time.Time
		newName                string
	)
	now := start
	for now.Before(end) {
		// The next step: the earliest unit due, a day at most, the
		// rotation, and the end; units due within the same hour step
		// together at its end.
		step := now.Add(maxStep)
		for _, n := range next {
			if n.Before(step) {
				step = n
			}
		}
		if rotated.IsZero() && rotateAt.Before(step) {
			step = rotateAt
		}
		step = step.Add(time.Hour - 1).Truncate(time.Hour)
		if step.After(end) {
			step = end
		}
		if !step.After(now) {
			step = now.Add(time.Hour)
		}
		now = step
		s.setClock(now)
		events++
		if rotated.IsZero() && !now.Before(rotateAt) {
			newName = s.rotate()
			rotated = now
			t.Logf("day %d: device CA rotated: %s → %s", int(now.Sub(start)/(24*time.Hour)), oldName, newName)
		}

		steps += stepDue(ctx, ids, next, now, func(i int, err error) {
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("unit %d at %s: %w", i, now, err)
			}
		})
		if firstErr != nil {
			t.Fatal(firstErr)
		}
		for i := range ids {
			checkHolds(i, now)
		}

		// The retirement check, at every step after the rotation.
		if !rotated.IsZero() && retiredAt.IsZero() {
			n, last, err := store.CertificateDependents(sys, fmt.Sprintf("%x", oldCA.SubjectKeyId), now)
			if err != nil {
				t.Fatal(err)
			}
			err = s.h.RetireDeviceCA(oldName, pki.Dependents{Live: n, LastExpiry: last}, now)
			switch {
			case n > 0 && err == nil:
				t.Fatalf("day %d: %s retired while %d certificates depend on it", int(now.Sub(start)/(24*time.Hour)), oldName, n)
			case n > 0:
				if !strings.Contains(err.Error(), fmt.Sprintf("%d unexpired, unrevoked certificate(s)", n)) {
					t.Fatalf("refusal without the count %d: %v", n, err)
				}
				if refusal == 0 {
					t.Logf("day %d: retire refused: %v", int(now.Sub(start)/(24*time.Hour)), err)
				}
				refusal++
			case err != nil:
				t.Fatal(err)
			default:
				retiredAt = now
				t.Logf("day %d: %s retired, no valid certificate depends on it", int(now.Sub(start)/(24*time.Hour)), oldName)
			}
		}
	}
	elapsed := time.Since(began) - provisioned

	if retiredAt.IsZero() {
		t.Fatalf("%s was never retired", oldName)
	}
	if refusal == 0 {
		t.Fatalf("retiring %s was never refused: the check tested nothing", oldName)
	}
	renewals, fromNew := 0, 0
	newCA := s.h.DeviceCA()
	for i, id := range ids {
		st := id.State()
		renewals += st.KeySeq - 1
		if c := leaf(t, st); bytes.Equal(c.RawIssuer, newCA.RawSubject) {
			fromNew++
		} else {
			t.Errorf("unit %d ends with a certificate issued by %s", i, c.Issuer)
		}
	}
	if fromNew != units {
		t.Fatalf("%d of %d units hold a certificate of %s", fromNew, units, newName)
	}
	if min := units * (int(horizon/(lifetime/3*2)) - 1); renewals < min {
		t.Errorf("%d renewals for %d units, want at least %d", renewals, units, min)
	}
	for _, c := range s.h.CACerts() {
		if bytes.Equal(c.Raw, oldCA.Raw) {
			t.Error("EST cacerts still serves the retired CA")
		}
	}
	if _, ok := s.h.AcceptedCAs()[oldName]; ok {
		t.Error("the retired CA is still an accepted issuer")
	}
	// Its CRL is still published (the CA certificate has not expired).
	if crl, err := s.auth.CRL(ctx, oldName); err != nil || len(crl) == 0 {
		t.Errorf("the retired CA's CRL: %v", err)
	} else if l, err := x509.ParseRevocationList(crl); err != nil || l.CheckSignatureFrom(oldCA) != nil {
		t.Errorf("the retired CA's CRL does not parse or is not signed by it: %v", err)
	}

	// A certificate minted with the retired CA's key, recorded as if an
	// insider had slipped it into the store, is refused by the listener.
	minted := s.mint(t, oldCA, s.keys[oldName], "SN-00000")
	code, body := s.reenroll(t, minted)
	if code != http.StatusUnauthorized || !strings.Contains(body, "retired") {
		t.Fatalf("a certificate of the retired CA: %d %s, want 401 saying it is retired", code, body)
	}
	t.Logf("%d units, %s of virtual time in %d steps: %d renewals (+%d enrollments), %d identity steps; rotation on day %d, %s retired on day %d (refused %d times before); every unit on %s; provisioning %s, run %s",
		units, horizon, events, renewals, units, steps, int(rotated.Sub(start)/(24*time.Hour)), oldName, int(retiredAt.Sub(start)/(24*time.Hour)), refusal,
		newName, provisioned.Round(time.Millisecond), elapsed.Round(time.Millisecond))
}

// mint issues an LDevID for serial with ca's key outside the server
// and records it in the store.
func (s *estStack) mint(t *testing.T, ca *x509.Certificate, key crypto.Signer, serial string) tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	c, err := pki.Issue(context.Background(), ca, key, k.Public(), &x509.Certificate{},
		append(pki.LDevID(pki.LDevIDPolicy{Lifetime: 30 * 24 * time.Hour}, "default", serial, s.clock.Now()), pki.KeyPolicy())...)
	if err != nil {
		t.Fatal(err)
	}
	factory := cradle.NewContextWithActor(context.Background(), cradle.Actor{TenantID: 1, Role: cradle.RoleFactory, Kind: "test", ID: "line-1"})
	if _, err := s.certs.RecordCertificate(factory, serial, cradle.CertLDevID, c); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{c.Raw, ca.Raw}, PrivateKey: k, Leaf: c}
}

// reenroll posts an (empty) EST simplereenroll with cert as the client
// certificate, at the stack's clock, and returns the status and body.
func (s *estStack) reenroll(t *testing.T, cert tls.Certificate) (int, string) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(s.h.Root)
	now := s.clock.Now()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: roots, Certificates: []tls.Certificate{cert}, Time: func() time.Time { return now },
	}}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Post(s.url+"/.well-known/est/simplereenroll", "application/pkcs10", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
