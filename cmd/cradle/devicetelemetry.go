package main

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"cradle"
	"cradle/internal/deviceapi"
	"cradle/internal/mqttapi"
	"cradle/internal/sqlstore"
)

// deviceStatusOf maps error codes to the device API's HTTP statuses.
var deviceStatusOf = map[string]int{
	cradle.EINVALID:      http.StatusBadRequest,
	cradle.ETOOLARGE:     http.StatusRequestEntityTooLarge,
	cradle.ENOTFOUND:     http.StatusNotFound,
	cradle.ECONFLICT:     http.StatusConflict,
	cradle.EFORBIDDEN:    http.StatusForbidden,
	cradle.EUNAUTHORIZED: http.StatusUnauthorized,
	cradle.EUNAVAILABLE:  http.StatusServiceUnavailable,
}

// writeDeviceError answers a device with {"code", "message"} and the
// status of the error's code.
func writeDeviceError(w http.ResponseWriter, err error) {
	code := cradle.ErrorCode(err)
	status, ok := deviceStatusOf[code]
	if !ok {
		status = http.StatusInternalServerError
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(cradle.Error{Code: code, Message: cradle.ErrorMessage(err)})
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
			writeDeviceError(w, cradle.Errorf(cradle.EUNAUTHORIZED, "present the device's LDevID"))
			return
		}
		pts, err := cradle.ParseTelemetry(r.Body, mqttapi.DefaultMaxPayload)
		if err == nil {
			err = telemetry.RecordTelemetry(r.Context(), dev.Serial, pts)
		}
		if err != nil {
			if cradle.ErrorCode(err) == cradle.EINTERNAL {
				logger.Error("telemetry over HTTPS", "device", dev.Serial, "err", err)
			} else {
				logger.Warn("telemetry refused", "device", dev.Serial, "err", cradle.ErrorMessage(err))
			}
			writeDeviceError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
