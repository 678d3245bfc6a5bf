package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"cradle"
	"cradle/internal/mqttapi"
)

// revocations is the store's revocation notifier on a server with a PKI:
// whatever revoked certificates (an operator, a device revocation, a
// move to rma, decommissioning), the CRLs are regenerated, the OCSP
// answers invalidated and the devices' live MQTT sessions closed before
// the revoking call returns. The other channels (HTTPS device API, EST,
// Mender and hawkBit tokens, hawkBit client certificates) check the store
// on every request; the token cache of the foreign APIs is flushed, since
// a device revoked this way loses its tokens in the same transaction.
func (d *deviceListener) revocations(certs []*cradle.Certificate) {
	start := time.Now()
	if d.protocols != nil {
		d.protocols.Cache.Flush()
	}
	d.authority.Revoked(context.Background(), certs)
	closed := 0
	if d.mqtt != nil {
		seen := map[mqttapi.Device]bool{}
		for _, c := range certs {
			dev := mqttapi.Device{TenantID: c.TenantID, Serial: c.DeviceSerial}
			if c.DeviceSerial == "" || seen[dev] {
				continue
			}
			seen[dev] = true
			closed += d.mqtt.Disconnect(dev)
		}
	}
	coapClosed := 0
	if d.coap != nil { // its DTLS sessions that presented a revoked certificate
		serials := make([]string, len(certs))
		for i, c := range certs {
			serials[i] = c.Serial
		}
		coapClosed = d.coap.Disconnect(serials...)
	}
	d.logger.Info("revocation applied", "certificates", len(certs), "mqtt_sessions_closed", closed, "coap_sessions_closed", coapClosed, "took", time.Since(start))
}

// deviceRevokeCmd is `cradle device revoke`.
func (a *app) deviceRevokeCmd() *cobra.Command {
	var (
		selector, reason string
		jsonFlag         bool
	)
	cmd := &cobra.Command{
		Use:   "revoke (SERIAL | --selector SELECTOR) --reason REASON",
		Short: "Revoke a device, or every device a label selector matches: all its credentials at once",
		Long: `Revoke every credential of a device: every certificate (its IDevID too, so that
it can never enroll again), every device token (Mender session tokens, hawkBit
target tokens) and every Mender auth set bound to it (rejected). Before the
command returns, the CRL is regenerated, the OCSP responder answers revoked and
the device's live MQTT sessions are closed; every other channel refuses the
device's next request.

A revoked device is also taken out of service in the same transaction, so that
no path that checks only its state (a tenant's hawkBit gateway token) lets it on:
deployed → suspended, provisioned → rma, recorded in the device's history with
the reason "credentials revoked: <reason>". Other states stay. To bring it back,
an operator moves it to rma and the factory re-provisions it.

With --selector, every device of the tenant whose labels match is revoked in
one transaction, with one audit entry naming them all.

Reasons (RFC 5280): unspecified, keyCompromise, cACompromise, affiliationChanged,
superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.

To revoke one certificate only, use cradle pki revoke --serial.`,
		Example: `  cradle device revoke SN-0001 --reason keyCompromise
  cradle device revoke --selector batch=B-2648 --reason keyCompromise`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == (selector != "") {
				return errors.New("give either a device serial or --selector")
			}
			r, err := cradle.ParseRevocationReason(reason)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if selector != "" {
				b, err := cl.RevokeDevices(cmd.Context(), selector, r)
				if err != nil {
					return err
				}
				if jsonFlag {
					return writeJSON(a.stdout, b)
				}
				fmt.Fprintf(a.stdout, "revoked %s matching %s (%s): %s, %s, %s rejected; %d suspended, %d moved to rma\n", count(len(b.Devices), "device"), b.Selector, b.Reason,
					count(b.Certificates, "certificate"), count(b.Tokens, "device token"), count(b.AuthSets, "Mender auth set"), b.Suspended, b.RMA)
				return nil
			}
			out, err := cl.RevokeDevice(cmd.Context(), args[0], r)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, out)
			}
			fmt.Fprintf(a.stdout, "revoked device %s (%s): %s; device now %s\n", out.Serial, out.Reason, count(len(out.Revoked), "credential"), out.State)
			if len(out.Revoked) == 0 {
				return nil
			}
			t := newTable(a.stdout, "KIND", "ID", "REVOKED")
			for _, c := range out.Revoked {
				t.row(c.Kind, c.ID, formatTime(c.RevokedAt))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&selector, "selector", "", "revoke every device whose labels match this selector")
	cmd.Flags().StringVar(&reason, "reason", "", "RFC 5280 reason (required)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print JSON")
	cmd.MarkFlagRequired("reason")
	cmd.RegisterFlagCompletionFunc("reason", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
			"cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise"}, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}
