package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"cradle"

	"github.com/spf13/cobra"
)

// The commands of devices that run a foreign update client: Mender auth
// sets (device mender …), hawkBit device tokens (device token …), and what
// such devices report (device attributes, device logs). All are clients of
// the operator API.

func (a *app) deviceMenderCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "mender",
		Short: "Admit Mender devices: list, accept, reject and preauthorize their auth sets",
		Long: `A Mender client asks to be admitted with an auth request: its identity data
(from its identity script, e.g. {"mac":"02:00:00:00:00:01"}) and its public key.
Each distinct (identity, key) pair is an auth set. A set is pending until an
operator accepts it for a device (created when no device has the serial) or
rejects it; it is accepted at once when the identity's MAC is a MAC of a
provisioned or deployed device of the tenant. Preauthorizing admits an
existing device's identity and key before its first request.`,
	}
	cmd.AddCommand(a.menderListCmd(), a.menderShowCmd(), a.menderAcceptCmd(), a.menderRejectCmd(), a.menderPreauthorizeCmd())
	return cmd
}

var menderStatuses = []string{string(cradle.MenderPending), string(cradle.MenderAccepted), string(cradle.MenderRejected), string(cradle.MenderPreauthorized)}

// menderAuthSetList is the API's listing object, and --json's output.
type menderAuthSetList struct {
	AuthSets []*cradle.MenderAuthSet `json:"auth_sets"`
}

func (a *app) menderListCmd() *cobra.Command {
	var (
		status, serial string
		limit          int
		jsonFlag       bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List Mender auth sets, newest first",
		Example: `  cradle device mender list --status pending
  cradle device mender list --serial SN-0001 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkLimit(cmd, limit); err != nil {
				return err
			}
			f := cradle.MenderAuthFilter{Serial: serial, Limit: limit}
			if status != "" {
				st := cradle.MenderAuthStatus(status)
				if !slices.Contains(menderStatuses, status) {
					return fmt.Errorf("unknown --status %q; use %s", status, strings.Join(menderStatuses, ", "))
				}
				f.Status = &st
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			sets, err := cl.FindMenderAuthSets(cmd.Context(), f)
			if err != nil {
				return err
			}
			if sets == nil {
				sets = []*cradle.MenderAuthSet{}
			}
			if jsonFlag {
				return writeJSON(a.stdout, menderAuthSetList{AuthSets: sets})
			}
			t := newTable(a.stdout, "ID", "STATUS", "DEVICE", "IDENTITY", "KEY", "UPDATED")
			for _, s := range sets {
				t.row(s.ID, string(s.Status), orDash(s.DeviceSerial), s.IDData, shortFingerprint(s.KeyFingerprint), formatTime(s.UpdatedAt))
			}
			return t.flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&status, "status", "", "only sets in this status: "+strings.Join(menderStatuses, ", "))
	f.StringVar(&serial, "serial", "", "only sets bound to this device")
	f.IntVar(&limit, "limit", 0, fmt.Sprintf("at most this many (default %d, at most %d)", cradle.DefaultPageSize, cradle.MaxPageSize))
	f.BoolVar(&jsonFlag, "json", false, `print {"auth_sets":[…]}`)
	cmd.RegisterFlagCompletionFunc("status", cobra.FixedCompletions(menderStatuses, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// shortFingerprint is the start of a key fingerprint, enough to tell keys
// apart in a table; show prints it whole.
func shortFingerprint(fp string) string {
	if len(fp) > 16 {
		return fp[:16] + "…"
	}
	return orDash(fp)
}

func writeMenderAuthSet(w io.Writer, s *cradle.MenderAuthSet) error {
	t := newTable(w)
	t.row("id:", s.ID)
	t.row("status:", string(s.Status))
	t.row("device:", orDash(s.DeviceSerial))
	t.row("identity:", s.IDData)
	t.row("key fingerprint:", s.KeyFingerprint)
	t.row("decided by:", orDash(s.DecidedBy))
	t.row("reason:", orDash(s.Reason))
	t.row("created:", formatTime(s.CreatedAt))
	t.row("updated:", formatTime(s.UpdatedAt))
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "\n%s", s.PublicKey)
	return err
}

func (a *app) menderShowCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a Mender auth set with its public key",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			s, err := cl.FindMenderAuthSet(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, s)
			}
			return writeMenderAuthSet(a.stdout, s)
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the auth set as JSON")
	return cmd
}

func (a *app) menderAcceptCmd() *cobra.Command {
	var (
		acc      cradle.MenderAccept
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "accept ID --serial SERIAL [--model MODEL]",
		Short: "Accept a pending or rejected auth set for a device",
		Long: `Accept a pending or rejected Mender auth set for a device. When no device has
the serial, one is created (state provisioned) with --model, which is then
required; it becomes deployed at its next auth request. Another key accepted
for the same device is rejected and its sessions are ended: one key per device.`,
		Example: `  cradle device mender accept mas_0123456789abcdef --serial SN-0001 --model gw-100`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			s, err := cl.AcceptMenderAuthSet(cmd.Context(), args[0], acc)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, s)
			}
			_, err = fmt.Fprintf(a.stdout, "accepted %s for device %s\n", s.ID, s.DeviceSerial)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&acc.Serial, "serial", "", "the device to bind the set to (required)")
	f.StringVar(&acc.Model, "model", "", "model of the device to create, when no device has the serial")
	f.StringVar(&acc.HardwareRevision, "hardware-revision", "", "hardware revision of the device to create")
	f.BoolVar(&jsonFlag, "json", false, "print the auth set as JSON")
	cmd.MarkFlagRequired("serial")
	return cmd
}

func (a *app) menderRejectCmd() *cobra.Command {
	var (
		reason   string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:     "reject ID --reason REASON",
		Short:   "Reject an auth set; its device's requests with that key are refused",
		Example: `  cradle device mender reject mas_0123456789abcdef --reason "unknown device"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			s, err := cl.RejectMenderAuthSet(cmd.Context(), args[0], reason)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, s)
			}
			_, err = fmt.Fprintf(a.stdout, "rejected %s\n", s.ID)
			return err
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept on the set and in the audit log; required)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the auth set as JSON")
	cmd.MarkFlagRequired("reason")
	return cmd
}

