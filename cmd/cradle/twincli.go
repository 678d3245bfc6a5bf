package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"cradle"
	"cradle/internal/httpapi"
)

// runPrint returns a RunE that calls the server once with the logged-in
// client and prints its answer: as JSON with --json, else with text.
func runPrint[T any](a *app, jsonFlag *bool, call func(ctx context.Context, cl *httpapi.Client, args []string) (T, error), text func(T) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		cl, err := a.client()
		if err != nil {
			return err
		}
		v, err := call(cmd.Context(), cl, args)
		if err != nil {
			return err
		}
		if *jsonFlag {
			return writeJSON(a.stdout, v)
		}
		return text(v)
	}
}

// allPages joins the pages find returns, from the first page to the one
// with no next cursor.
func allPages[T any](find func(cursor string) ([]T, string, error)) ([]T, error) {
	items, _, err := collectPages("", true, find)
	return items, err
}

// collectPages fetches the page at cursor and, with all, every page
// after it. It returns their items (never nil) and the cursor of the
// page after the last one fetched, "" when there is none.
func collectPages[T any](cursor string, all bool, find func(cursor string) ([]T, string, error)) ([]T, string, error) {
	items := []T{}
	for {
		page, next, err := find(cursor)
		if err != nil {
			return nil, "", err
		}
		items = append(items, page...)
		if !all || next == "" {
			return items, next, nil
		}
		cursor = next
	}
}

// readDoc reads a JSON document from a file, or from stdin for "-".
func (a *app) readDoc(name string, limit int64) ([]byte, error) {
	var r io.Reader = a.stdin
	if name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", name, limit)
	}
	return data, nil
}

// deviceConfigCmd is "cradle device config": the configuration twin.
func (a *app) deviceConfigCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Show and set a device's desired configuration; list drift",
	}
	cmd.AddCommand(a.deviceConfigShowCmd(), a.deviceConfigSetCmd(), a.deviceConfigUnsetCmd(), a.deviceConfigListCmd())
	return cmd
}

func (a *app) writeTwin(tw *cradle.Twin) error {
	fmt.Fprintf(a.stdout, "Serial:     %s\nModel:      %s\nDrift:      %s\nGroups:     %s\n", tw.Serial, tw.Model, tw.Drift, orDash(strings.Join(tw.Groups, ", ")))
	if tw.Desired != nil {
		fmt.Fprintf(a.stdout, "Desired:    version %d (%s)\n            %s\n", tw.Desired.Version, formatTimePtr(tw.DesiredAt), tw.Desired.Config)
	} else {
		fmt.Fprintln(a.stdout, "Desired:    -")
	}
	if tw.DeviceConfig != nil {
		fmt.Fprintf(a.stdout, "Own:        %s\n", tw.DeviceConfig)
	}
	if r := tw.Reported; r != nil {
		fmt.Fprintf(a.stdout, "Reported:   version %d %s (%s)\n            %s\n", r.Version, r.Status, formatTimePtr(tw.ReportedAt), r.Config)
		if r.Error != "" {
			fmt.Fprintf(a.stdout, "Error:      %s\n", r.Error)
		}
	} else {
		fmt.Fprintln(a.stdout, "Reported:   -")
	}
	return nil
}

func (a *app) deviceConfigShowCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "show SERIAL",
		Short: "Show a device's configuration twin: own document, groups, desired, reported, drift",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Twin, error) {
			return cl.FindTwin(ctx, args[0])
		}, a.writeTwin),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the twin as JSON")
	return cmd
}

func (a *app) deviceConfigSetCmd() *cobra.Command {
	var jsonFlag bool
	var file string
	cmd := &cobra.Command{
		Use:   "set SERIAL [--file FILE|-]",
		Short: "Replace a device's own configuration document (a JSON object), merged on top of its config groups",
		Example: `  cradle device config set SN-0001 --file sn-0001.json
  echo '{"log":{"level":"debug"}}' | cradle device config set SN-0001`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := a.readDoc(file, cradle.MaxConfigBytes)
			if err != nil {
				return err
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Twin, error) {
				return cl.SetDeviceConfig(ctx, args[0], doc)
			}, a.writeTwin)(cmd, args)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "-", "the JSON document; - reads stdin")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the twin as JSON")
	return cmd
}

func (a *app) deviceConfigUnsetCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "unset SERIAL",
		Short: "Remove a device's own configuration document; its config groups still apply",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.Twin, error) {
			return cl.DeleteDeviceConfig(ctx, args[0])
		}, a.writeTwin),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the twin as JSON")
	return cmd
}

func (a *app) deviceConfigListCmd() *cobra.Command {
	var jsonFlag bool
	var drift string
	cmd := &cobra.Command{
		Use:   "list [--drift STATE]",
		Short: "List devices with a configuration twin and their drift state (none, pending, in-sync, rejected, failed, drifted)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var f cradle.TwinFilter
			if drift != "" {
				st, err := cradle.ParseDriftState(drift)
				if err != nil {
					return err
				}
				f.Drift = &st
			}
			cl, err := a.client()
			if err != nil {
				return err
			}
			all, err := allPages(func(cursor string) ([]*cradle.TwinStatus, string, error) {
				f.Cursor = cursor
				return cl.FindTwins(cmd.Context(), f)
			})
			if err != nil {
				return err
			}
			if jsonFlag {
				return writeJSON(a.stdout, map[string]any{"twins": all})
			}
			t := newTable(a.stdout, "SERIAL", "DESIRED", "REPORTED", "STATUS", "DRIFT", "REPORTED AT", "ERROR")
			for _, s := range all {
				t.row(s.Serial, strconv.FormatInt(s.DesiredVersion, 10), strconv.FormatInt(s.ReportedVersion, 10), orDash(string(s.ReportedStatus)),
					string(s.Drift), formatTimePtr(s.ReportedAt), orDash(s.Error))
			}
			return t.flush()
		},
	}
	cmd.Flags().StringVar(&drift, "drift", "", "only twins in this drift state")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"twins":[…]}`)
	return cmd
}

// configGroupCmd is "cradle config-group".
func (a *app) configGroupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config-group",
		Short: "Configuration shared by the devices a label selector matches",
		Long: `Config groups give configuration to the devices whose labels match their selector.
