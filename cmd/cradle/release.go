package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"cradle"
	"cradle/internal/httpapi"
)

// releaseClientCmds are the release commands that are clients of the
// server: uploads, the release records and their life, image keys and the
// TUF repository's status.
func (a *app) releaseClientCmds() []*cobra.Command {
	cmds := []*cobra.Command{a.releaseUploadCmd(), a.releaseSignCmd(), a.releaseListCmd(), a.releaseShowCmd(), a.releaseFlagCmd(),
		a.releaseStateCmd("deprecate", "Deprecate a release: still installable, but no new rollout may use it",
			func(ctx context.Context, cl *httpapi.Client, id, reason string) (*cradle.Release, error) {
				return cl.DeprecateRelease(ctx, id, reason)
			}),
		a.releaseStateCmd("yank", "Yank a release: remove it from the TUF repository and abort its active rollouts (final)",
			func(ctx context.Context, cl *httpapi.Client, id, reason string) (*cradle.Release, error) {
				return cl.YankRelease(ctx, id, reason)
			}),
		a.releaseKeyCmd(), a.releaseTUFCmd()}
	for _, c := range cmds {
		a.addClientFlags(c)
	}
	return cmds
}

// writeRelease writes one release as aligned "field: value" lines.
func (a *app) writeRelease(r *cradle.Release) error {
	t := newTable(a.stdout)
	t.row("id:", r.ID)
	t.row("model:", r.Model)
	t.row("version:", r.Version)
	t.row("hardware revisions:", orDash(strings.Join(r.HardwareRevisions, ",")))
	t.row("kind:", string(r.Kind))
	t.row("state:", string(r.State))
	if r.Reason != "" {
		t.row("reason:", r.Reason)
	}
	if r.Remediation {
		t.row("remediation:", "yes (suspended devices receive it)")
	}
	t.row("file:", r.FileName)
	t.row("size:", fmt.Sprintf("%d (%s)", r.Size, humanBytes(r.Size)))
	t.row("sha256:", r.SHA256)
	t.row("security counter:", strconv.FormatUint(uint64(r.SecurityCounter), 10))
	t.row("image key:", orDash(r.ImageKey))
	t.row("target path:", orDash(r.TargetPath))
	for _, d := range r.Deltas {
		t.row("delta:", fmt.Sprintf("from %s (%s): %s, %s", d.FromRelease, shortHash(d.FromSHA256), humanBytes(d.Size), d.TargetPath))
	}
	t.row("created:", formatTime(r.CreatedAt)+" by "+r.CreatedBy)
	t.row("signed:", formatTime(r.SignedAt))
	if r.Notes != "" {
		t.row("notes:", r.Notes)
	}
	return t.flush()
}

func shortHash(h string) string {
	if len(h) > 12 {
		return h[:12]
	}
	return h
}

// fileDigest returns the SHA-256 (hex) and size of the file f, and leaves f
// at its start again.
func fileDigest(f *os.File) (string, int64, error) {
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", f.Name(), err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

func (a *app) releaseUploadCmd() *cobra.Command {
	var (
		jsonFlag, sign, remediation bool
		model, version, kind, notes string
		fileName, secCnt            string
		hardwareRevisions           []string
	)
	cmd := &cobra.Command{
		Use:   "upload FILE --model M --version V [--hardware-revision R]... [--kind K] [--security-counter N] [--notes TEXT] [--sign]",
		Short: "Upload an image or artifact as a new release; --sign also signs it into the TUF repository",
		Long: `Upload an image or artifact as a new release. The file's SHA-256 and size are
computed here and checked by the server, which stores nothing when the bytes it
received differ. An MCUboot image must be signed by an image key of the model
(cradle release key add) and carries its own security counter; a Mender
artifact (.mender), a SWUpdate image (.swu) or another file takes
--security-counter. The kind is recognised unless --kind says it.`,
		Example: `  cradle release upload zephyr.signed.bin --model gw-100 --version 1.4.0 --sign
  cradle release upload core-image.mender --model rpi4 --version 2026.01 --security-counter 7`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if model == "" || version == "" {
				return fmt.Errorf("--model and --version are required")
			}
			u := cradle.ReleaseUpload{Model: model, Version: version, HardwareRevisions: hardwareRevisions,
				Kind: cradle.ReleaseKind(kind), FileName: fileName, Notes: notes, Sign: sign, Remediation: remediation}
			if kind != "" && !slices.Contains(cradle.ReleaseKinds, u.Kind) {
				return fmt.Errorf("invalid --kind %q: use mcuboot, mender, swupdate or file", kind)
			}
			if secCnt != "" {
				n, err := parseUint("--security-counter", secCnt, 32)
				if err != nil {
					return err
				}
				u.SecurityCounter = uint32(n)
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			if u.SHA256, u.Size, err = fileDigest(f); err != nil {
				return err
			}
			if u.FileName == "" {
				u.FileName = filepath.Base(args[0])
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			var body io.Reader = f
			if isTerminal(a.stderr) {
				p := newProgress(f, a.stderr)
				defer p.stop()
				body = p
			}
			rel, err := cl.UploadRelease(cmd.Context(), u, body)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, rel)
			}
			return a.writeRelease(rel)
		},
	}
	cmd.Flags().StringVar(&model, "model", "", "the device model it is for (required)")
	cmd.Flags().StringVar(&version, "version", "", "its version, unique per model (required)")
	cmd.Flags().StringArrayVar(&hardwareRevisions, "hardware-revision", nil, "a board revision it runs on; repeat for more (default: every revision)")
	cmd.Flags().StringVar(&kind, "kind", "", "mcuboot, mender, swupdate or file (default: recognised from the content)")
	cmd.Flags().StringVar(&secCnt, "security-counter", "", "anti-rollback counter of a foreign artifact or file; an MCUboot image's own when given must match")
	cmd.Flags().StringVar(&notes, "notes", "", "release notes")
	cmd.Flags().StringVar(&fileName, "file-name", "", "the name in the TUF target path <model>/<version>/<name> (default: the file's base name)")
	cmd.Flags().BoolVar(&sign, "sign", false, "sign it into the TUF repository right after the upload")
	cmd.Flags().BoolVar(&remediation, "remediation", false, "flag it as a remediation: the only kind of update a suspended device receives")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the release as JSON")
	cmd.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions([]string{"mcuboot", "mender", "swupdate", "file"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func (a *app) releaseSignCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "sign ID",
		Short: "Sign an uploaded release into the TUF repository, with a delta from its predecessor when it pays off",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Release, error) {
			return cl.SignRelease(ctx, args[0])
		}, a.writeRelease),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the release as JSON")
	return cmd
}

