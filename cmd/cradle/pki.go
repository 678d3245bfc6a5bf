package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"cradle"

	"github.com/spf13/cobra"
)

func (a *app) pkiCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pki",
		Short: "The PKI and device certificates: init, rotate-device-ca, release-signer, record, expiring, show, revoke",
	}
	a.addClientFlags(cmd)
	cmd.AddCommand(a.pkiExpiringCmd(), a.pkiShowCmd(), a.pkiRevokeCmd(), a.pkiRecordCmd(), a.pkiInitCmd(), a.pkiRotateCmd(), a.pkiReleaseSignerCmd(),
		a.pkiRetireCACmd(), a.pkiCAStatusCmd())
	return cmd
}

// certificateList is --json's output of the certificate listings.
type certificateList struct {
	Certificates []*cradle.Certificate `json:"certificates"`
}

// parseWithin reads a span such as 30d, 12h or 90m (days are 24 hours).
func parseWithin(s string) (time.Duration, error) {
	d, ok := spanOf(s)
	if !ok || d < 0 {
		return 0, fmt.Errorf("invalid --within %q: use a span such as 30d, 36h or 90m", s)
	}
	return d, nil
}

func (a *app) writeCertificates(certs []*cradle.Certificate, jsonFlag bool) error {
	if certs == nil {
		certs = []*cradle.Certificate{}
	}
	if jsonFlag {
		return writeJSON(a.stdout, certificateList{Certificates: certs})
	}
	t := newTable(a.stdout, "SERIAL", "DEVICE", "KIND", "STATUS", "NOT AFTER")
	for _, c := range certs {
		t.row(c.Serial, orDash(c.DeviceSerial), string(c.Kind), string(c.Status), formatTime(c.NotAfter))
	}
	return t.flush()
}

func (a *app) pkiExpiringCmd() *cobra.Command {
	var (
		within   string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "expiring --within SPAN",
		Short: "List unrevoked device certificates that expire within a span",
		Long: `List the unrevoked device certificates of your tenant whose notAfter falls within
the span from now, newest first. Agents renew at two thirds of a certificate's
lifetime, so a certificate listed here that is still valid and not superseded
belongs to a device that has not renewed.`,
		Example: `  cradle pki expiring --within 30d
  cradle pki expiring --within 36h --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			d, err := parseWithin(within)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			before := time.Now().Add(d)
			f := cradle.CertificateFilter{ExpiringBefore: &before, Limit: cradle.MaxPageSize}
			all, err := allPages(func(cursor string) ([]*cradle.Certificate, string, error) {
				f.Cursor = cursor
				return cl.FindCertificates(cmd.Context(), f)
			})
			if err != nil {
				return err
			}
			return a.writeCertificates(all, jsonFlag)
		},
	}
	cmd.Flags().StringVar(&within, "within", "30d", "span from now: 30d, 36h, 90m")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print JSON")
	return cmd
}

func (a *app) pkiShowCmd() *cobra.Command {
	var jsonFlag, pemFlag bool
	cmd := &cobra.Command{
		Use:   "show SERIAL",
		Short: "Show a certificate (serial in hex; colons allowed)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			c, err := cl.FindCertificateBySerial(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			switch {
			case pemFlag:
				return pem.Encode(a.stdout, &pem.Block{Type: "CERTIFICATE", Bytes: c.DER})
			case jsonFlag:
				return writeJSON(a.stdout, c)
			}
			t := newTable(a.stdout, "FIELD", "VALUE")
			t.row("serial:", c.Serial)
			t.row("device:", orDash(c.DeviceSerial))
			t.row("kind:", string(c.Kind))
			t.row("subject:", c.Subject)
			t.row("issuer key id:", c.Issuer)
			t.row("valid:", formatTime(c.NotBefore)+" to "+formatTime(c.NotAfter))
			t.row("status:", string(c.Status))
			if c.SupersededBy != "" {
				t.row("superseded by:", c.SupersededBy)
			}
			if c.RevokedAt != nil {
				t.row("revoked:", formatTime(*c.RevokedAt)+" ("+c.Reason.String()+")")
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print JSON")
	cmd.Flags().BoolVar(&pemFlag, "pem", false, "print the certificate in PEM")
	cmd.MarkFlagsMutuallyExclusive("json", "pem")
	return cmd
}

func (a *app) pkiRecordCmd() *cobra.Command {
	var (
		device   string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "record --device SERIAL IDEVID.pem",
		Short: "Record the IDevID the factory gave a device (factory role)",
		Long: `Record a device's IDevID, the certificate the factory station issued it with the
manufacturing CA. A device enrolls (EST simpleenroll) only with an IDevID on record.`,
		Example: `  cradle pki record --device SN-0001 sn-0001-idevid.pem`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if device == "" {
				return errors.New("give the device with --device")
			}
			data, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			b, _ := pem.Decode(data)
			if b == nil || b.Type != "CERTIFICATE" {
				return fmt.Errorf("%s holds no PEM certificate", args[0])
			}
			cert, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			c, err := cl.RecordCertificate(cmd.Context(), device, cradle.CertIDevID, cert)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, c)
			}
			_, err = fmt.Fprintf(a.stdout, "recorded IDevID %s of %s\n", c.Serial, c.DeviceSerial)
			return err
		},
	}
	cmd.Flags().StringVar(&device, "device", "", "the device's serial (required)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print JSON")
	return cmd
}

func (a *app) pkiRevokeCmd() *cobra.Command {
	var (
		serial, device, reason string
		jsonFlag               bool
	)
	cmd := &cobra.Command{
		Use:   "revoke (--serial SERIAL | --device SERIAL) --reason REASON",
		Short: "Revoke a certificate, or every certificate of a device",
		Long: `Revoke one certificate by its serial, or every unexpired, unrevoked certificate
of a device. The CRL and the OCSP responder answer "revoked" from then on.

Reasons (RFC 5280): unspecified, keyCompromise, cACompromise, affiliationChanged,
superseded, cessationOfOperation, certificateHold, privilegeWithdrawn, aACompromise.`,
		Example: `  cradle pki revoke --serial 3f2a…c1 --reason keyCompromise
  cradle pki revoke --device SN-0001 --reason cessationOfOperation`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (serial == "") == (device == "") {
				return errors.New("give either --serial or --device")
			}
			r, err := cradle.ParseRevocationReason(reason)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var revoked []*cradle.Certificate
			if serial != "" {
				c, err := cl.RevokeCertificate(cmd.Context(), serial, r)
				if err != nil {
					return err
				}
				revoked = []*cradle.Certificate{c}
			} else if revoked, err = cl.RevokeDeviceCertificates(cmd.Context(), device, r); err != nil {
				return err
			}
			if jsonFlag {
				return a.writeCertificates(revoked, true)
			}
			fmt.Fprintf(a.stdout, "revoked %s (%s)\n", count(len(revoked), "certificate"), r)
			if len(revoked) == 0 {
				return nil
			}
			return a.writeCertificates(revoked, false)
		},
	}
	cmd.Flags().StringVar(&serial, "serial", "", "the certificate's serial, in hex")
	cmd.Flags().StringVar(&device, "device", "", "revoke every certificate of this device")
	cmd.Flags().StringVar(&reason, "reason", "", "RFC 5280 reason (required)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print JSON")
	cmd.MarkFlagRequired("reason")
	cmd.RegisterFlagCompletionFunc("reason", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
			"cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise"}, cobra.ShellCompDirectiveNoFileComp
	})
	return cmd
}