A device's desired configuration is its matching groups merged in ascending priority
(ties by name; objects merge key by key, arrays and scalars are replaced), with the
device's own document (cradle device config set) on top.`,
	}
	a.addClientFlags(cmd)
	cmd.AddCommand(a.configGroupSetCmd(), a.configGroupListCmd(), a.configGroupShowCmd(), a.configGroupDeleteCmd())
	return cmd
}

func (a *app) writeGroup(g *cradle.ConfigGroup) error {
	_, err := fmt.Fprintf(a.stdout, "Name:       %s\nSelector:   %s\nPriority:   %d\nUpdated:    %s by %s\nConfig:     %s\n", g.Name, g.Selector, g.Priority, formatTime(g.UpdatedAt), g.UpdatedBy, g.Config)
	return err
}

func (a *app) configGroupSetCmd() *cobra.Command {
	var jsonFlag bool
	var file, selector string
	var priority int
	cmd := &cobra.Command{
		Use:     "set NAME --selector SEL [--priority N] [--file FILE|-]",
		Short:   "Create or replace a config group; the devices it reaches get a new desired version",
		Example: `  cradle config-group set prod --selector 'env=prod' --priority 10 --file prod.json`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := a.readDoc(file, cradle.MaxConfigBytes)
			if err != nil {
				return err
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.ConfigGroup, error) {
				return cl.PutConfigGroup(ctx, args[0], cradle.ConfigGroupPut{Selector: selector, Priority: priority, Config: json.RawMessage(doc)})
			}, a.writeGroup)(cmd, args)
		},
	}
	cmd.Flags().StringVar(&selector, "selector", "", "label selector of the devices it reaches, e.g. 'env=prod,site in (a,b)'")
	cmd.Flags().IntVar(&priority, "priority", 0, "merge order: higher wins")
	cmd.Flags().StringVarP(&file, "file", "f", "-", "the config, a JSON object; - reads stdin")
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the group as JSON")
	cmd.MarkFlagRequired("selector")
	return cmd
}

func (a *app) configGroupListCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List config groups in merge order",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			gs, err := cl.FindConfigGroups(cmd.Context())
			if err != nil {
				return err
			}
			if gs == nil {
				gs = []*cradle.ConfigGroup{}
			}
			if jsonFlag {
				return writeJSON(a.stdout, map[string]any{"groups": gs})
			}
			t := newTable(a.stdout, "NAME", "PRIORITY", "SELECTOR", "UPDATED")
			for _, g := range gs {
				t.row(g.Name, strconv.Itoa(g.Priority), g.Selector, formatTime(g.UpdatedAt))
			}
			return t.flush()
		},
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, `print {"groups":[…]}`)
	return cmd
}

func (a *app) configGroupShowCmd() *cobra.Command {
	var jsonFlag bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a config group",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.ConfigGroup, error) {
			return cl.FindConfigGroup(ctx, args[0])
		}, a.writeGroup),
	}
	cmd.Flags().BoolVar(&jsonFlag, "json", false, "print the group as JSON")
	return cmd
}

func (a *app) configGroupDeleteCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a config group; the devices it reached get a new desired version",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := a.client()
			if err != nil {
				return err
			}
			if err := cl.DeleteConfigGroup(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(a.stderr, "deleted config group %s\n", args[0])
			return nil
		},
	}
}

// configSchemaCmd is "cradle config-schema".
func (a *app) configSchemaCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config-schema",
		Short: "The JSON Schema a model's configuration must satisfy",
	}
	a.addClientFlags(cmd)
	var jsonFlag bool
	set := &cobra.Command{
		Use:   "set MODEL FILE",
		Short: "Register or replace a model's JSON Schema (FILE - reads stdin)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := a.readDoc(args[1], cradle.MaxSchemaBytes)
			if err != nil {
				return err
			}
			return runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.ConfigSchema, error) {
				return cl.PutConfigSchema(ctx, args[0], doc)
			}, func(cs *cradle.ConfigSchema) error {
				_, err := fmt.Fprintf(a.stdout, "config schema of model %s set\n", cs.Model)
				return err
			})(cmd, args)
		},
	}
	set.Flags().BoolVar(&jsonFlag, "json", false, "print the stored schema record as JSON")
	show := &cobra.Command{
		Use:   "show MODEL",
		Short: "Print a model's JSON Schema",
		Args:  cobra.ExactArgs(1),
		RunE: runPrint(a, &jsonFlag, func(ctx context.Context, cl *httpapi.Client, args []string) (*cradle.ConfigSchema, error) {
			return cl.FindConfigSchema(ctx, args[0])
		}, func(cs *cradle.ConfigSchema) error { return writeJSON(a.stdout, cs.Schema) }),
	}
	show.Flags().BoolVar(&jsonFlag, "json", false, "print the schema record (model, schema, updated_at, updated_by)")
	cmd.AddCommand(set, show)
	return cmd
}