func (a *app) menderPreauthorizeCmd() *cobra.Command {
	var (
		p        cradle.MenderPreauth
		keyFile  string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "preauthorize --serial SERIAL --id-data JSON --pubkey FILE",
		Short: "Admit an existing device's Mender identity and key before it first asks",
		Long: `Admit an existing device's Mender identity and public key before its first
auth request, which then gets a token at once. --id-data is the identity as the
device's identity script makes it, a JSON object of strings (key order and
spacing do not matter). --pubkey is the device's public key as PKIX PEM ("-----BEGIN
PUBLIC KEY-----"), RSA of 2048 bits or more, ECDSA P-256 or Ed25519; - reads stdin.`,
		Example: `  cradle device mender preauthorize --serial SN-0001 --id-data '{"mac":"02:00:00:00:00:01"}' --pubkey device.pub.pem`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var r io.Reader = a.stdin
			if keyFile != "-" {
				f, err := os.Open(keyFile)
				if err != nil {
					return err
				}
				defer f.Close()
				r = f
			}
			key, err := io.ReadAll(io.LimitReader(r, cradle.MaxMenderPublicKey+1))
			if err != nil {
				return fmt.Errorf("reading --pubkey %s: %w", keyFile, err)
			}
			if len(key) > cradle.MaxMenderPublicKey {
				return fmt.Errorf("--pubkey %s is larger than %d bytes: not a public key", keyFile, cradle.MaxMenderPublicKey)
			}
			p.PublicKey = string(key)
			cl, err := a.client()
			if err != nil {
				return err
			}
			s, err := cl.PreauthorizeMender(cmd.Context(), p)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, s)
			}
			_, err = fmt.Fprintf(a.stdout, "preauthorized %s for device %s\n", s.ID, s.DeviceSerial)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&p.Serial, "serial", "", "the device (required; it must exist)")
	f.StringVar(&p.IDData, "id-data", "", `identity data, a JSON object of strings (required)`)
	f.StringVar(&keyFile, "pubkey", "", "file with the device's PKIX PEM public key, - for stdin (required)")
	f.BoolVar(&jsonFlag, "json", false, "print the auth set as JSON")
	cmd.MarkFlagRequired("serial")
	cmd.MarkFlagRequired("id-data")
	cmd.MarkFlagRequired("pubkey")
	return cmd
}

