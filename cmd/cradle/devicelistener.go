package main

import (
	"context"
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/coapapi"
	"cradle/internal/compat/hawkbit"
	"cradle/internal/compat/mender"
	"cradle/internal/compat/tokencache"
	"cradle/internal/deviceapi"
	"cradle/internal/est"
	"cradle/internal/mqttapi"
	"cradle/internal/pki"
	"cradle/internal/pki/ocsp"
	"cradle/internal/sqlstore"
)

// deviceListener is the device-facing HTTPS listener with what it serves:
// EST enrollment (/.well-known/est/), the OCSP responder (/pki/ocsp), CRLs
// and CA certificates (/pki/crl/, /pki/ca/), the device API under
// /device/v1/ (updates and TUF metadata in deviceupdate.go), and artifact
// downloads at signed URLs under /artifacts/ (artifacts.go), and the
// Mender device API under /api/devices/ (mender.go).
type deviceListener struct {
	authority *pki.Authority
	ln        net.Listener
	srv       *http.Server
	done      chan error
	stop      chan struct{}
	refreshed chan struct{}
	logger    *slog.Logger
	mqtt      *mqttapi.Broker // nil when device.mqtt_listen is empty
	coap      *coapapi.Server // nil when device.coap_listen is empty
	commands  *commandRelay
	updates   *deviceUpdates
	// accounting writes artifact downloads to the store; plain is the
	// plain HTTP artifact listener (nil without device.artifact_listen).
	accounting *downloadAccounting
	plain      *artifactListener
	hawkbit    *hawkbit.Handler // nil unless hawkbit.enabled
	mender     *mender.Server   // nil unless mender.enabled
	// protocols is the server's ProtocolService, with its token cache
	// (shared with the operator API, whose revocations flush it).
	protocols *tokencache.Service
	decom     *decommissioning
	// pkiDir is the PKI directory, whose retired.json reloadRetired
	// rereads; retiredSeen is that file's modification time and size
	// when it was last read.
	pkiDir      string
	retiredSeen [2]int64
}

// retiredCheckInterval is how often the listener looks at retired.json
// (its modification time) for a retirement made while it runs.
var retiredCheckInterval = time.Minute

// deviceKeyNames are the keys the server needs from a hierarchy: each
// device CA's, each issuing CA's OCSP signer's, the listener's own and
// the command signer's.
func deviceKeyNames(h *pki.Hierarchy) []string {
	names := []string{pki.NameServer, pki.NameCommandSigner}
	for i := range h.DeviceCAs {
		names = append(names, pki.DeviceCAName(i))
	}
	for name := range h.IssuingCAs() {
		if h.OCSPSigners[name] != nil {
			names = append(names, pki.OCSPNamePrefix+name)
		}
	}
	return names
}

