package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/coapapi"
	"cradle/internal/deviceapi"
	"cradle/internal/mqttapi"
	"cradle/internal/sqlstore"
)

// newCoAPServer makes the CoAP listener of device.coap_listen (issue 9):
// the device listener's certificate and checks (coapPeer), the telemetry
// and update services of the native API, the twin's desired documents and
// the artifact store. It is opened by the caller.
func newCoAPServer(cfg Config, listener *deviceapi.Server, db *sqlstore.DB, artifacts *artifact.Dir, twin *deviceTwin, logger *slog.Logger) (*coapapi.Server, error) {
	telemetry := sqlstore.NewTelemetryService(db)
	updates := sqlstore.NewUpdateService(db)
	return coapapi.New(coapapi.Config{
		Addr: cfg.Device.CoAPListen, Certificate: listener.Certificate, MaxBody: mqttapi.DefaultMaxPayload, Logger: logger,
		Check: func(ctx context.Context, peer []*x509.Certificate, path string, remote net.Addr) (*cradle.Device, error) {
			return coapPeer(ctx, listener, peer, path, remote)
		},
		// The body of POST /device/v1/telemetry and of the MQTT topic.
		Telemetry: func(ctx context.Context, dev *cradle.Device, body io.Reader) error {
			pts, err := cradle.ParseTelemetry(body, mqttapi.DefaultMaxPayload)
			if err != nil {
				return err
			}
			return telemetry.RecordTelemetry(ctx, dev.Serial, pts)
		},
		// The same bytes as GET /device/v1/twin and the MQTT twin/desired.
		Desired: func(ctx context.Context, dev *cradle.Device) ([]byte, error) {
			d, err := twin.svc.FindDesired(ctx, dev.Serial)
			if err != nil || d == nil {
				return nil, err
			}
			return json.Marshal(d)
		},
		Firmware: func(ctx context.Context, dev *cradle.Device) (*coapapi.Firmware, error) {
			p, err := updates.PendingUpdate(ctx, dev.Serial, "")
			if err != nil {
				return nil, err
			}
			rel := p.Release
			d, err := artifact.ParseDigest(rel.SHA256)
			if err != nil {
				return nil, fmt.Errorf("release %s: artifact digest %q: %w", rel.ID, rel.SHA256, err)
			}
			return &coapapi.Firmware{
				Info: coapapi.FirmwareInfo{RolloutID: p.RolloutID, Attempt: p.Attempt, ReleaseID: rel.ID, Version: rel.Version, SHA256: rel.SHA256, Size: rel.Size},
				Open: func(ctx context.Context) (io.ReadSeekCloser, error) {
					r, _, err := artifacts.Open(ctx, d)
					return r, err
				},
			}, nil
		},
	})
}

// coapPeer checks a CoAP request's client certificate chain as the
// listener checks its own routes, and requires the operational
// certificate (LDevID), as MQTT and hawkBit do. A refusal keeps its kind
// (EUNAUTHORIZED: 4.01 for the certificate; EFORBIDDEN: 4.03 for the
// device's state or an IDevID) and is audited as the listener audits its
// own (device.auth.refused, the path as coaps:/PATH); a failure of the
// store is not the device's fault (5.00).
func coapPeer(ctx context.Context, listener *deviceapi.Server, peer []*x509.Certificate, path string, remote net.Addr) (*cradle.Device, error) {
	_, dev, rec, err := listener.CheckPeer(ctx, peer)
	if err == nil && rec.Kind != cradle.CertLDevID {
		err = deviceapi.Refuse(http.StatusForbidden, fmt.Sprintf("certificate %s is an %s: CoAP takes the operational certificate (LDevID) from enrollment", rec.Serial, rec.Kind), rec)
	}
	if err == nil {
		return dev, nil
	}
	status, refused := deviceapi.RefusalStatus(err)
	if !refused {
		return nil, fmt.Errorf("coap: checking the client certificate: %w", err)
	}
	r := (&http.Request{Method: "COAP", URL: &url.URL{Path: "coaps:" + path}, RemoteAddr: remote.String(),
		TLS: &tls.ConnectionState{PeerCertificates: peer}}).WithContext(ctx)
	listener.AuditRefusal(r, err)
	code := cradle.EUNAUTHORIZED
	if status == http.StatusForbidden {
		code = cradle.EFORBIDDEN
	}
	return nil, cradle.Errorf(code, "%s", err.Error())
}