func (a *app) deviceTokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke device tokens (hawkBit target and gateway, Mender tenant)",
		Long: `Device tokens authenticate hawkBit DDI clients (SWUpdate's suricatta,
rauc-hawkbit-updater): a target token belongs to one device and is sent as
"Authorization: TargetToken <secret>"; a gateway token belongs to the tenant
and is sent as "Authorization: GatewayToken <secret>" by any of its devices.
A Mender tenant token (--mender-tenant) goes into mender.conf as TenantToken:
it names the tenant a Mender device asks to be admitted in, and grants
nothing else. Only a hash of each secret is stored.
Mender session tokens, which the server issues at login, are listed too.
Creating and revoking needs an admin token; admins and auditors may list.
API tokens for people and scripts are "cradle token".`,
	}
	cmd.AddCommand(a.deviceTokenCreateCmd(), a.deviceTokenListCmd(), a.deviceTokenRevokeCmd())
	return cmd
}

func (a *app) deviceTokenCreateCmd() *cobra.Command {
	var (
		serial, name          string
		gateway, menderTenant bool
		expires               time.Duration
		jsonFlag              bool
	)
	cmd := &cobra.Command{
		Use:   "create (--serial SERIAL | --gateway | --mender-tenant) [--name NAME] [--expires DURATION]",
		Short: "Create a target token of a device, a gateway token or a Mender tenant token; its secret is shown once",
		Example: `  cradle device token create --serial SN-0001 --name suricatta
  cradle device token create --gateway --name line-3 --expires 8760h
  cradle device token create --mender-tenant --name fleet`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := cradle.DeviceTokenCreate{Name: name}
			switch {
			case btoi(gateway)+btoi(menderTenant)+btoi(serial != "") > 1:
				return errors.New("give one of --serial (a target token of that device), --gateway or --mender-tenant (tokens of the tenant)")
			case gateway:
				c.Kind = cradle.TokenGateway
			case menderTenant:
				c.Kind = cradle.TokenMenderTenant
			case serial != "":
				c.Kind, c.Serial = cradle.TokenHawkbitTarget, serial
			default:
				return errors.New("say whose token: --serial SERIAL for a device's target token, --gateway for the tenant's gateway token, or --mender-tenant for its Mender tenant token")
			}
			if expires < 0 {
				return fmt.Errorf("--expires %s is negative", expires)
			}
			if expires > 0 {
				t := time.Now().Add(expires).UTC()
				c.ExpiresAt = &t
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			it, err := cl.CreateDeviceToken(cmd.Context(), c)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, it)
			}
			return writeDeviceTokenCreated(a.stdout, it)
		},
	}
	f := cmd.Flags()
	f.StringVar(&serial, "serial", "", "the device of a target token")
	f.BoolVar(&gateway, "gateway", false, "a hawkBit gateway token of your tenant, for any of its devices")
	f.BoolVar(&menderTenant, "mender-tenant", false, "a Mender tenant token of your tenant: lets devices ask to be admitted, nothing else")
	f.StringVar(&name, "name", "", "a label for people, e.g. what uses it")
	f.DurationVar(&expires, "expires", 0, "lifetime, e.g. 720h (default: never expires)")
	f.BoolVar(&jsonFlag, "json", false, `print {"token":{…},"secret":"…"}`)
	return cmd
}

