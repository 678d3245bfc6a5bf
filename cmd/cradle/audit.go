package main

import (
	"fmt"
	"io"
	"strconv"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/spf13/cobra"
)

func (a *app) auditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Read and verify the tamper-evident audit log",
	}
	a.addClientFlags(cmd)
	cmd.AddCommand(a.auditListCmd(), a.auditVerifyCmd())
	return cmd
}

// auditList is the API's listing object, and --json's output.
type auditList struct {
	Entries   []*cradle.AuditEntry `json:"entries"`
	NextAfter int64                `json:"next_after,omitempty"`
}

func (a *app) auditListCmd() *cobra.Command {
	var (
		f               cradle.AuditFilter
		action, subject string
		jsonFlag        bool
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List audit entries of your tenant, oldest first",
		Example: `  cradle audit list --action device. --limit 20
  cradle audit list --subject device:SN-0001 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkLimit(cmd, f.Limit); err != nil {
				return err
			}
			if f.AfterSeq < 0 {
				return fmt.Errorf("invalid --after %d: use a sequence number ≥ 0", f.AfterSeq)
			}
			if action != "" {
				f.Action = &action
			}
			if subject != "" {
				f.Subject = &subject
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			entries, err := cl.FindAuditEntries(cmd.Context(), f)
			if err != nil {
				return err
			}
			out := auditList{Entries: entries}
			if out.Entries == nil {
				out.Entries = []*cradle.AuditEntry{}
			}
			limit := f.Limit
			if limit == 0 {
				limit = cradle.DefaultPageSize
			}
			if len(entries) > 0 && len(entries) >= limit {
				out.NextAfter = entries[len(entries)-1].Seq
			}
			if jsonFlag {
				return writeJSON(a.stdout, out)
			}
			t := newTable(a.stdout, "SEQ", "TIME", "ACTOR", "ACTION", "SUBJECT")
			for _, e := range out.Entries {
				t.row(strconv.FormatInt(e.Seq, 10), formatTime(e.Time), e.Actor, e.Action, orDash(e.Subject))
			}
			if err := t.flush(); err != nil {
				return err
			}
			if out.NextAfter != 0 {
				fmt.Fprintf(a.stderr, "more entries: add --after %d for the next page\n", out.NextAfter)
			}
			return nil
		},
	}
	fl := cmd.Flags()
	fl.Int64Var(&f.AfterSeq, "after", 0, "only entries after this sequence number")
	fl.StringVar(&action, "action", "", `only this action, or actions starting with a prefix ending in "." (device.)`)
	fl.StringVar(&subject, "subject", "", "only this subject, e.g. device:SN-0001 or token:tok_…")
	fl.IntVar(&f.Limit, "limit", 0, fmt.Sprintf("page size (default %d, at most %d)", cradle.DefaultPageSize, cradle.MaxPageSize))
	fl.BoolVar(&jsonFlag, "json", false, `print {"entries":[…],"next_after":N}`)
	return cmd
}

// auditChains is `audit verify --data-dir --json`: every chain's result.
type auditChains struct {
	Chains []*cradle.AuditVerification `json:"chains"`
}

func (a *app) auditVerifyCmd() *cobra.Command {
	var (
		lf       localFlags
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Re-walk the audit chain and check it against its signed checkpoint",
		Long: `Re-walk the audit chain of your tenant and check every link and the signed
checkpoint of its head. Exits 1 when the chain is broken, naming the first broken
link.

With --data-dir it opens the store directly (the server may be stopped) and
verifies every tenant's chain, including tenant 0, which records requests made
before a tenant was known (such as those with unknown tokens).`,
		Example: `  cradle audit verify
  cradle audit verify --data-dir ./cradle-data`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			local, err := lf.local()
			if err != nil {
				return err
			}
			var chains []*cradle.AuditVerification
			if local {
				var db *sqlstore.DB
				if db, err = lf.open(cmd.Context(), a.stderr); err != nil {
					return err
				}
				defer closeStore(db, &err)
				if chains, err = sqlstore.NewAuditService(db).VerifyAll(cmd.Context()); err != nil {
					return err
				}
			} else {
				cl, err := a.client()
				if err != nil {
					return err
				}
				v, err := cl.VerifyAudit(cmd.Context())
				if err != nil {
					return err
				}
				chains = []*cradle.AuditVerification{v}
			}
			if jsonFlag {
				if local {
					err = writeJSON(a.stdout, auditChains{Chains: chains})
				} else {
					err = writeJSON(a.stdout, chains[0])
				}
			} else {
				err = writeVerifications(a.stdout, chains)
			}
			if err != nil {
				return err
			}
			for _, v := range chains {
				if !v.OK {
					return fmt.Errorf("the audit chain of tenant %d is broken at entry %d: %s", v.TenantID, v.Broken.Seq, v.Broken.Reason)
				}
			}
			return nil
		},
	}
	lf.add(cmd)
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the verification as JSON")
	return cmd
}

func writeVerifications(w io.Writer, chains []*cradle.AuditVerification) error {
	t := newTable(w, "TENANT", "RESULT", "ENTRIES", "HEAD", "SIGNED AT", "FIRST BROKEN LINK")
	for _, v := range chains {
		result, broken := "ok", "-"
		if !v.OK {
			result = "BROKEN"
			if v.Broken != nil {
				broken = fmt.Sprintf("entry %d: %s", v.Broken.Seq, v.Broken.Reason)
			}
		}
		signed := "-"
		if v.Checkpoint != nil {
			signed = "entry " + strconv.FormatInt(v.Checkpoint.Seq, 10)
		}
		t.row(strconv.FormatInt(v.TenantID, 10), result, strconv.FormatInt(v.Entries, 10), strconv.FormatInt(v.HeadSeq, 10), signed, broken)
	}
	return t.flush()
}
