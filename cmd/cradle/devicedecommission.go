package main

import (
	"bytes"
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
		// The CRLs, OCSP and the token cache were brought up to date by
		// the store's revocation notifier (revoke.go) when the execution
		// committed; the move to eol closes the device's sessions.
		if d.mqtt != nil {
			disconnectOnTransition(d.mqtt, d.logger)(dev, from)
		}
		d.logger.Info("device decommissioned", "tenant", dev.TenantID, "device", dev.Serial, "from", from, "certificates_revoked", len(revoked))
	}
	listener.Wiping = x.wiping
	listener.HandleDecommissioning("POST /device/v1/tombstone", http.HandlerFunc(x.httpTombstone))
	// A wiping device whose wipe command expired while it was offline
	// gets a fresh one when it polls.
	d.commands.reissueWipe = func(ctx context.Context, serial string) error {
		_, err := x.svc.ReissueWipe(ctx, serial)
		return err
	}
	return x
}

// wiping reports whether d's decommissioning waits for its tombstone and
// takes cert as the device's: one of the LDevIDs valid when it was
// executed, none of them revoked again for keyCompromise since.
func (x *decommissioning) wiping(ctx context.Context, d *cradle.Device, cert *cradle.Certificate) (bool, error) {
	err := x.svc.WipeCredential(ctx, d.Serial, cert.Serial)
	switch cradle.ErrorCode(err) {
	case "":
		return true, nil
	case cradle.ENOTFOUND, cradle.ECONFLICT, cradle.EINVALID:
		x.logger.Warn("wipe route refused", "tenant", d.TenantID, "device", d.Serial, "certificate", cert.Serial, "reason", cradle.ErrorMessage(err))
		return false, nil
	}
	return false, err
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
	// The key that signed must be the one of this connection: a device
	// speaks for itself, not with a certificate it once had.
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !bytes.Equal(st.Certificate, r.TLS.PeerCertificates[0].Raw) {
		writeDeviceError(w, x.logger.With("device", dev.Serial), cradle.Errorf(cradle.EINVALID, "the tombstone's certificate is not the TLS client certificate of this request: sign the tombstone with the LDevID the device connects with"))
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