func writeDeviceTokenCreated(w io.Writer, it *cradle.IssuedToken) error {
	t := newTable(w)
	t.row("id:", it.Token.ID)
	t.row("kind:", string(it.Token.Kind))
	t.row("device:", orDash(it.Token.DeviceSerial))
	t.row("name:", orDash(it.Token.Name))
	t.row("expires:", formatTimePtr(it.Token.ExpiresAt))
	t.row("secret:", it.Secret)
	if err := t.flush(); err != nil {
		return err
	}
	if it.Token.Kind == cradle.TokenMenderTenant {
		_, err := fmt.Fprintf(w, "\nThe secret is shown only this once. Put it in the device's mender.conf as\n\"TenantToken\": \"<secret>\"\n")
		return err
	}
	scheme := "TargetToken"
	if it.Token.Kind == cradle.TokenGateway {
		scheme = "GatewayToken"
	}
	_, err := fmt.Fprintf(w, "\nThe secret is shown only this once; keep it safe. The device sends it as\nAuthorization: %s <secret>\n", scheme)
	return err
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// deviceTokenList is the API's listing object, and --json's output.
type deviceTokenList struct {
	Tokens []*cradle.DeviceToken `json:"tokens"`
}

func (a *app) deviceTokenListCmd() *cobra.Command {
	var (
		serial   string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "list [--serial SERIAL]",
		Short: "List a device's tokens, or without --serial the tenant's gateway and Mender tenant tokens",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			tokens, err := cl.FindDeviceTokens(cmd.Context(), serial)
			if err != nil {
				return err
			}
			now := time.Now()
			return writeList(a.stdout, jsonFlag, tokens, func(l []*cradle.DeviceToken) any { return deviceTokenList{Tokens: l} },
				[]string{"ID", "KIND", "DEVICE", "NAME", "STATUS", "CREATED", "EXPIRES", "CREATED BY"}, func(tok *cradle.DeviceToken) []string {
					return []string{tok.ID, string(tok.Kind), orDash(tok.DeviceSerial), orDash(tok.Name), tokenStatus(tok.RevokedAt, tok.ExpiresAt, now),
						formatTime(tok.CreatedAt), formatTimePtr(tok.ExpiresAt), tok.CreatedBy}
				})
		},
	}
	cmd.Flags().StringVar(&serial, "serial", "", "the device whose tokens to list (default: the tenant's gateway and Mender tenant tokens)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"tokens":[…]}`)
	return cmd
}

func (a *app) deviceTokenRevokeCmd() *cobra.Command {
	var (
		serial   string
		all      bool
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "revoke ID | --serial SERIAL --all",
		Short: "Revoke a device token, or every token of a device",
		Long: `Revoke one device token by its id, or with --serial and --all every live token
of a device (its target tokens and Mender sessions). --all also rejects the
device's accepted and preauthorized Mender keys (reason "tokens revoked"), so
its Mender client cannot log in again until you accept a key
(cradle device mender accept). Requests with a revoked token are refused from
then on; revoking a revoked token changes nothing.`,
		Example: `  cradle device token revoke dtk_0123456789abcdef
  cradle device token revoke --serial SN-0001 --all`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 1 && (serial != "" || all):
				return errors.New("give a token ID, or --serial and --all, not both")
			case len(args) == 0 && serial == "":
				return errors.New("say which token: its ID, or --serial SERIAL --all for every token of a device")
			case len(args) == 0 && !all:
				return fmt.Errorf("--serial %s revokes every token of the device: add --all to say so", serial)
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if len(args) == 1 {
				if err := cl.RevokeDeviceToken(cmd.Context(), args[0]); err != nil {
					return err
				}
				if jsonFlag {
					// Revoking a revoked token succeeds too: say which
					// token, not a count that might be wrong.
					return writeJSON(a.stdout, map[string]string{"id": args[0]})
				}
				_, err = fmt.Fprintf(a.stdout, "revoked %s\n", args[0])
				return err
			}
			n, err := cl.RevokeDeviceTokens(cmd.Context(), serial)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, map[string]int{"revoked": n})
			}
			_, err = fmt.Fprintf(a.stdout, "revoked %s of device %s\n", count(n, "token"), serial)
			return err
		},
	}
	cmd.Flags().StringVar(&serial, "serial", "", "with --all: the device whose tokens to revoke")
	cmd.Flags().BoolVar(&all, "all", false, "revoke every live token of --serial")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"revoked":n} (with --all) or {"id":"…"}`)
	return cmd
}

// attributeList is the API's listing object, and --json's output.
type attributeList struct {
	Attributes []cradle.DeviceAttribute `json:"attributes"`
}

func (a *app) deviceAttributesCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "attributes SERIAL",
		Short: "Show the inventory attributes a Mender or hawkBit device reported",
		Long: `Show the inventory attributes a device reported: a Mender client's inventory
