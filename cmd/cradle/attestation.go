package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"time"

	"cradle"
	"cradle/internal/attest"
	"cradle/internal/deviceapi"
)

// The device labels that record a verified attestation, shown by
// `cradle device show`.
const (
	labelAttested   = "attested"    // the method: "tpm"
	labelAttestedEK = "attested.ek" // SHA-256 of the EK certificate
	labelAttestedAt = "attested.at" // RFC 3339
)

// maxAttestationBody bounds an attestation request (an EK certificate and
// a few TPM structures).
const maxAttestationBody = 32 << 10

// attestationHandler serves POST /device/v1/attestation/start and
// /finish on the device listener (see internal/attest). A verified
// attestation sets the device's attested labels as the system actor
// "attestation", audited as device.update; every refusal is audited as
// device.attestation.refused. Without device.tpm_ek_roots, start answers
// 501 (not_implemented) and the agent enrolls unattested.
type attestationHandler struct {
	verifier *attest.Verifier
	devices  cradle.DeviceService
	audit    func(ctx context.Context, tenantID int64, actor string, ev cradle.AuditEvent)
	logger   *slog.Logger
}

// loadEKRoots reads device.tpm_ek_roots: self-signed CA certificates are
// roots, other certificates intermediates. An empty path gives nil pools
// (every attestation refused).
func loadEKRoots(path string) (roots, inter *x509.CertPool, err error) {
	if path == "" {
		return nil, nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("device.tpm_ek_roots: %w", err)
	}
	roots, inter = x509.NewCertPool(), x509.NewCertPool()
	n := 0
	for {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, nil, fmt.Errorf("device.tpm_ek_roots: %s: %w", path, err)
		}
		if c.CheckSignatureFrom(c) == nil {
			roots.AddCert(c)
			n++
		} else {
			inter.AddCert(c)
		}
	}
	if n == 0 {
		return nil, nil, fmt.Errorf("device.tpm_ek_roots: %s holds no self-signed CA certificate: give the PEM of the TPM manufacturers' root CAs", path)
	}
	return roots, inter, nil
}

// mountAttestation mounts the attestation routes on the device listener.
func mountAttestation(cfg Config, listener *deviceapi.Server, devices cradle.DeviceService,
	audit func(context.Context, int64, string, cradle.AuditEvent), logger *slog.Logger) error {
	roots, inter, err := loadEKRoots(cfg.Device.TPMEKRoots)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	if roots == nil {
		logger.Info("device.tpm_ek_roots is empty: TPM attestation requests will be refused")
	}
	h := &attestationHandler{verifier: &attest.Verifier{Roots: roots, Intermediates: inter}, devices: devices, audit: audit, logger: logger}
	listener.Handle("POST /device/v1/attestation/start", http.HandlerFunc(h.start), false)
	listener.Handle("POST /device/v1/attestation/finish", http.HandlerFunc(h.finish), false)
	return nil
}

// sessionKey names a device's session across tenants.
func sessionKey(d *cradle.Device) string { return strconv.FormatInt(d.TenantID, 10) + "/" + d.Serial }

func (h *attestationHandler) start(w http.ResponseWriter, r *http.Request) {
	dev, _, _ := deviceapi.DeviceFromContext(r.Context())
	if h.verifier.Roots == nil {
		// Not a refusal of the device: this server attests nothing, and the
		// agent enrolls unattested.
		writeDeviceError(w, h.logger, cradle.Errorf(cradle.ENOTIMPLEMENTED, "TPM attestation is not configured on this server (device.tpm_ek_roots is empty)"))
		return
	}
	var req attest.StartRequest
	if err := decodeAttestation(w, r, &req); err != nil {
		h.refuse(w, r, dev, "start", err)
		return
	}
	ch, err := h.verifier.Start(sessionKey(dev), req)
	if err != nil {
		h.refuse(w, r, dev, "start", err)
		return
	}
	writeDeviceJSON(w, http.StatusOK, ch)
}

func (h *attestationHandler) finish(w http.ResponseWriter, r *http.Request) {
	dev, _, _ := deviceapi.DeviceFromContext(r.Context())
	var req attest.FinishRequest
	if err := decodeAttestation(w, r, &req); err != nil {
		h.refuse(w, r, dev, "finish", err)
		return
	}
	leaf := r.TLS.VerifiedChains[0][0]
	res, err := h.verifier.Finish(sessionKey(dev), leaf.PublicKey, req)
	if err != nil {
		h.refuse(w, r, dev, "finish", err)
		return
	}
	ctx := cradle.NewContextWithActor(r.Context(), cradle.SystemActor(dev.TenantID, "attestation"))
	_, err = h.devices.UpdateDevice(ctx, dev.Serial, cradle.DeviceUpdate{SetLabels: map[string]string{
		labelAttested: res.Method, labelAttestedEK: res.EKCertificate, labelAttestedAt: res.At.UTC().Format(time.RFC3339),
	}})
	if err != nil {
		h.logger.Error("recording an attestation", "serial", dev.Serial, "err", err)
		writeDeviceError(w, h.logger, cradle.Errorf(cradle.EINTERNAL, "attestation verified but not recorded: try again"))
		return
	}
	h.logger.Info("device attested", "serial", dev.Serial, "method", res.Method, "ek_sha256", res.EKCertificate, "ek_issuer", res.EKIssuer)
	writeDeviceJSON(w, http.StatusOK, res)
}

func decodeAttestation(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAttestationBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return cradle.Errorf(cradle.ETOOLARGE, "attestation request over %d bytes", maxAttestationBody)
		}
		return cradle.Errorf(cradle.EINVALID, "attestation request: not the JSON expected: %v", err)
	}
	if dec.More() {
		return cradle.Errorf(cradle.EINVALID, "attestation request: data after the JSON object")
	}
	return nil
}

// refuse answers and audits a refusal.
func (h *attestationHandler) refuse(w http.ResponseWriter, r *http.Request, dev *cradle.Device, op string, err error) {
	h.logger.Warn("attestation refused", "serial", dev.Serial, "op", op, "err", err)
	h.audit(r.Context(), dev.TenantID, "device:"+dev.Serial+"(device)", cradle.AuditEvent{Action: "device.attestation.refused",
		Subject: "device:" + dev.Serial, Details: map[string]string{"step": op, "reason": cradle.ErrorMessage(err)}})
	writeDeviceError(w, h.logger, err)
}

// attestationState is the device's attestation as `device show` prints
// it: "tpm (2026-…)" or "not attested".
func attestationState(labels map[string]string) string {
	m := labels[labelAttested]
	if m == "" {
		return "not attested"
	}
	if at := labels[labelAttestedAt]; at != "" {
		return m + " (" + at + ")"
	}
	return m
}
