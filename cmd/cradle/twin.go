package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"cradle"
	"cradle/internal/deviceapi"
	"cradle/internal/mqttapi"
	"cradle/internal/sqlstore"
)

// deviceTwin is the device side of the configuration twin on the server:
// the same documents over HTTPS (GET /device/v1/twin, PUT
// /device/v1/twin/reported) and MQTT (twin/desired sent when a device
// subscribes and whenever an operator change alters its effective
// document; twin/reported stored).
type deviceTwin struct {
	svc     *sqlstore.TwinService
	logger  *slog.Logger
	refused prometheus.Counter
	broker  *mqttapi.Broker // nil without MQTT
}

func newDeviceTwin(db *sqlstore.DB, metrics prometheus.Registerer, logger *slog.Logger) (*deviceTwin, error) {
	t := &deviceTwin{svc: sqlstore.NewTwinService(db), logger: logger,
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "cradle_twin_reports_refused_total",
			Help: "Reported configuration documents from devices (MQTT and HTTPS) that were refused (malformed, oversize, another device's)."})}
	if err := metrics.Register(t.refused); err != nil {
		return nil, fmt.Errorf("serve: twin metrics: %w", err)
	}
	return t, nil
}

// routes mounts the HTTPS device routes.
func (t *deviceTwin) routes(listener *deviceapi.Server) {
	listener.Handle("GET /device/v1/twin", http.HandlerFunc(t.getDesired), false)
	listener.Handle("PUT /device/v1/twin/reported", http.HandlerFunc(t.putReported), false)
}

func (t *deviceTwin) fail(w http.ResponseWriter, serial string, err error) {
	writeDeviceError(w, t.logger.With("device", serial), err)
}

// getDesired answers the device's effective desired document, or 204
// when it has none.
func (t *deviceTwin) getDesired(w http.ResponseWriter, r *http.Request) {
	dev, _, _ := deviceapi.DeviceFromContext(r.Context())
	d, err := t.svc.FindDesired(r.Context(), dev.Serial)
	if err != nil {
		t.fail(w, dev.Serial, err)
		return
	}
	if d == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	// The same bytes as over MQTT.
	doc, err := json.Marshal(d)
	if err != nil {
		t.fail(w, dev.Serial, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(doc)
}

// maxReportedBytes bounds a reported document on either transport.
const maxReportedBytes = cradle.MaxConfigBytes + 4096

// putReported stores the device's reported document.
func (t *deviceTwin) putReported(w http.ResponseWriter, r *http.Request) {
	dev, _, _ := deviceapi.DeviceFromContext(r.Context())
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxReportedBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			err = cradle.Errorf(cradle.ETOOLARGE, "reported document is larger than %d bytes", maxReportedBytes)
		}
		t.refused.Inc()
		t.fail(w, dev.Serial, err)
		return
	}
	if err := t.report(r.Context(), dev.Serial, body); err != nil {
		t.fail(w, dev.Serial, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// report parses and stores a reported document; ctx carries the device.
// Refusals are counted and logged.
func (t *deviceTwin) report(ctx context.Context, serial string, payload []byte) error {
	rep, err := cradle.ParseReported(payload)
	if err == nil {
		err = t.svc.ReportTwin(ctx, serial, rep)
	}
	if err != nil {
		t.refused.Inc()
		t.logger.Warn("twin report refused", "device", serial, "err", logErr(err))
	}
	return err
}

// onSubscribe sends device dev its desired document when it subscribes
// to a filter that covers its twin/desired topic; ctx carries the device.
func (t *deviceTwin) onSubscribe(ctx context.Context, dev mqttapi.Device, filter string) {
	serial := dev.Serial
	if t.broker == nil || !filterMatches(filter, mqttapi.DeviceTopic(serial, mqttapi.TopicTwinDesired)) {
		return
	}
	d, err := t.svc.FindDesired(ctx, serial)
	if err != nil {
		t.logger.Warn("twin: desired document for a subscriber", "device", serial, "err", logErr(err))
		return
	}
	if d == nil {
		return
	}
	doc, err := json.Marshal(d)
	if err != nil {
		t.logger.Error("twin: desired document for a subscriber", "device", serial, "err", err)
		return
	}
	if err := t.broker.Publish(dev, mqttapi.TopicTwinDesired, doc, 1); err != nil {
		t.logger.Warn("twin: publish desired document", "device", serial, "err", err)
	}
}

// notify publishes changed desired documents to connected devices; the
// store calls it after each commit that changed some.
func (t *deviceTwin) notify(changes []cradle.TwinChange) {
	if t.broker == nil {
		return
	}
	for _, c := range changes {
		dev := mqttapi.Device{TenantID: c.TenantID, Serial: c.Serial}
		if t.broker.Sessions(dev) == 0 {
			continue // it gets the document when it subscribes or polls
		}
		if err := t.broker.Publish(dev, mqttapi.TopicTwinDesired, c.Desired, 1); err != nil {
			t.logger.Warn("twin: publish desired document", "tenant", c.TenantID, "device", c.Serial, "err", err)
		}
	}
}

// filterMatches reports whether an MQTT topic filter matches topic.
func filterMatches(filter, topic string) bool {
	f, n := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, level := range f {
		if level == "#" {
			return true
		}
		if i >= len(n) || (level != "+" && level != n[i]) {
			return false
		}
	}
	return len(f) == len(n)
}
