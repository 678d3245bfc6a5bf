package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"

	"cradle"

	"github.com/spf13/cobra"
)

// parseCommandArgs builds a command's args object from --args JSON and
// --arg key=value pairs; a value that is valid JSON (a number, true,
// an object …) is taken as such, anything else as a string.
func parseCommandArgs(argsJSON string, pairs []string) (json.RawMessage, error) {
	obj := map[string]json.RawMessage{}
	if argsJSON != "" {
		if err := json.Unmarshal([]byte(argsJSON), &obj); err != nil || obj == nil {
			return nil, fmt.Errorf("--args %q: want a JSON object such as '{\"interval\":30}'", argsJSON)
		}
	}
	for _, p := range pairs {
		k, v, ok := strings.Cut(p, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--arg %q: use key=value", p)
		}
		if json.Valid([]byte(v)) && v != "" {
			obj[k] = json.RawMessage(v)
		} else {
			s, _ := json.Marshal(v)
			obj[k] = s
		}
	}
	if len(obj) == 0 {
		return nil, nil
	}
	return json.Marshal(obj)
}

func (a *app) deviceCommandCmd() *cobra.Command {
	var (
		argsJSON string
		pairs    []string
		ttl      time.Duration
		wait     bool
		interval time.Duration
		jsonFlag bool
	)
	cmd := &cobra.Command{
		Use:   "command SERIAL KIND",
		Short: "Send a signed command (ping, reboot, upload-logs, rekey, set-config) to a deployed device",
		Long: `Send a signed command to a deployed device. The server signs it with the command
signer, with the device's next sequence number and an expiry (--ttl, 1m to 720h,
default 1h); the device checks the signature chain to its factory root, its own
serial, the expiry and the sequence, and reports done, refused or failed.
With --wait the command waits until the device reports or the command expires.`,
		Example: `  cradle device command SN-0001 ping --wait
  cradle device command SN-0001 set-config --args '{"version":7,"config":{"interval":30}}' --ttl 10m
  cradle device command SN-0001 upload-logs --wait && cradle device commands SN-0001 --logs cmd_…`,
		Args: cobra.ExactArgs(2),
		ValidArgsFunction: func(_ *cobra.Command, args []string, _ string) ([]string, cobra.ShellCompDirective) {
			if len(args) == 1 {
				return []string{"ping", "reboot", "upload-logs", "rekey", "set-config"}, cobra.ShellCompDirectiveNoFileComp
			}
			return nil, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if ttl != 0 && (ttl < cradle.MinCommandTTL || ttl > cradle.MaxCommandTTL || ttl%time.Second != 0) {
				return fmt.Errorf("--ttl %s: use whole seconds from 1m to 720h", ttl)
			}
			cargs, err := parseCommandArgs(argsJSON, pairs)
			if err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			c, err := cl.IssueCommand(cmd.Context(), args[0], cradle.CommandRequest{Kind: cradle.CommandKind(args[1]), Args: cargs, TTLSeconds: int64(ttl / time.Second)})
			if err != nil {
				return err
			}
			if wait {
				fmt.Fprintf(a.stderr, "command %s (sequence %d) issued; waiting for %s to report…\n", c.ID, c.Sequence, c.Device)
				for !c.State.Finished() {
					select {
					case <-cmd.Context().Done():
						return cmd.Context().Err()
					case <-time.After(interval):
					}
					if c, err = cl.FindDeviceCommand(cmd.Context(), args[0], c.ID); err != nil {
						return err
					}
				}
			}
			if jsonFlag {
				if err := writeJSON(a.stdout, c); err != nil {
					return err
				}
			} else if err := writeCommand(a.stdout, c); err != nil {
				return err
			}
			if wait && c.State != cradle.CommandDone {
				return fmt.Errorf("command %s %s: %s", c.ID, c.State, orDash(c.Error))
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&argsJSON, "args", "", "the command's arguments as a JSON object")
	f.StringArrayVar(&pairs, "arg", nil, "an argument key=value (repeatable); a JSON value is taken as such")
	f.DurationVar(&ttl, "ttl", 0, "how long the device may act on the command (1m to 720h; default 1h)")
	f.BoolVar(&wait, "wait", false, "wait until the device reports or the command expires; fail unless done")
	f.DurationVar(&interval, "poll", time.Second, "how often --wait asks the server")
	f.BoolVar(&jsonFlag, "json", false, "print the command as JSON")
	return cmd
}

// commandList is the API's listing object, and --json's output.
type commandList struct {
	Commands []*cradle.DeviceCommand `json:"commands"`
}

func (a *app) deviceCommandsCmd() *cobra.Command {
	var (
		state, logs string
		limit       int
		jsonFlag    bool
	)
	cmd := &cobra.Command{
		Use:   "commands SERIAL",
		Short: "List a device's commands with their state and results, newest first",
		Example: `  cradle device commands SN-0001
  cradle device commands SN-0001 --state refused --json
  cradle device commands SN-0001 --logs cmd_0123456789abcdef0123`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkLimit(cmd, limit); err != nil {
				return err
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			if logs != "" {
				b, err := cl.FindCommandLogs(cmd.Context(), args[0], logs)
				if err != nil {
					return err
				}
				_, err = a.stdout.Write(b)
				return err
			}
			f := cradle.CommandFilter{Limit: limit}
			if state != "" {
				st := cradle.CommandState(state)
				f.State = &st
			}
			cs, err := cl.FindDeviceCommands(cmd.Context(), args[0], f)
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, commandList{Commands: cs})
			}
			t := newTable(a.stdout, "ID", "SEQ", "KIND", "STATE", "ISSUED", "EXPIRES", "RESULTS", "ERROR")
			for _, c := range cs {
				t.row(c.ID, fmt.Sprint(c.Sequence), string(c.Kind), string(c.State), formatTime(c.IssuedAt), formatTime(c.ExpiresAt),
					fmt.Sprint(len(c.Results)), orDash(lastError(c)))
			}
			return t.flush()
		},
	}
	f := cmd.Flags()
	f.StringVar(&state, "state", "", "only commands in this state: pending, delivered, done, refused, failed, expired")
	f.IntVar(&limit, "limit", 0, "at most this many commands (default 100)")
	f.StringVar(&logs, "logs", "", "print the logs uploaded for this upload-logs command instead")
	f.BoolVar(&jsonFlag, "json", false, "print the commands as JSON")
	cmd.RegisterFlagCompletionFunc("state", cobra.FixedCompletions([]string{"pending", "delivered", "done", "refused", "failed", "expired"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// lastError is the error of the command, or of its last refused result
// (a replay the device refused after the command was done).
func lastError(c *cradle.DeviceCommand) string {
	if c.Error != "" {
		return c.Error
	}
	if n := len(c.Results); n > 0 {
		return c.Results[n-1].Error
	}
	return ""
}

func writeCommand(w io.Writer, c *cradle.DeviceCommand) error {
	t := newTable(w)
	t.row("ID:", c.ID)
	t.row("Device:", c.Device)
	t.row("Kind:", string(c.Kind))
	if len(c.Args) > 0 {
		t.row("Args:", string(c.Args))
	}
	t.row("Sequence:", fmt.Sprint(c.Sequence))
	t.row("State:", string(c.State))
	t.row("Issued:", formatTime(c.IssuedAt)+" by "+c.IssuedBy)
	t.row("Expires:", formatTime(c.ExpiresAt))
	t.row("Delivered:", formatTimePtr(c.DeliveredAt))
	t.row("Finished:", formatTimePtr(c.FinishedAt))
	if c.Error != "" {
		t.row("Error:", c.Error)
	}
	for _, r := range c.Results {
		t.row("Result:", fmt.Sprintf("%s at %s %s", r.Status, formatTime(r.At), r.Error))
	}
	if c.LogsSize > 0 {
		t.row("Logs:", humanBytes(int64(c.LogsSize)))
	}
	return t.flush()
}