// newDeviceListener builds the listener over db and the PKI (its
// certificates and the keys of deviceKeyNames), listening on
// cfg.Device.Listen. Serve it with start.
func newDeviceListener(ctx context.Context, cfg Config, db *sqlstore.DB, artifacts *artifact.Dir, h *pki.Hierarchy, keys map[string]crypto.Signer, metrics prometheus.Registerer, logger *slog.Logger) (*deviceListener, error) {
	store := sqlstore.NewCertificateService(db)
	tenants := sqlstore.NewTenantService(db)
	production := h.Profile() == pki.ProfileProduction
	var responder *ocsp.Responder
	var names sync.Map // tenant id → name
	d := &deviceListener{done: make(chan error, 1), stop: make(chan struct{}), refreshed: make(chan struct{}), logger: logger, pkiDir: pkiDirOf(cfg.DataDir)}
	d.retiredSeen = retiredStamp(d.pkiDir)
	d.authority = &pki.Authority{
		Hierarchy: h, Signers: keys, Certificates: store, CAStore: store,
		TenantName: func(ctx context.Context, id int64) (string, error) {
			if n, ok := names.Load(id); ok {
				return n.(string), nil
			}
			all, err := tenants.FindTenants(ctx)
			if err != nil {
				return "", err
			}
			for _, t := range all {
				names.Store(t.ID, t.Name)
			}
			if n, ok := names.Load(id); ok {
				return n.(string), nil
			}
			return "", fmt.Errorf("tenant %d not found", id)
		},
		Policy:  pki.LDevIDPolicy{Lifetime: cfg.Device.LDevIDLifetime},
		URLHost: deviceURLHost(cfg, h),
		Logger:  logger,
		// Revocations reach the listener through the store's notifier
		// (d.revocations, revoke.go), which calls Revoked.
		OnRevoke: func(issuer *x509.Certificate, serial *big.Int) { responder.Invalidate(issuer, serial) },
	}
	if err := d.authority.Policy.Validate(); err != nil {
		return nil, fmt.Errorf("serve: device.ldevid_lifetime: %w", err)
	}
	var err error
	responder, err = ocsp.NewResponder(d.authority, d.authority.OCSPIssuers(), ocsp.Options{Logger: logger})
	if err != nil {
		return nil, fmt.Errorf("serve: OCSP responder: %w", err)
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(h.Root)
	for _, c := range h.AcceptedCAs() { // retired device CAs are no issuers
		inter.AddCert(c)
	}
	serverKey := keys[pki.NameServer]
	if serverKey == nil {
		return nil, errors.New("serve: the device listener's key (server) is not loaded")
	}
	audit := sqlstore.NewAuditService(db)
	listener := &deviceapi.Server{
		Certificate: tls.Certificate{Certificate: [][]byte{h.Server.Raw, h.Root.Raw}, PrivateKey: serverKey, Leaf: h.Server},
		Roots:       roots, Intermediates: inter,
		CheckChain: func(c []*x509.Certificate) error {
			if err := pki.CheckProfile(c, production); err != nil {
				return err
			}
			return h.CheckNotRetired(c)
		},
		Certs: store, Devices: sqlstore.NewDeviceService(db), Logger: logger,
		Audit: audit.RecordRefusal,
	}
	// Every refusal of an EST request is audited here, in the device's
	// tenant; those the store decided (a device in the wrong state) are in
	// the log twice, once as the store saw them and once as EST answered.
	estServer := &est.Server{CA: d.authority, Logger: logger, Refused: func(ctx context.Context, r est.Refusal) {
		logger.Warn("EST request refused", "op", r.Op, "status", r.Status, "reason", r.Reason)
		tenant, actor := int64(0), "anonymous"
		if a, ok := cradle.ActorFromContext(ctx); ok {
			tenant, actor = a.TenantID, a.String()
		}
		audit.RecordRefusal(ctx, tenant, actor, cradle.AuditEvent{Action: "est." + r.Op + ".refused", Subject: "est",
			Details: map[string]any{"status": r.Status, "reason": r.Reason}})
	}}
	listener.Handle("GET /.well-known/est/cacerts", estServer, true)
	listener.Handle("GET /.well-known/est/csrattrs", estServer, true)
	listener.Handle("/.well-known/est/", estServer, false)
	listener.Handle("/pki/ocsp", responder, true)
	listener.Handle("/pki/ocsp/", responder, true)
	listener.Handle("/pki/", d.authority.PublicHandler(), true)
	if err := mountAttestation(cfg, listener, sqlstore.NewDeviceService(db), audit.RecordRefusal, logger); err != nil {
		return nil, err
	}
	listener.Handle("POST /device/v1/telemetry", telemetryHandler(sqlstore.NewTelemetryService(db), logger), false)
	if d.commands, err = newCommandRelay(db, h, keys, metrics, logger); err != nil {
		return nil, err
	}
	d.commands.mount(listener)
	d.decom = newDecommissioning(db, d, listener)
	twin, err := newDeviceTwin(db, metrics, logger)
	if err != nil {
		return nil, err
	}
	twin.routes(listener)
	downloads, err := d.mountUpdates(cfg, artifacts, listener, sqlstore.NewUpdateService(db), sqlstore.NewDeviceService(db), metrics)
	if err != nil {
		return nil, err
	}
	d.protocols = tokencache.Wrap(sqlstore.NewProtocolService(db).SetMenderAutoAdmit(cfg.Mender.AutoAdmit))
	d.mender = mountMender(cfg, listener, d.protocols, d.updates, tenants.FindTenantByName, logger)
	d.hawkbit = mountHawkbit(cfg, db, d.protocols, artifacts, d.updates.artifacts, listener, d.authority.TenantName, logger)

	if cfg.Device.MQTTListen != "" {
		if d.mqtt, err = newBroker(cfg, listener, roots, audit, sqlstore.NewTelemetryService(db), twin, d.commands, d.updates, metrics, logger); err != nil {
			return nil, err
		}
		d.commands.mqtt = d.mqtt
		twin.broker = d.mqtt
		d.updates.broker = d.mqtt
		db.SetTwinNotifier(twin.notify)
	}
	db.SetRevocationNotifier(d.revocations)
	d.ln, err = net.Listen("tcp", cfg.Device.Listen)
	if err != nil {
		d.ln = nil
		d.closeNow()
		return nil, fmt.Errorf("serve: device listener: %w", err)
	}
	if cfg.Device.ArtifactListen != "" {
		if d.plain, err = listenArtifacts(ctx, cfg.Device.ArtifactListen, downloads, logger); err != nil {
			d.plain = nil
			d.closeNow()
			return nil, err
		}
	}
	d.srv = &http.Server{
		Handler: listener.Handler(), TLSConfig: listener.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog:    slog.NewLogLogger(logger.Handler(), slog.LevelDebug), // TLS handshake noise from scanners
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if cfg.Device.CoAPListen != "" { // coap.go
		if d.coap, err = newCoAPServer(cfg, listener, db, artifacts, twin, logger); err == nil {
			err = d.coap.Open()
		}
		if err != nil {
			d.coap = nil
			d.closeNow()
			return nil, fmt.Errorf("serve: CoAP listener on %s: %w", cfg.Device.CoAPListen, err)
		}
		logger.Info("CoAP listener", "addr", d.coap.Addr().String())
	}
	return d, nil
}

// issueStation issues a factory station's certificate from the current
// device CA and returns it with its chain: the device CA and the root.
func (d *deviceListener) issueStation(ctx context.Context, name string, csr *x509.CertificateRequest) (*x509.Certificate, []*x509.Certificate, error) {
	c, err := d.authority.IssueStation(ctx, name, csr)
	if err != nil {
		return nil, nil, err
	}
	h := d.authority.Hierarchy
	return c, []*x509.Certificate{h.DeviceCA(), h.Root}, nil
}

// deviceURLHost is where devices reach the listener, for issued
// certificates' URLs.
func deviceURLHost(cfg Config, h *pki.Hierarchy) string {
	if cfg.Device.URLHost != "" {
		return cfg.Device.URLHost
	}
	host := "localhost"
	if len(h.Server.DNSNames) > 0 {
		host = h.Server.DNSNames[0]
	} else if len(h.Server.IPAddresses) > 0 {
		host = h.Server.IPAddresses[0].String()
	}
	_, port, _ := net.SplitHostPort(cfg.Device.Listen)
	if port == "" || port == "443" || port == "0" {
		return host
	}
	return net.JoinHostPort(host, port)
}

// Addr is the listener's base URL.
func (d *deviceListener) Addr() string { return "https://" + d.ln.Addr().String() }

func (d *deviceListener) start() {
	// CRLs are regenerated on every revocation and when fetched past half
	// their validity; this also keeps them fresh when nobody asks. The
	// retirements of `cradle pki retire-ca` are applied with each refresh
	// and, sooner, when retired.json changes.
	go func() {
		defer close(d.refreshed)
		t := time.NewTicker(pki.DefaultCRLValidity / 8)
		defer t.Stop()
		retired := time.NewTicker(retiredCheckInterval)
		defer retired.Stop()
		for {
			d.reloadRetired(true)
			for i, ca := range d.authority.Hierarchy.DeviceCAs {
				if !time.Now().Before(ca.NotAfter) {
					continue // an expired CA publishes no CRL
				}
				if _, err := d.authority.CRL(context.Background(), pki.DeviceCAName(i)); err != nil {
					d.logger.Error("refreshing a CRL", "ca", pki.DeviceCAName(i), "err", err)
				}
			}
			logRetirableCAs(context.Background(), d.authority.Hierarchy, d.authority.CAStore, time.Now(), d.logger)
			for next := false; !next; {
				select {
				case <-d.stop:
					return
				case <-t.C:
					next = true
				case <-retired.C:
					d.reloadRetired(false)
				}
			}
		}
	}()
	d.accounting.start()
	if d.plain != nil {
		d.plain.start()
	}
	go func() {
		err := d.srv.ServeTLS(d.ln, "", "")
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		d.done <- err
	}()
}

// retiredStamp is the modification time and size of dir's retired.json
// (zero when it is missing).
func retiredStamp(dir string) [2]int64 {
	fi, err := os.Stat(filepath.Join(dir, pki.RetiredFile))
	if err != nil {
		return [2]int64{}
	}
	return [2]int64{fi.ModTime().UnixNano(), fi.Size()}
}

// reloadRetired applies the retirements of retired.json that the
// listener's hierarchy does not hold yet (pki.Hierarchy.ReloadRetired):
// from then on the listener (device API, MQTT, EST) refuses the
// certificates those CAs issued. Unless always, it rereads the file only
// when its modification time or size changed. A retirement of the CA
// this server issues from (the directory was rotated, the server not
// restarted) is not applied, and said.
func (d *deviceListener) reloadRetired(always bool) {
	st := retiredStamp(d.pkiDir)
	if !always && st == d.retiredSeen {
		return
	}
	d.retiredSeen = st
	added, current, err := d.authority.Hierarchy.ReloadRetired(d.pkiDir)
	if err != nil {
		d.logger.Error("reading the retired device CAs; the retirements already applied stay", "err", err)
		return
	}
	for _, name := range added {
		d.logger.Warn("device CA retired: its certificates are refused from now on", "ca", name)
	}
	if current != "" {
		d.logger.Error("retired.json retires the device CA this server issues from; not applied: restart cradle serve to issue from the new device CA", "ca", current)
	}
}

// shutdown stops the listener gracefully within ctx.
func (d *deviceListener) shutdown(ctx context.Context) error {
	if d.mqtt != nil {
		if err := d.mqtt.Close(ctx); err != nil {
			d.logger.Warn("MQTT broker shutdown", "err", err)
		}
	}
	if d.coap != nil {
		d.coap.Close()
	}
	close(d.stop)
	<-d.refreshed
	err := d.srv.Shutdown(ctx)
	if err != nil {
		d.srv.Close()
	}
	if serr := <-d.done; serr != nil && err == nil {
		err = serr
	}
	if d.plain != nil {
		if perr := d.plain.shutdown(ctx); perr != nil && err == nil {
			err = perr
		}
	}
	// After the listeners: the last downloads' records are in the queue.
	d.accounting.close()
	return err
}

// closeNow closes the listeners of a device listener that was never
// started (Run failed after making it).
func (d *deviceListener) closeNow() {
	if d.srv != nil {
		d.srv.Close()
	}
	if d.ln != nil {
		d.ln.Close()
	}
	if d.coap != nil {
		d.coap.Close()
	}
	if d.plain != nil {
		d.plain.ln.Close()
	}
	if d.mqtt != nil {
		d.mqtt.Close(context.Background())
	}
}

// mountUpdates mounts the update routes and the artifact downloads on the
// listener and returns the download handler (for the plain listener too).
// The URL-signing key is created on the first start.
func (d *deviceListener) mountUpdates(cfg Config, artifacts *artifact.Dir, listener *deviceapi.Server, svc cradle.UpdateService, devices *sqlstore.DeviceService, metrics prometheus.Registerer) (http.Handler, error) {
	signer, created, err := loadOrCreateURLSigner(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("serve: %w", err)
	}
	if created {
		d.logger.Info("created the artifact URL-signing key", "path", filepath.Join(cfg.DataDir, artifactURLKeyFile))
	}
	if d.accounting, err = newDownloadAccounting(svc, metrics, d.logger); err != nil {
		return nil, err
	}
	downloads := &artifact.Handler{Store: artifacts, Signer: signer, Account: d.accounting.Account, Logger: d.logger}
	// Public: the signature is the credential, for download clients that
	// cannot present the device's certificate; the gate checks the
	// device's state on each download (artifacts.go).
	gate := newDownloadGate(downloads, devices, d.logger)
	listener.Handle("/artifacts/", gate, true)
	d.updates = &deviceUpdates{svc: svc, artifacts: downloads, ttl: cfg.Device.ArtifactURLTTL, urlHost: cfg.Device.URLHost,
		dataDir: cfg.DataDir, tenantName: d.authority.TenantName, logger: d.logger, now: time.Now}
	d.updates.routes(listener)
	return gate, nil
}

// notifyUpdates tells the connected devices among serials (of tenantID)
// over MQTT that an update is pending for them: the rollout scheduler's
// Notify.
func (d *deviceListener) notifyUpdates(ctx context.Context, tenantID int64, serials []string) {
	d.updates.notify(ctx, tenantID, serials)
	if d.hawkbit != nil {
		d.hawkbit.Invalidate(tenantID, serials)
	}
	if d.mender != nil {
		d.mender.Invalidate(tenantID, serials)
	}
}
