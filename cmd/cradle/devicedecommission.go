package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"cradle"
	"cradle/internal/deviceapi"
	"cradle/internal/sqlstore"
)

// maxTombstoneBody bounds POST /device/v1/tombstone: the payload, its
// signature and the certificate, base64 in JSON.
const maxTombstoneBody = 2*cradle.MaxTombstonePayload + 16<<10

// decommissioning is the server side of decommissioning outside the store:
// after an execution, the CRLs are regenerated and the OCSP cache told
// (Authority.Revoked, whose OnRevoke also closes MQTT sessions of each
// certificate), and the device's live sessions closed as on any move to
// eol. On the device listener it takes the tombstone of a device being
// wiped.
type decommissioning struct {
	svc    *sqlstore.DecommissionService
	logger *slog.Logger
}

// newDecommissioning wires the decommissioning store of db to the device
// listener d (its authority, its broker once made) and mounts the
// tombstone route with the decommissioning exception.
func newDecommissioning(db *sqlstore.DB, d *deviceListener, listener *deviceapi.Server) *decommissioning {
	x := &decommissioning{svc: sqlstore.NewDecommissionService(db, d.commands.sign), logger: d.logger}
	x.svc.OnExecuted = func(ctx context.Context, dev *cradle.Device, from cradle.State, revoked []*cradle.Certificate) {
		if d.protocols != nil {
			d.protocols.Cache.Flush() // its tokens were revoked with the rest
		}
		d.authority.Revoked(context.WithoutCancel(ctx), revoked)
		if d.mqtt != nil {
			disconnectOnTransition(d.mqtt, d.logger)(dev, from)
		}
		d.logger.Info("device decommissioned", "tenant", dev.TenantID, "device", dev.Serial, "from", from, "certificates_revoked", len(revoked))
	}
	listener.Wiping = x.wiping
	listener.HandleDecommissioning("POST /device/v1/tombstone", http.HandlerFunc(x.httpTombstone))
	return x
}

// wiping reports whether d's decommissioning waits for its tombstone.
func (x *decommissioning) wiping(ctx context.Context, d *cradle.Device) (bool, error) {
	rec, err := x.svc.FindDecommission(ctx, d.Serial)
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return false, nil
	} else if err != nil {
		return false, err
	}
	return rec.State == cradle.DecommissionWiping, nil
}

// httpTombstone takes a cradle.SignedTombstone from the device (JSON) and
// answers the decommissioning record's state: 200 when stored, 400 with
// the reason (nothing stored), 409 when already confirmed.
func (x *decommissioning) httpTombstone(w http.ResponseWriter, r *http.Request) {
	dev, err := operational(r)
	if err != nil {
		writeDeviceError(w, x.logger, err)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxTombstoneBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeDeviceError(w, x.logger, cradle.Errorf(cradle.ETOOLARGE, "tombstone over %d bytes", maxTombstoneBody))
		return
	} else if err != nil {
		writeDeviceError(w, x.logger, cradle.Errorf(cradle.EINVALID, "reading the tombstone: %v", err))
		return
	}
	var st cradle.SignedTombstone
	if err := json.Unmarshal(body, &st); err != nil {
		writeDeviceError(w, x.logger, cradle.Errorf(cradle.EINVALID, "invalid tombstone: want a JSON object {payload, signature, certificate} (base64): %v", err))
		return
	}
	rec, err := x.svc.RecordTombstone(r.Context(), dev.Serial, st)
	if err != nil {
		writeDeviceError(w, x.logger.With("device", dev.Serial), err)
		return
	}
	x.logger.Info("decommissioning confirmed by the device's tombstone", "tenant", dev.TenantID, "device", dev.Serial, "erased", len(rec.Tombstone.Erased))
	writeDeviceJSON(w, http.StatusOK, map[string]any{"serial": rec.Serial, "state": rec.State, "confirmed_at": rec.ConfirmedAt})
}