// releaseFlagCmd is "cradle release flag ID --remediation[=false]".
func (a *app) releaseFlagCmd() *cobra.Command {
	var jsonFlag, remediation bool
	cmd := &cobra.Command{
		Use:   "flag ID --remediation[=false]",
		Short: "Flag a release as remediation (the only updates suspended devices receive), or clear the flag",
		Long: `Flag a release as remediation, or clear the flag with --remediation=false.
A suspended (quarantined) device receives only remediation updates: a rollout
of a remediation release targets suspended devices as well as deployed ones,
a rollout of any other release skips them. The change is audited.`,
		Example: `  cradle release flag rel_0123456789abcdef0123 --remediation
  cradle release flag rel_0123456789abcdef0123 --remediation=false`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !cmd.Flags().Changed("remediation") {
				return fmt.Errorf("--remediation is required: --remediation flags the release, --remediation=false clears the flag")
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Release, error) {
				return cl.SetReleaseRemediation(ctx, args[0], remediation)
			}, a.writeRelease)(cmd, args)
		},
	}
	cmd.Flags().BoolVar(&remediation, "remediation", false, "flag the release as remediation (=false clears the flag)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the release as JSON")
	return cmd
}

func (a *app) releaseShowCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "show ID",
		Short: "Show a release",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Release, error) {
			return cl.FindRelease(ctx, args[0])
		}, a.writeRelease),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the release as JSON")
	return cmd
}

