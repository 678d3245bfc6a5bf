package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"cradle"
	"cradle/internal/command"
	"cradle/internal/deviceapi"
	"cradle/internal/mqttapi"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// commandRelay carries signed commands to devices and their results back:
// over HTTPS (GET /device/v1/commands, POST /device/v1/commands/result,
// POST /device/v1/commands/{id}/logs) and over MQTT (published on issue
// when the device is connected, its pending ones when it subscribes to
// its commands topic, results taken from commands/result). The payloads
// are the same on both: a command.Envelope per command, a command.Result
// per result.
type commandRelay struct {
	store   *sqlstore.CommandService
	sign    sqlstore.CommandSigner // the command signer, for the wipe commands of decommissioning
	mqtt    *mqttapi.Broker        // nil without device.mqtt_listen; set after the broker is made
	refused prometheus.Counter
	logger  *slog.Logger
	// reissueWipe, when set, gives a device being wiped a fresh wipe
	// command when its own expired (decommissioning's).
	reissueWipe func(ctx context.Context, serial string) error
}

// newCommandRelay makes the command store signing with the command signer
// key of keys and its certificate in h.
func newCommandRelay(db *sqlstore.DB, h *pki.Hierarchy, keys map[string]crypto.Signer, metrics prometheus.Registerer, logger *slog.Logger) (*commandRelay, error) {
	key := keys[pki.NameCommandSigner]
	if key == nil || h.CommandSigner == nil {
		return nil, errors.New("serve: the command signer's key or certificate is not loaded")
	}
	chain := []*x509.Certificate{h.CommandSigner}
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "cradle_command_results_refused_total",
		Help: "Command results from devices (HTTPS or MQTT) that were refused: malformed, unknown command, already finished."})
	if err := metrics.Register(refused); err != nil {
		return nil, fmt.Errorf("serve: command metrics: %w", err)
	}
	sign := func(c command.Command) ([]byte, error) { return command.Sign(c, key, chain) }
	return &commandRelay{store: sqlstore.NewCommandService(db, sign), sign: sign, refused: refused, logger: logger}, nil
}

// mount adds the device routes to the listener.
func (c *commandRelay) mount(l *deviceapi.Server) {
	// A device being decommissioned still gets its wipe command here
	// (and only it: see httpPending).
	l.HandleDecommissioning("GET /device/v1/commands", http.HandlerFunc(c.httpPending))
	l.Handle("POST /device/v1/commands/result", http.HandlerFunc(c.httpResult), false)
	l.Handle("POST /device/v1/commands/{id}/logs", http.HandlerFunc(c.httpLogs), false)
}

func deviceActor(tenantID int64, serial string) cradle.Actor {
	return cradle.Actor{TenantID: tenantID, Role: cradle.RoleDevice, Kind: "device", ID: serial}
}

// operational returns the authenticated device, refusing an IDevID:
// commands go to enrolled devices.
func operational(r *http.Request) (*cradle.Device, error) {
	dev, rec, ok := deviceapi.DeviceFromContext(r.Context())
	if !ok {
		return nil, cradle.Errorf(cradle.EUNAUTHORIZED, "no device certificate")
	}
	if rec.Kind != cradle.CertLDevID {
		return nil, cradle.Errorf(cradle.EFORBIDDEN, "certificate %s is an %s: commands take the operational certificate (LDevID) from enrollment", rec.Serial, rec.Kind)
	}
	return dev, nil
}

// pending returns the envelopes to send to the device and marks them
// delivered; only (optional) limits them to one command, wipeOnly to the
// wipe command of a device being decommissioned.
func (c *commandRelay) pending(ctx context.Context, serial, only string, wipeOnly bool) ([]json.RawMessage, error) {
	cs, err := c.store.PendingCommands(ctx, serial)
	if err != nil {
		return nil, err
	}
	envs, ids := []json.RawMessage{}, []string{}
	for _, cmd := range cs {
		if wipeOnly && cmd.Kind != cradle.CommandWipe {
			continue
		}
		if only == "" || cmd.ID == only {
			envs, ids = append(envs, cmd.Envelope), append(ids, cmd.ID)
		}
	}
	if err := c.store.MarkCommandsDelivered(ctx, serial, ids); err != nil {
		return nil, err
	}
	return envs, nil
}

// CommandsDocument is the answer of GET /device/v1/commands.
type commandsDocument struct {
	Commands []json.RawMessage `json:"commands"`
}

func (c *commandRelay) httpPending(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err != nil {
		writeDeviceError(w, c.logger, err)
		return
	}
	if dev.State == cradle.StateEOL && c.reissueWipe != nil {
		if err := c.reissueWipe(r.Context(), dev.Serial); err != nil {
			c.logger.Warn("wipe command not reissued", "device", dev.Serial, "err", logErr(err))
		}
	}
	envs, err := c.pending(r.Context(), dev.Serial, "", dev.State == cradle.StateEOL)
	if err != nil {
		writeDeviceError(w, c.logger.With("device", dev.Serial), err)
		return
	}
	writeDeviceJSON(w, http.StatusOK, commandsDocument{Commands: envs})
}

