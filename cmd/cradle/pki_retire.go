package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"cradle"
	"cradle/internal/pki"
	"cradle/internal/sqlstore"
)

// Retiring an old device CA after a rotation: `cradle pki ca-status` says
// which device CAs can be retired (no unexpired, unrevoked certificate
// chains to them) or from when; `cradle pki retire-ca NAME` retires one,
// refusing with the count while certificates still depend on it. Both
// work on the data directory (its PKI and its store); the server logs the
// same finding when it refreshes its CRLs (logRetirableCAs).
//
// The rule: a device CA can be retired when it is not the current one, no
// unexpired, unrevoked certificate chains to it (pki.RetireDeviceCA), and
// the store does not show a server still issuing from it
// (pki.Hierarchy.CheckNotIssuing: its certificates recorded after the
// rotation, none of a newer CA since). A running server rereads
// retired.json within retiredCheckInterval, and at each CRL refresh, and
// refuses the retired CA's certificates from then on without a restart
// (deviceListener.reloadRetired); it never retires the CA it issues from.

// caDependents counts the live certificates of every device CA of h in
// the store of db at now.
func caDependents(ctx context.Context, db *sqlstore.DB, h *pki.Hierarchy, now time.Time) (map[string]pki.Dependents, error) {
	store := sqlstore.NewCertificateService(db)
	sys := cradle.NewContextWithActor(ctx, localActor(0))
	return h.Dependents(sys, store.CertificateDependents, now)
}

func (a *app) pkiRetireCACmd() *cobra.Command {
	var lf localFlags
	cmd := &cobra.Command{
		Use:   "retire-ca NAME --data-dir DIR",
		Short: "Retire an old device CA once no valid certificate depends on it",
		Long: `Retire a device CA that a rotation (cradle pki rotate-device-ca) replaced. It is
refused, with the number of certificates and when the last expires, while
unexpired, unrevoked certificates issued by the CA remain (see cradle pki
ca-status). A retired CA is no longer accepted as the issuer of a device
certificate by the device listener, nor served by EST cacerts; its CRL is still
published until the CA certificate expires. It is also refused while the store
shows a server still issuing from the CA: certificates it issued after the
rotation, and none from a newer device CA since (restart cradle serve after
rotate-device-ca). A running cradle serve applies the retirement within a
minute, without a restart. Retirement cannot be undone.`,
		Example: `  cradle pki ca-status --data-dir /var/lib/cradle
  cradle pki retire-ca device-ca --data-dir /var/lib/cradle`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) (err error) {
			if lf.dataDir == "" {
				return errors.New("--data-dir is required")
			}
			dir := pkiDirOf(lf.dataDir)
			h, err := pki.LoadHierarchy(dir)
			if err != nil {
				return fmt.Errorf("retire-ca: %w", err)
			}
			db, err := lf.open(cmd.Context(), a.stderr)
			if err != nil {
				return err
			}
			defer closeStore(db, &err)
			now := time.Now()
			deps, err := caDependents(cmd.Context(), db, h, now)
			if err != nil {
				return fmt.Errorf("retire-ca: %w", err)
			}
			if err := h.RetireDeviceCA(args[0], deps[args[0]], now); err != nil {
				return fmt.Errorf("retire-ca: %s", cradle.ErrorMessage(err))
			}
			sys := cradle.NewContextWithActor(cmd.Context(), localActor(0))
			if err := h.CheckNotIssuing(sys, args[0], sqlstore.NewCertificateService(db).CertificatesIssuedSince); err != nil {
				return fmt.Errorf("retire-ca: %s", cradle.ErrorMessage(err))
			}
			if err := pki.WriteHierarchy(dir, h); err != nil {
				return fmt.Errorf("retire-ca: %w", err)
			}
			ca := h.IssuingCAs()[args[0]]
			w := &errWriter{w: a.stdout}
			w.printf("%s\n", args[0])
			fmt.Fprintf(a.stderr, "Retired device CA %s (%s). A running cradle serve refuses the certificates it issued within a minute.\nIts CRL is published until the CA expires at %s.\n",
				args[0], ca.Subject.CommonName, ca.NotAfter.UTC().Format(time.RFC3339))
			return w.err
		},
	}
	lf.add(cmd)
	return cmd
}

func (a *app) pkiCAStatusCmd() *cobra.Command {
	var (
		lf       localFlags
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "ca-status --data-dir DIR",
		Short: "Show each device CA, the valid certificates that depend on it, and when it can be retired",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			if lf.dataDir == "" {
				return errors.New("--data-dir is required")
			}
			h, err := pki.LoadHierarchy(pkiDirOf(lf.dataDir))
			if err != nil {
				return err
			}
			db, err := lf.open(cmd.Context(), a.stderr)
			if err != nil {
				return err
			}
			defer closeStore(db, &err)
			deps, err := caDependents(cmd.Context(), db, h, time.Now())
			if err != nil {
				return err
			}
			st := h.CAStatus(deps)
			if jsonFlag {
				return writeJSON(a.stdout, map[string]any{"device_cas": st})
			}
			t := newTable(a.stdout, "NAME", "SUBJECT", "STATE", "LIVE", "LAST-EXPIRY", "RETIRE")
			for _, s := range st {
				state, retire := "old", "-"
				switch {
				case s.Current:
					state = "current"
				case s.RetiredAt != nil:
					state = "retired " + formatTime(*s.RetiredAt)
				case s.Retirable:
					retire = "now"
				case s.RetirableAt != nil:
					retire = "after " + formatTime(*s.RetirableAt)
				}
				t.row(s.Name, s.Subject, state, fmt.Sprint(s.Live), formatTimePtr(s.LastExpiry), retire)
			}
			return t.flush()
		},
	}
	lf.add(cmd)
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"device_cas":[…]}`)
	return cmd
}

// logRetirableCAs is the server's check, run with each CRL refresh: it
// logs every old device CA that no valid certificate depends on any more,
// with the command that retires it.
func logRetirableCAs(ctx context.Context, h *pki.Hierarchy, store cradle.CertificateAuthorityStore, now time.Time, logger *slog.Logger) {
	cs, ok := store.(*sqlstore.CertificateService)
	if !ok || len(h.DeviceCAs) < 2 {
		return
	}
	sys := cradle.NewContextWithActor(ctx, cradle.SystemActor(0, "pki"))
	deps, err := h.Dependents(sys, cs.CertificateDependents, now)
	if err != nil {
		logger.Error("counting the certificates of the device CAs", "err", err)
		return
	}
	for _, s := range h.CAStatus(deps) {
		if s.Retirable {
			logger.Info("device CA can be retired: no valid certificate depends on it", "ca", s.Name, "command", "cradle pki retire-ca "+s.Name+" --data-dir DIR")
		}
	}
}
