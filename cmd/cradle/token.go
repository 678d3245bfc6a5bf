package main

import (
	"fmt"
	"io"
	"time"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/spf13/cobra"
)

func (a *app) tokenCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and revoke API tokens",
	}
	a.addClientFlags(cmd)
	cmd.AddCommand(a.tokenCreateCmd(), a.tokenListCmd(), a.tokenRevokeCmd())
	return cmd
}

// tokenCreated is the API's answer to a token creation, and --json's output.
type tokenCreated struct {
	Token  *cradle.Token `json:"token"`
	Secret string        `json:"secret"`
}

func (a *app) tokenCreateCmd() *cobra.Command {
	var (
		lf         localFlags
		name, role string
		tenant     string
		expiresIn  time.Duration
		jsonFlag   bool
		roleNames  = make([]string, len(cradle.TokenRoles))
	)
	for i, r := range cradle.TokenRoles {
		roleNames[i] = string(r)
	}
	cmd := &cobra.Command{
		Use:   "create --name NAME --role ROLE",
		Short: "Create an API token; its secret is shown once",
		Long: `Create an API token in your tenant. Its secret is printed once and never stored.

Roles: admin (everything, tokens included), operator (devices, transitions, imports,
audit), factory (creates and provisions units), auditor (reads everything).

With --data-dir it opens the store directly (the server may be stopped): the way
to get an admin token when none is left.`,
		Example: `  cradle token create --name ci --role operator --expires-in 720h
  cradle token create --data-dir ./cradle-data --tenant default --role admin --name rescue`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			r, err := cradle.ParseTokenRole(role)
			if err != nil {
				return err
			}
			c := cradle.TokenCreate{Name: name, Role: r}
			if expiresIn < 0 {
				return fmt.Errorf("--expires-in %s is negative", expiresIn)
			}
			if expiresIn > 0 {
				t := time.Now().Add(expiresIn).UTC()
				c.ExpiresAt = &t
			}
			local, err := lf.local()
			if err != nil {
				return err
			}
			var out tokenCreated
			if local {
				var db *sqlstore.DB
				if db, err = lf.open(cmd.Context(), a.stderr); err != nil {
					return err
				}
				defer closeStore(db, &err)
				var t *cradle.Tenant
				t, err = sqlstore.NewTenantService(db).FindTenantByName(cmd.Context(), tenant)
				if err != nil {
					return err
				}
				ctx := cradle.NewContextWithActor(cmd.Context(), localActor(t.ID))
				if out.Token, out.Secret, err = sqlstore.NewTokenService(db).CreateToken(ctx, c); err != nil {
					return err
				}
			} else {
				if cmd.Flags().Changed("tenant") {
					return fmt.Errorf("--tenant needs --data-dir: through the API, tokens are made in the tenant of your own token")
				}
				cl, err := a.client()
				if err != nil {
					return err
				}
				if out.Token, out.Secret, err = cl.CreateToken(cmd.Context(), c); err != nil {
					return err
				}
			}
			if jsonFlag {
				return writeJSON(a.stdout, out)
			}
			return writeTokenCreated(a.stdout, out)
		},
	}
	lf.add(cmd)
	f := cmd.Flags()
	f.StringVar(&name, "name", "", "a label for people, e.g. what or who uses it (required)")
	f.StringVar(&role, "role", "", "admin, operator, factory or auditor (required)")
	f.DurationVar(&expiresIn, "expires-in", 0, "lifetime, e.g. 720h (default: never expires)")
	f.StringVar(&tenant, "tenant", cradle.DefaultTenantName, "with --data-dir: the tenant to create the token in")
	f.BoolVar(&jsonFlag, "json", false, `print {"token":{…},"secret":"…"}`)
	cmd.MarkFlagRequired("name")
	cmd.MarkFlagRequired("role")
	cmd.RegisterFlagCompletionFunc("role", cobra.FixedCompletions(roleNames, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func writeTokenCreated(w io.Writer, out tokenCreated) error {
	t := newTable(w)
	t.row("id:", out.Token.ID)
	t.row("name:", out.Token.Name)
	t.row("role:", string(out.Token.Role))
	t.row("tenant:", fmt.Sprint(out.Token.TenantID))
	t.row("expires:", formatTimePtr(out.Token.ExpiresAt))
	t.row("secret:", out.Secret)
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "\nThe secret is shown only this once; keep it safe.")
	return err
}

// tokenList is the API's listing object, and --json's output.
type tokenList struct {
	Tokens []*cradle.Token `json:"tokens"`
}

func (a *app) tokenListCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List your tenant's API tokens, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			tokens, err := cl.FindTokens(cmd.Context())
			if err != nil {
				return err
			}
			now := time.Now()
			return writeList(a.stdout, jsonFlag, tokens, func(l []*cradle.Token) any { return tokenList{Tokens: l} },
				[]string{"ID", "NAME", "ROLE", "STATUS", "CREATED", "EXPIRES", "LAST USED", "CREATED BY"}, func(tok *cradle.Token) []string {
					return []string{tok.ID, tok.Name, string(tok.Role), tokenStatus(tok.RevokedAt, tok.ExpiresAt, now), formatTime(tok.CreatedAt),
						formatTimePtr(tok.ExpiresAt), formatTimePtr(tok.LastUsed), tok.CreatedBy}
				})
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"tokens":[…]}`)
	return cmd
}

func (a *app) tokenRevokeCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke an API token; requests with it are refused from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.RevokeToken(cmd.Context(), args[0]); err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "revoked %s\n", args[0])
			return err
		},
	}
}