// record parses a command.Result from a device and stores it.
func (c *commandRelay) record(ctx context.Context, serial string, payload []byte) error {
	res, err := command.ParseResult(payload)
	if err == nil {
		_, err = c.store.RecordCommandResult(ctx, serial, cradle.CommandResult{CommandID: res.CommandID, Sequence: res.Sequence,
			Status: cradle.CommandState(res.Status), Error: res.Error, At: res.At})
	}
	if err != nil {
		c.refused.Inc()
		c.logger.Warn("command result refused", "device", serial, "err", logErr(err))
	}
	return err
}

func (c *commandRelay) httpResult(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err != nil {
		writeDeviceError(w, c.logger, err)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, command.MaxResultSize+1))
	if err != nil {
		writeDeviceError(w, c.logger, cradle.Errorf(cradle.EINVALID, "reading the command result: %v", err))
		return
	}
	if len(body) > command.MaxResultSize {
		writeDeviceError(w, c.logger, cradle.Errorf(cradle.ETOOLARGE, "command result over the %d-byte limit", command.MaxResultSize))
		return
	}
	if err := c.record(r.Context(), dev.Serial, body); err != nil {
		writeDeviceError(w, c.logger, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (c *commandRelay) httpLogs(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err != nil {
		writeDeviceError(w, c.logger, err)
		return
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, cradle.MaxCommandLogsSize+1))
	if err != nil {
		writeDeviceError(w, c.logger, cradle.Errorf(cradle.EINVALID, "reading the logs: %v", err))
		return
	}
	if err := c.store.StoreCommandLogs(r.Context(), dev.Serial, r.PathValue("id"), body); err != nil {
		writeDeviceError(w, c.logger, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// publish sends the device's pending commands (only the one with id only,
// when set) over MQTT, if it is connected, and marks them delivered. It
// reports whether it sent any.
func (c *commandRelay) publish(tenantID int64, serial, only string) bool {
	dev := mqttapi.Device{TenantID: tenantID, Serial: serial}
	if c.mqtt == nil || c.mqtt.Sessions(dev) == 0 {
		return false
	}
	ctx := cradle.NewContextWithActor(context.Background(), deviceActor(tenantID, serial))
	cs, err := c.store.PendingCommands(ctx, serial)
	if err != nil {
		c.logger.Error("pending commands", "device", serial, "err", err)
		return false
	}
	var sent []string
	for _, cmd := range cs {
		if only != "" && cmd.ID != only {
			continue
		}
		if err := c.mqtt.Publish(dev, mqttapi.TopicCommands, cmd.Envelope, 1); err != nil {
			c.logger.Warn("publishing a command", "device", serial, "command", cmd.ID, "err", err)
			continue
		}
		sent = append(sent, cmd.ID)
	}
	if err := c.store.MarkCommandsDelivered(ctx, serial, sent); err != nil {
		c.logger.Error("marking commands delivered", "device", serial, "err", err)
	}
	return len(sent) > 0
}

// onSubscribe sends a device its pending commands once it subscribed to
// a filter that matches its commands topic (the topic itself, or a
// wildcard over its own subtree), as the twin does for its document.
func (c *commandRelay) onSubscribe(tenantID int64, serial, filter string) {
	if filterMatches(filter, mqttapi.DeviceTopic(serial, mqttapi.TopicCommands)) {
		c.publish(tenantID, serial, "")
	}
}

// onMessage takes a result from the device's commands/result topic; a
// refused one is counted and logged, the connection kept. It reports
// whether the topic was the results topic.
func (c *commandRelay) onMessage(tenantID int64, serial, topic string, payload []byte) bool {
	if topic != mqttapi.DeviceTopic(serial, mqttapi.TopicCommandResults) {
		return false
	}
	c.record(cradle.NewContextWithActor(context.Background(), deviceActor(tenantID, serial)), serial, bytes.Clone(payload))
	return true
}

// pushingCommands is the command service of the operator API: a command
// issued to a connected device is published to it at once.
type pushingCommands struct {
	cradle.CommandService
	relay *commandRelay
}

func (p pushingCommands) IssueCommand(ctx context.Context, serial string, r cradle.CommandRequest) (*cradle.DeviceCommand, error) {
	cmd, err := p.CommandService.IssueCommand(ctx, serial, r)
	if err != nil {
		return nil, err
	}
	if a, ok := cradle.ActorFromContext(ctx); ok && p.relay.publish(a.TenantID, serial, cmd.ID) {
		if sent, err := p.CommandService.FindDeviceCommand(ctx, serial, cmd.ID); err == nil {
			return sent, nil
		}
	}
	return cmd, nil
}