(device_type, artifact_name, mender_client_version and what its inventory
scripts add), or a hawkBit client's configData.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			attrs, err := cl.FindDeviceAttributes(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return writeList(a.stdout, jsonFlag, attrs, func(l []cradle.DeviceAttribute) any { return attributeList{Attributes: l} },
				[]string{"NAME", "VALUE", "UPDATED"}, func(at cradle.DeviceAttribute) []string {
					return []string{at.Name, at.Value, formatTime(at.UpdatedAt)}
				})
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"attributes":[…]}`)
	return cmd
}

// updateLogList is the API's listing object, and --json's output.
type updateLogList struct {
	Logs []*cradle.UpdateLog `json:"logs"`
}

func (a *app) deviceLogsCmd() *cobra.Command {
	var (
		rollout  string
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "logs SERIAL [--rollout ID]",
		Short: "Show the update logs a device sent, newest first",
		Long: `Show the update logs a Mender or hawkBit device sent, one per rollout attempt,
newest first. A Mender log (its JSON messages) is shown one message a line;
any other log as the device sent it.`,
		Example: `  cradle device logs SN-0001 --rollout ro_0123456789abcdef`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			logs, err := cl.FindUpdateLogs(cmd.Context(), args[0], rollout)
			if err != nil {
				return err
			}
			if logs == nil {
				logs = []*cradle.UpdateLog{}
			}
			if jsonFlag {
				return writeJSON(a.stdout, updateLogList{Logs: logs})
			}
			if len(logs) == 0 {
				_, err := fmt.Fprintf(a.stderr, "device %s sent no update logs\n", args[0])
				return err
			}
			for i, l := range logs {
				if i > 0 {
					fmt.Fprintln(a.stdout)
				}
				fmt.Fprintf(a.stdout, "== rollout %s, attempt %s, at %s\n", l.RolloutID, strconv.Itoa(l.Attempt), formatTime(l.At))
				if _, err := io.WriteString(a.stdout, formatUpdateLog(l.Log)); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&rollout, "rollout", "", "only the logs of this rollout")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"logs":[…]}`)
	return cmd
}

// formatUpdateLog renders a Mender deployment log ({"messages":[{"timestamp",
// "level","message"}]}) one message a line, and any other log as it is;
// either ends with a newline.
func formatUpdateLog(log string) string {
	var doc struct {
		Messages []struct {
			Timestamp string `json:"timestamp"`
			Level     string `json:"level"`
			Message   string `json:"message"`
		} `json:"messages"`
	}
	var b strings.Builder
	if err := json.Unmarshal([]byte(log), &doc); err == nil && doc.Messages != nil {
		for _, m := range doc.Messages {
			fmt.Fprintf(&b, "%s %-5s %s\n", m.Timestamp, m.Level, strings.TrimRight(m.Message, "\n"))
		}
		return b.String()
	}
	if log != "" && !strings.HasSuffix(log, "\n") {
		return log + "\n"
	}
	return log
}
