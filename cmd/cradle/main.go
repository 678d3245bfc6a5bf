// Command cradle is Cradle's control plane and its operator command line.
//
// `cradle serve` runs the server. The other commands, `cradle <noun> <verb>`
// (device, audit, token, login, pki, factory, policy, config-group,
// config-schema, release, rollout), are clients of the server's REST API;
// `token create` and `audit verify` can also work on a data directory
// directly, with the server stopped, and so do `cradle release repo ...`
// (the tenant's TUF repository and its offline root keys) and
// `cradle release sign-image|verify-image` (MCUboot images, no server at
// all). `cradle sim` runs a fleet of simulated devices against a server.
// Data goes to stdout, diagnostics to stderr; every read takes --json for
// output that scripts can rely on.
//
// main only calls run, so that tests run the real program in-process.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"

	"cradle"

	"github.com/spf13/cobra"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run runs the program with args (without the program name) and returns
// its exit code: 0 on success, 1 on any error, which it prints to stderr as
// "error: <message>".
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	a := &app{stdin: stdin, stdout: stdout, stderr: stderr}
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(stderr, "error: %s\n", errorText(err))
		return 1
	}
	return 0
}

// errorText returns what a person should read for err: the message of a
// client-visible error, or the error's text.
func errorText(err error) string {
	var e *cradle.Error
	if errors.As(err, &e) {
		return e.Message
	}
	return err.Error()
}

// app holds what every command shares: the program's streams and the
// client flags.
type app struct {
	stdin          io.Reader
	stdout, stderr io.Writer

	server, token string // --server, --token
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "cradle",
		Short: "Cradle manages embedded devices from the factory floor to end of life",
		Long: `Cradle manages embedded devices from the factory floor to end of life.

Start the server with "cradle serve"; it prints an admin token on its first start.
Then "cradle login --server URL --token TOKEN" and use the commands below.`,
		Version:       versionString(),
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetVersionTemplate("cradle {{.Version}}\n")
	root.AddGroup(
		&cobra.Group{ID: "server", Title: "Server:"},
		&cobra.Group{ID: "fleet", Title: "Operator commands (clients of the API):"},
	)
	for _, c := range []*cobra.Command{a.serveCmd()} {
		c.GroupID = "server"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{a.loginCmd(), a.deviceCmd(), a.auditCmd(), a.tokenCmd(), a.pkiCmd(), a.factoryCmd(), a.policyCmd(),
		a.configGroupCmd(), a.configSchemaCmd(), a.simCmd(), a.releaseCmd(), a.rolloutCmd()} {
		c.GroupID = "fleet"
		root.AddCommand(c)
	}
	root.AddCommand(&cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(a.stdout, "cradle %s\n", versionString())
			return err
		},
	})
	// Report flag errors in the same "error: …" form as every other error,
	// with a pointer to the help.
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%v (see %s --help)", err, cmd.CommandPath())
	})
	return root
}

// versionString describes this build: the version set at link time, the Go
// release and the platform.
func versionString() string {
	return fmt.Sprintf("%s (%s, %s/%s)", cradle.Version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// addClientFlags adds the flags that choose the server and the token.
func (a *app) addClientFlags(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&a.server, "server", "", "server URL (default: $CRADLE_SERVER, else the saved login, else http://127.0.0.1:8080)")
	cmd.PersistentFlags().StringVar(&a.token, "token", "", "API token (default: $CRADLE_TOKEN, else the saved login)")
}

// checkLimit checks the --limit flag of a listing before anything is sent,
// so that a bad value is reported in the flag's words, not as the server's
// query parameter. Left out, it is 0: the server's default page size.
func checkLimit(cmd *cobra.Command, n int) error {
	if !cmd.Flags().Changed("limit") {
		return nil
	}
	if n < 1 || n > cradle.MaxPageSize {
		return fmt.Errorf("invalid --limit %d: use 1 to %d", n, cradle.MaxPageSize)
	}
	return nil
}
