package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"cradle"
	"cradle/internal/deviceapi"
	"cradle/internal/mqttapi"
	"cradle/internal/sqlstore"
)

// newBroker makes the embedded MQTT broker of the device listener: the
// same server certificate, devices authenticated by their LDevID with the
// device listener's checks (chain, profile, revocation, device state),
// refusals audited, telemetry and twin reports stored, desired twin
// documents sent on subscription, commands and their results relayed
// through cmds, pending update notices sent on subscription (updates). It
// is opened by the caller (Open) and listens on device.mqtt_listen.
func newBroker(cfg Config, listener *deviceapi.Server, roots *x509.CertPool, audit *sqlstore.AuditService, telemetry *sqlstore.TelemetryService, twin *deviceTwin, cmds *commandRelay, updates *deviceUpdates, metrics prometheus.Registerer, logger *slog.Logger) (*mqttapi.Broker, error) {
	// Telemetry refused (malformed, oversize, an unknown device) is
	// counted and logged; the connection is kept.
	telemetryRefused := prometheus.NewCounter(prometheus.CounterOpts{Name: "cradle_mqtt_telemetry_refused_total",
		Help: "Telemetry messages from devices over MQTT that were refused (malformed, oversize, unknown device)."})
	if err := metrics.Register(telemetryRefused); err != nil {
		return nil, fmt.Errorf("serve: MQTT metrics: %w", err)
	}
	// The broker verifies client chains against the root; the device
	// presents its LDevID with the device CA that issued it. Check names
	// the device by tenant and serial (serials are unique per tenant
	// only); the broker keeps the tenants' topics apart and tells every
	// callback which device it is about.
	b, err := mqttapi.New(mqttapi.Config{
		Addr:   cfg.Device.MQTTListen,
		TLS:    &tls.Config{Certificates: []tls.Certificate{listener.Certificate}, ClientCAs: roots},
		Logger: logger,
		Check: func(ctx context.Context, cert *x509.Certificate) (mqttapi.Device, error) {
			_, dev, rec, err := listener.CheckPeer(ctx, []*x509.Certificate{cert})
			if err != nil {
				return mqttapi.Device{}, err
			}
			if rec.Kind != cradle.CertLDevID {
				return mqttapi.Device{}, fmt.Errorf("certificate %s is an %s: MQTT takes the operational certificate (LDevID) from enrollment", rec.Serial, rec.Kind)
			}
			if dev.State != cradle.StateDeployed {
				return mqttapi.Device{}, fmt.Errorf("device %s is %s, not deployed", dev.Serial, dev.State)
			}
			return mqttapi.Device{TenantID: dev.TenantID, Serial: dev.Serial}, nil
		},
		OnRefusal: func(d mqttapi.Device, action, topic string) {
			audit.RecordRefusal(context.Background(), d.TenantID, "device:"+d.Serial, cradle.AuditEvent{Action: "mqtt." + action + ".refused",
				Subject: "device:" + d.Serial, Details: map[string]any{"topic": topic}})
		},
		OnSubscribe: func(d mqttapi.Device, filter string) {
			cmds.onSubscribe(d.TenantID, d.Serial, filter)
			updates.onSubscribe(d.TenantID, d.Serial, filter)
			twin.onSubscribe(cradle.NewContextWithActor(context.Background(), deviceActor(d.TenantID, d.Serial)), d, filter)
		},
		OnMessage: func(d mqttapi.Device, topic string, payload []byte) {
			id, serial := d.TenantID, d.Serial
			if cmds.onMessage(id, serial, topic, payload) {
				return
			}
			ctx := cradle.NewContextWithActor(context.Background(), deviceActor(id, serial))
			if topic == mqttapi.DeviceTopic(serial, mqttapi.TopicTwinReported) {
				twin.report(ctx, serial, payload) // refusals counted and logged; the connection is kept
				return
			}
			if topic != mqttapi.DeviceTopic(serial, mqttapi.TopicTelemetry) {
				logger.Debug("MQTT message", "device", serial, "topic", topic, "bytes", len(payload))
				return
			}
			pts, err := cradle.ParseTelemetry(bytes.NewReader(payload), mqttapi.DefaultMaxPayload)
			if err == nil {
				err = telemetry.RecordTelemetry(ctx, serial, pts)
			}
			if err != nil {
				telemetryRefused.Inc()
				logger.Warn("telemetry refused", "device", serial, "err", logErr(err))
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("serve: MQTT broker: %w", err)
	}
	if err := b.Open(); err != nil {
		return nil, fmt.Errorf("serve: MQTT broker on %s: %w", cfg.Device.MQTTListen, err)
	}
	logger.Info("MQTT broker", "addr", b.Addr().String())
	return b, nil
}