func (a *app) releaseListCmd() *cobra.Command {
	var (
		jsonFlag     bool
		model, state string
		limit        int
	)
	cmd := &cobra.Command{
		Use:   "list [--model M] [--state S]",
		Short: "List releases, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkLimit(cmd, limit); err != nil {
				return err
			}
			f := cradle.ReleaseFilter{Model: model, Limit: limit}
			if state != "" {
				st := cradle.ReleaseState(state)
				f.State = &st
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			rs, err := cl.FindReleases(cmd.Context(), f)
			if err != nil {
				return err
			}
			if rs == nil {
				rs = []*cradle.Release{}
			}
			if jsonFlag {
				return writeJSON(a.stdout, map[string]any{"releases": rs})
			}
			t := newTable(a.stdout, "ID", "MODEL", "VERSION", "KIND", "STATE", "SIZE", "SEC", "CREATED")
			for _, r := range rs {
				t.row(r.ID, r.Model, r.Version, string(r.Kind), string(r.State), humanBytes(r.Size),
					strconv.FormatUint(uint64(r.SecurityCounter), 10), formatTime(r.CreatedAt))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&model, "model", "", "only releases of this model")
	cmd.Flags().StringVar(&state, "state", "", "only releases in this state: uploaded, signed, deprecated or yanked")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many (default: the server's page size)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"releases":[…]}`)
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions([]string{"uploaded", "signed", "deprecated", "yanked"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// releaseStateCmd is deprecate or yank: ID and a required --reason.
func (a *app) releaseStateCmd(verb, short string, change func(ctx context.Context, cl *httpapi.Client, id, reason string) (*cradle.Release, error)) *cobra.Command {
	var jsonFlag bool
	var reason string
	cmd := &cobra.Command{
		Use:   verb + " ID --reason TEXT",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if strings.TrimSpace(reason) == "" {
				return fmt.Errorf("--reason is required: say why the release is %sd", strings.TrimSuffix(verb, "e"))
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Release, error) {
				return change(ctx, cl, args[0], reason)
			}, a.writeRelease)(cmd, args)
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (required; kept on the release and in the audit log)")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the release as JSON")
	return cmd
}

// releaseKeyCmd is "cradle release key": the image keys.
func (a *app) releaseKeyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "key",
		Short: "The public keys trusted to sign a model's MCUboot images",
	}
	var (
		jsonFlag    bool
		model, name string
	)
	add := &cobra.Command{
		Use:   "add --model M FILE.pem [--name NAME]",
		Short: "Trust a public key (PEM, ECDSA P-256 or Ed25519) for the images of a model",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if model == "" {
				return fmt.Errorf("--model is required")
			}
			pemData, err := a.readDoc(args[0], 64<<10)
			if err != nil {
				return err
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, _ []string) (*cradle.ImageKey, error) {
				return cl.AddImageKey(ctx, cradle.ImageKey{Model: model, PublicKey: string(pemData), Name: name})
			}, a.writeImageKey)(cmd, args)
		},
	}
	add.Flags().StringVar(&model, "model", "", "the model whose images it signs (required)")
	add.Flags().StringVar(&name, "name", "", "a name for people")
	add.Flags().BoolVar(&jsonFlag, "json", false, "print the key as JSON")
	var listModel string
	list := &cobra.Command{
		Use:   "list [--model M]",
		Short: "List the trusted image keys",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			ks, err := cl.FindImageKeys(cmd.Context(), listModel)
			if err != nil {
				return err
			}
			if ks == nil {
				ks = []*cradle.ImageKey{}
			}
			if jsonFlag {
				return writeJSON(a.stdout, map[string]any{"keys": ks})
			}
			t := newTable(a.stdout, "FINGERPRINT", "MODEL", "NAME", "CREATED")
			for _, k := range ks {
				t.row(k.Fingerprint, k.Model, orDash(k.Name), formatTime(k.CreatedAt))
			}
			return t.flush()
		},
	}
	list.Flags().StringVar(&listModel, "model", "", "only keys of this model")
	list.Flags().BoolVar(&jsonFlag, "json", false, `print {"keys":[…]}`)
	remove := &cobra.Command{
		Use:   "remove FINGERPRINT",
		Short: "Stop trusting an image key; images it signed can no longer be uploaded",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.RemoveImageKey(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "removed image key %s\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(add, list, remove)
	return cmd
}

func (a *app) writeImageKey(k *cradle.ImageKey) error {
	t := newTable(a.stdout)
	t.row("fingerprint:", k.Fingerprint)
	t.row("model:", k.Model)
	t.row("name:", orDash(k.Name))
	t.row("created:", formatTime(k.CreatedAt)+" by "+k.CreatedBy)
	return t.flush()
}

func (a *app) releaseTUFCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "tuf",
		Short: "Show the tenant's TUF repository: each role's version, expiry and keys, and the number of targets",
		Args:  cobra.NoArgs,
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, _ []string) (*cradle.RepositoryStatus, error) {
			return cl.RepositoryStatus(ctx)
		}, a.writeRepositoryStatus),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the status as JSON")
	return cmd
}

// tufRoles is the order the roles are shown in.
var tufRoles = []string{"root", "targets", "snapshot", "timestamp"}

func (a *app) writeRepositoryStatus(st *cradle.RepositoryStatus) error {
	t := newTable(a.stdout, "ROLE", "VERSION", "EXPIRES", "THRESHOLD", "KEYS")
	var extra []string
	for name := range st.Roles {
		if !slices.Contains(tufRoles, name) {
			extra = append(extra, name)
		}
	}
	slices.Sort(extra)
	names := append(slices.Clone(tufRoles), extra...)
	for _, name := range names {
		r, ok := st.Roles[name]
		if !ok {
			continue
		}
		keys := make([]string, len(r.KeyIDs))
		for i, k := range r.KeyIDs {
			keys[i] = shortHash(k)
		}
		t.row(name, strconv.FormatInt(r.Version, 10), formatTime(r.Expires), strconv.Itoa(r.Threshold), orDash(strings.Join(keys, ",")))
	}
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(a.stdout, "%s\n", count(st.Targets, "target"))
	return err
}
