package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/httpapi"
)

// deviceDecommissionCmd is "cradle device decommission": ask for a
// device's decommissioning, approve one, show it, and get its certificate.
func (a *app) deviceDecommissionCmd() *cobra.Command {
	var (
		reason   string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "decommission SERIAL --reason R",
		Short: "Decommission a device for good (admin): revoke everything, eol, signed wipe",
		Long: `Decommission a device for good. At once, whether or not the device is online:
every certificate of the device (its IDevID too) is revoked for
cessationOfOperation, every device token revoked and Mender auth set rejected,
the device moves to eol (its live sessions close) and a signed wipe command
waits for it. When the device comes back it gets the wipe command (and nothing
else), sends a tombstone signed with its key, and erases itself.

When the tenant's policy wants two approvers ("cradle policy set
--decommission-approvers 2"), the request waits until a second admin runs
"cradle device decommission approve SERIAL".`,
		Example: `  cradle device decommission SX-2648-00001 --reason "end of service"
  cradle device decommission approve SX-2648-00001
  cradle device decommission show SX-2648-00001
  cradle device decommission certificate SX-2648-00001 --html -o certificate.html`,
		Args: cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Decommission, error) {
			if reason == "" {
				return nil, fmt.Errorf("a decommissioning needs --reason: it goes into the certificate")
			}
			return cl.RequestDecommission(ctx, args[0], reason)
		}, a.writeDecommission),
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the device is decommissioned (required; in the certificate)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the record as JSON")
	cmd.AddCommand(a.decommissionApproveCmd(), a.decommissionShowCmd(), a.decommissionCertificateCmd())
	return cmd
}

func (a *app) decommissionApproveCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "approve SERIAL",
		Short: "Approve and execute a decommissioning another admin asked for",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Decommission, error) {
			return cl.ApproveDecommission(ctx, args[0])
		}, a.writeDecommission),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the record as JSON")
	return cmd
}

func (a *app) decommissionShowCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "show SERIAL",
		Short: "Show a device's decommissioning: state, what was revoked, the wipe",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Decommission, error) {
			return cl.FindDecommission(ctx, args[0])
		}, a.writeDecommission),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the record as JSON")
	return cmd
}

func (a *app) decommissionCertificateCmd() *cobra.Command {
	var (
		html   bool
		output string
	)
	cmd := &cobra.Command{
		Use:   "certificate SERIAL [--html] [-o FILE]",
		Short: "Get the signed decommissioning certificate (JSON, or a printable HTML page)",
		Long: `Get the decommissioning certificate: the record, the device and the audit
entries of every step, signed with the server's audit key (Ed25519 over the
JSON with key_id and signature empty). --html gets a printable page made from
it instead.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			var data []byte
			if html {
				if data, err = cl.DecommissionCertificatePage(cmd.Context(), args[0]); err != nil {
					return err
				}
			} else {
				c, err := cl.DecommissionCertificate(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				var b bytes.Buffer
				if err := writeJSON(&b, c); err != nil {
					return err
				}
				data = b.Bytes()
			}
			if output == "" {
				_, err := a.stdout.Write(data)
				return err
			}
			return atomicfile.WriteFile(output, data, 0o644)
		},
	}
	cmd.Flags().BoolVar(&html, "html", false, "the printable HTML page instead of the JSON")
	cmd.Flags().StringVarP(&output, "output", "o", "", "write to FILE instead of stdout")
	return cmd
}

func (a *app) writeDecommission(x *cradle.Decommission) error {
	t := newTable(a.stdout)
	t.row("serial:", x.Serial)
	t.row("state:", string(x.State))
	t.row("reason:", x.Reason)
	t.row("requested:", x.RequestedAt.Format(time.RFC3339)+" by "+x.RequestedBy)
	if x.ApprovedAt != nil {
		t.row("approved:", x.ApprovedAt.Format(time.RFC3339)+" by "+x.ApprovedBy)
	}
	if x.ExecutedAt != nil {
		t.row("revoked:", x.ExecutedAt.Format(time.RFC3339)+", "+strconv.Itoa(len(x.Revoked))+" credentials")
	}
	for _, c := range x.Revoked {
		t.row("", c.Kind+" "+c.ID)
	}
	if x.CommandID != "" {
		t.row("wipe command:", x.CommandID)
	}
	switch {
	case x.ConfirmedAt != nil:
		t.row("confirmed:", x.ConfirmedAt.Format(time.RFC3339)+": device confirmed it is erasing (signed tombstone received, "+strconv.Itoa(len(x.Tombstone.Erased))+" objects to erase)")
	case len(x.Compromised) > 0:
		t.row("compromised:", strings.Join(x.Compromised, ", ")+" revoked again for keyCompromise: no tombstone can confirm the erase any more")
	case x.State == cradle.DecommissionAwaitingApproval:
		t.row("next:", "a second admin runs: cradle device decommission approve "+x.Serial)
	default:
		t.row("next:", "the device fetches its wipe command and sends its tombstone when it comes back")
	}
	return t.flush()
}
