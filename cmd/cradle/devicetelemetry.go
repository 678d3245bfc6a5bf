package main

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"cradle"
	"cradle/internal/deviceapi"
	"cradle/internal/httpapi"
	"cradle/internal/mqttapi"
	"cradle/internal/sqlstore"
)

// writeDeviceError answers a device with {"code", "message"} and the
// status of the error's code (httpapi.HTTPStatus, the table of both HTTP
// APIs). An internal error is logged, and the device is told only that.
func writeDeviceError(w http.ResponseWriter, logger *slog.Logger, err error) {
	code, msg := cradle.ErrorCode(err), cradle.ErrorMessage(err)
	status := httpapi.HTTPStatus(code)
	if status == http.StatusInternalServerError {
		if logger != nil {
			logger.Error("device API", "err", err)
		}
		code, msg = cradle.EINTERNAL, "internal error"
	}
	writeDeviceJSON(w, status, cradle.Error{Code: code, Message: msg})
}

// logErr is what to log of a device's refused request: the message the
// device is told, or, for an internal error, which the device only sees
// as "internal error", the error itself.
func logErr(err error) any {
	if cradle.ErrorCode(err) == cradle.EINTERNAL {
		return err
	}
	return cradle.ErrorMessage(err)
}

// writeDeviceJSON answers a device with v as JSON.
func writeDeviceJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// telemetryHandler serves POST /device/v1/telemetry: the payload of the
// MQTT telemetry topic (cradle.ParseTelemetry), stored for the
// authenticated device in one transaction with the device as the actor.
// 204 when stored; 400 (malformed) or 413 (over the MQTT payload limit,
// or too many points) with the reason, nothing stored.
func telemetryHandler(telemetry *sqlstore.TelemetryService, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dev, _, ok := deviceapi.DeviceFromContext(r.Context())
		if !ok {
			writeDeviceError(w, logger, cradle.Errorf(cradle.EUNAUTHORIZED, "present the device's LDevID"))
			return
		}
		pts, err := cradle.ParseTelemetry(r.Body, mqttapi.DefaultMaxPayload)
		if err == nil {
			err = telemetry.RecordTelemetry(r.Context(), dev.Serial, pts)
		}
		if err != nil {
			log := logger.With("device", dev.Serial)
			if cradle.ErrorCode(err) != cradle.EINTERNAL { // writeDeviceError logs internal ones
				log.Warn("telemetry refused", "err", cradle.ErrorMessage(err))
			}
			writeDeviceError(w, log, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
