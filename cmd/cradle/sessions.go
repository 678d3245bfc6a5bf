package main

import (
	"log/slog"

	"cradle"
	"cradle/internal/mqttapi"
)

// disconnectOnTransition returns the device service's OnTransition hook:
// a device moved to suspended, rma or eol loses its live MQTT sessions at
// once, as a revoked one does; the broker refuses its reconnection, since
// it admits deployed devices only.
func disconnectOnTransition(b *mqttapi.Broker, logger *slog.Logger) func(*cradle.Device, cradle.State) {
	return func(d *cradle.Device, from cradle.State) {
		switch d.State {
		case cradle.StateSuspended, cradle.StateRMA, cradle.StateEOL:
		default:
			return
		}
		if n := b.Disconnect(mqttapi.Device{TenantID: d.TenantID, Serial: d.Serial}); n > 0 {
			logger.Info("MQTT sessions closed on a lifecycle move", "tenant", d.TenantID, "device", d.Serial, "from", from, "to", d.State, "sessions", n)
		}
	}
}
