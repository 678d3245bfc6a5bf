package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"cradle/internal/atomicfile"
	"cradle/internal/httpapi"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"
)

// defaultServer is the server the CLI talks to when nothing else is set:
// where `cradle serve` listens by default.
const defaultServer = "http://127.0.0.1:8080"

// cliConfig is the CLI's saved login, in $XDG_CONFIG_HOME/cradle/cli.yaml.
type cliConfig struct {
	Server string `yaml:"server"`
	Token  string `yaml:"token"`
}

func cliConfigPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("cli config: %w", err)
	}
	return filepath.Join(dir, "cradle", "cli.yaml"), nil
}

// parseCLIConfig decodes a saved login, refusing unknown keys.
func parseCLIConfig(data []byte) (cliConfig, error) {
	var c cliConfig
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return cliConfig{}, err
	}
	if c.Server != "" {
		if err := checkServerURL(c.Server); err != nil {
			return cliConfig{}, fmt.Errorf("server: %v", err)
		}
	}
	return c, nil
}

func readCLIConfig() (cliConfig, string, error) {
	path, err := cliConfigPath()
	if err != nil {
		return cliConfig{}, "", err
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return cliConfig{}, path, nil
	} else if err != nil {
		return cliConfig{}, path, fmt.Errorf("cli config: %w", err)
	}
	c, err := parseCLIConfig(data)
	if err != nil {
		return cliConfig{}, path, fmt.Errorf("cli config %s: %v; fix it or run cradle login again", path, err)
	}
	return c, path, nil
}

func writeCLIConfig(path string, c cliConfig) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("cli config: %w", err)
	}
	data = append([]byte("# Written by cradle login. Holds an API token: keep it private.\n"), data...)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("cli config: %w", err)
	}
	if err := atomicfile.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("cli config: %w", err)
	}
	return nil
}

func checkServerURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q is not a server URL; use http://host:port or https://host:port", s)
	}
	return nil
}

// endpoint returns the server URL and token to use: flags, else
// CRADLE_SERVER and CRADLE_TOKEN, else the saved login, else the default
// server and no token.
func (a *app) endpoint() (server, token string, err error) {
	server, token = a.server, a.token
	if server == "" {
		server = os.Getenv("CRADLE_SERVER")
	}
	if token == "" {
		token = os.Getenv("CRADLE_TOKEN")
	}
	if server == "" || token == "" {
		saved, _, err := readCLIConfig()
		if err != nil {
			return "", "", err
		}
		if server == "" {
			server = saved.Server
		}
		if token == "" {
			token = saved.Token
		}
	}
	if server == "" {
		server = defaultServer
	}
	if err := checkServerURL(server); err != nil {
		return "", "", err
	}
	return strings.TrimRight(server, "/"), token, nil
}

// client returns an API client for the chosen server and token.
func (a *app) client() (*httpapi.Client, error) {
	server, token, err := a.endpoint()
	if err != nil {
		return nil, err
	}
	if token == "" {
		return nil, errors.New("no API token: pass --token, set CRADLE_TOKEN, or run cradle login --server URL --token TOKEN")
	}
	return httpapi.NewClient(server, token, &http.Client{}), nil
}

func (a *app) loginCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "login --server URL --token TOKEN",
		Short: "Check a token and save it with the server URL for later commands",
		Long: `Check a token against the server and save both in $XDG_CONFIG_HOME/cradle/cli.yaml
(readable by you only). Later commands use them unless --server/--token or
CRADLE_SERVER/CRADLE_TOKEN say otherwise.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.client()
			if err != nil {
				return err
			}
			who, err := c.WhoAmI(cmd.Context())
			if err != nil {
				return err
			}
			server, token, _ := a.endpoint()
			path, err := cliConfigPath()
			if err != nil {
				return err
			}
			if err := writeCLIConfig(path, cliConfig{Server: server, Token: token}); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Logged in to %s as %s (tenant %d, role %s).\n", server, who.Actor, who.TenantID, who.Role)
			fmt.Fprintf(a.stderr, "saved to %s\n", path)
			return nil
		},
	}
	a.addClientFlags(cmd)
	return cmd
}
