package main

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// envMap returns a lookupEnv over m.
func envMap(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := m[k]
		return v, ok
	}
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExampleConfigIsDefaults(t *testing.T) {
	got, err := loadConfig("cradle.example.yaml", envMap(nil), nil)
	if err != nil {
		t.Fatalf("loading the example config: %v", err)
	}
	if diff := cmp.Diff(DefaultConfig(), got); diff != "" {
		t.Errorf("the example config differs from the defaults (-defaults +example):\n%s", diff)
	}
	// Every setting is in the example, so that it documents them all.
	data, err := os.ReadFile("cradle.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range configFields {
		leaf := f.key[strings.LastIndex(f.key, ".")+1:]
		if !strings.Contains(string(data), "\n"+leaf+":") && !strings.Contains(string(data), "  "+leaf+":") {
			t.Errorf("the example config does not set %s", f.key)
		}
		if !strings.Contains(string(data), f.env) || !strings.Contains(string(data), "--"+f.flag) {
			t.Errorf("the example config does not name %s and --%s for %s", f.env, f.flag, f.key)
		}
	}
}

func TestConfigPrecedence(t *testing.T) {
	file := `
data_dir: /file/data
listen: 127.0.0.1:1001
log:
  level: warn
http:
  max_body_bytes: 2MiB
  shutdown_timeout: 5s
`
	withDefaults := func(edit func(c *Config)) Config {
		c := DefaultConfig()
		edit(&c)
		return c
	}
	for _, tc := range []struct {
		name  string
		file  string // "" for no file
		env   map[string]string
		flags map[string]string
		want  Config
	}{
		{
			name: "defaults",
			want: DefaultConfig(),
		},
		{
			name: "file over defaults",
			file: file,
			want: withDefaults(func(c *Config) {
				c.DataDir, c.Listen, c.Log.Level = "/file/data", "127.0.0.1:1001", "warn"
				c.HTTP.MaxBodyBytes, c.HTTP.ShutdownTimeout = 2<<20, 5*time.Second
			}),
		},
		{
			name: "environment over file",
			file: file,
			env: map[string]string{"CRADLE_LISTEN": "127.0.0.1:1002", "CRADLE_LOG_FORMAT": "json",
				"CRADLE_HTTP_SHUTDOWN_TIMEOUT": "1m", "CRADLE_STORE": "postgres://u@db/cradle"},
			want: withDefaults(func(c *Config) {
				c.DataDir, c.Listen, c.Log.Level, c.Log.Format = "/file/data", "127.0.0.1:1002", "warn", "json"
				c.Store = "postgres://u@db/cradle"
				c.HTTP.MaxBodyBytes, c.HTTP.ShutdownTimeout = 2<<20, time.Minute
			}),
		},
		{
			name: "flags over environment over file",
			file: file,
			env:  map[string]string{"CRADLE_LISTEN": "127.0.0.1:1002", "CRADLE_DATA_DIR": "/env/data", "CRADLE_LOG_LEVEL": "error"},
			flags: map[string]string{"listen": "127.0.0.1:1003", "log-level": "debug", "max-import-bytes": "512KiB",
				"store": "sqlite:/flag/x.db"},
			want: withDefaults(func(c *Config) {
				c.DataDir, c.Listen, c.Log.Level, c.Store = "/env/data", "127.0.0.1:1003", "debug", "sqlite:/flag/x.db"
				c.HTTP.MaxBodyBytes, c.HTTP.MaxImportBytes, c.HTTP.ShutdownTimeout = 2<<20, 512<<10, 5*time.Second
			}),
		},
		{
			name: "empty environment value clears the store",
			file: "store: postgres://u@db/cradle\n",
			env:  map[string]string{"CRADLE_STORE": ""},
			want: DefaultConfig(),
		},
		{
			name: "comments only",
			file: "# nothing set\n",
			want: DefaultConfig(),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = writeFile(t, t.TempDir(), "cradle.yaml", tc.file)
			}
			got, err := loadConfig(path, envMap(tc.env), tc.flags)
			if err != nil {
				t.Fatalf("loadConfig: %v", err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		file  string
		env   map[string]string
		flags map[string]string
		want  string // the error must contain this
	}{
		{name: "unknown key", file: "listen: :8080\nlisten_addr: :9090\n", want: `config: unknown key "listen_addr" (line 2); known keys: data_dir, listen`},
		{name: "unknown nested key", file: "log:\n  colour: true\n", want: `config: unknown key "log.colour" (line 2)`},
		{name: "bad listen", file: "listen: localhost\n", want: `config: listen: "localhost" is not host:port`},
		{name: "bad port", file: "listen: 127.0.0.1:99999\n", want: `config: listen: "127.0.0.1:99999" has a bad port "99999"`},
		{name: "bad level", file: "log:\n  level: loud\n", want: `config: log.level: "loud" is not a log level; use debug, info, warn or error (line 2)`},
		{name: "bad format", file: "log:\n  format: xml\n", want: `config: log.format: "xml" is not a log format`},
		{name: "bad size", file: "http:\n  max_body_bytes: lots\n", want: `config: http.max_body_bytes: "lots" is not a size`},
		{name: "zero size", file: "http:\n  max_import_bytes: 0\n", want: `config: http.max_import_bytes: "0" is not a size`},
		{name: "bad duration", file: "http:\n  shutdown_timeout: 30\n", want: `config: http.shutdown_timeout: "30" is not a positive duration`},
		{name: "bad store", file: "store: mysql://db/x\n", want: `config: store: "mysql://db/x" is not a store; use postgres://…, sqlite:PATH`},
		{name: "store password hidden", file: "store: mysql://u:hunter2@db/x\n", want: `"mysql://u:xxxxx@db/x" is not a store`},
		{name: "empty data dir", file: "data_dir: \"\"\n", want: "config: data_dir: must not be empty"},
		{name: "group given a value", file: "log: debug\n", want: "config: log: line 1: expected keys nested under log:"},
		{name: "list as a value", file: "listen: [a, b]\n", want: "config: listen: line 1: expected a single value"},
		{name: "key twice", file: "listen: :1\nlisten: :2\n", want: "config: listen: given twice (line 2)"},
		{name: "not a mapping", file: "- listen\n", want: "config: line 1: the file must be a mapping"},
		{name: "not YAML", file: "listen: [\n", want: "config: yaml:"},
		{name: "bad environment value", env: map[string]string{"CRADLE_LOG_LEVEL": "verbose"}, want: `config: log.level: "verbose" is not a log level; use debug, info, warn or error (from CRADLE_LOG_LEVEL)`},
		{name: "bad flag value", flags: map[string]string{"shutdown-timeout": "-1s"}, want: `config: http.shutdown_timeout: "-1s" is not a positive duration such as 30s or 2m (from --shutdown-timeout)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.file != "" {
				path = writeFile(t, t.TempDir(), "cradle.yaml", tc.file)
			}
			_, err := loadConfig(path, envMap(tc.env), tc.flags)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loadConfig error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		_, err := loadConfig(filepath.Join(t.TempDir(), "nope.yaml"), envMap(nil), nil)
		if err == nil || !strings.Contains(err.Error(), "does not exist; check --config or CRADLE_CONFIG") {
			t.Fatalf("loadConfig error = %v, want a missing-file error", err)
		}
	})
}

// TestServeRefusesBadConfig runs the real program: a bad setting stops
// `cradle serve` before it touches anything, with the field named.
func TestServeRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("CRADLE_CONFIG", writeFile(t, dir, "cradle.yaml", "data_dir: "+filepath.Join(dir, "data")+"\nlisten: 127.0.0.1:0\nhttp:\n  max_body_bytes: -5\n"))
	var stdout, stderr strings.Builder
	code := run(t.Context(), []string{"serve"}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if want := `error: config: http.max_body_bytes: "-5" is not a size`; !strings.HasPrefix(stderr.String(), want) {
		t.Errorf("stderr %q does not start with %q", stderr.String(), want)
	}
	if _, err := os.Stat(filepath.Join(dir, "data")); err == nil {
		t.Errorf("the data directory was created although the config is bad")
	}
}

func encodeKey(t testing.TB, key ed25519.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func TestAuditKey(t *testing.T) {
	_, key, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	good := encodeKey(t, key)
	for _, tc := range []struct {
		name    string
		content []byte
		mode    os.FileMode
		want    string // "" for success
	}{
		{name: "good", content: good, mode: 0o600},
		{name: "owner read only", content: good, mode: 0o400},
		{name: "group readable", content: good, mode: 0o640, want: "has permissions 0640, but only its owner may read it; run: chmod 600"},
		{name: "world readable", content: good, mode: 0o604, want: "has permissions 0604"},
		{name: "not PEM", content: []byte("hello"), mode: 0o600, want: "is corrupt: no PEM block; restore it from a backup"},
		{name: "truncated", content: good[:len(good)/2], mode: 0o600, want: "is corrupt"},
		{name: "wrong block type", content: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), mode: 0o600, want: `PEM block is "CERTIFICATE"`},
		{name: "not PKCS#8", content: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), mode: 0o600, want: "not a PKCS#8 key"},
		{name: "trailing data", content: append(append([]byte{}, good...), "junk"...), mode: 0o600, want: "unexpected data after the PEM block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), auditKeyFile)
			if err := os.WriteFile(path, tc.content, tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil { // beat the umask
				t.Fatal(err)
			}
			got, created, err := loadOrCreateAuditKey(path)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("loadOrCreateAuditKey: %v", err)
				}
				if created || !got.Equal(key) {
					t.Errorf("got created=%v and another key, want the key in the file", created)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("loadOrCreateAuditKey error = %v, want one containing %q", err, tc.want)
			}
		})
	}
	t.Run("created when missing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), auditKeyFile)
		k1, created, err := loadOrCreateAuditKey(path)
		if err != nil || !created {
			t.Fatalf("loadOrCreateAuditKey = created %v, %v; want a new key", created, err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("new key file has mode %04o, want 0600", fi.Mode().Perm())
		}
		k2, created, err := loadOrCreateAuditKey(path)
		if err != nil || created || !k2.Equal(k1) {
			t.Errorf("second load: created %v, err %v, same key %v; want the first key back", created, err, k2.Equal(k1))
		}
	})
}

// TestServeRefusesLooseAuditKey runs the real program against a data
// directory whose audit key others may read.
func TestServeRefusesLooseAuditKey(t *testing.T) {
	dir := t.TempDir()
	_, key, _ := ed25519.GenerateKey(nil)
	path := filepath.Join(dir, auditKeyFile)
	if err := os.WriteFile(path, encodeKey(t, key), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644)
	var stdout, stderr strings.Builder
	code := run(t.Context(), []string{"serve", "--data-dir", dir, "--listen", "127.0.0.1:0"}, strings.NewReader(""), &stdout, &stderr)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	want := "error: audit key: " + path + " has permissions 0644, but only its owner may read it; run: chmod 600 " + path + "\n"
	if !strings.HasSuffix(stderr.String(), want) {
		t.Errorf("stderr %q does not end with %q", stderr.String(), want)
	}
	if stdout.Len() != 0 {
		t.Errorf("stdout %q, want nothing", stdout.String())
	}
	if _, err := os.Stat(filepath.Join(dir, "cradle.db")); err == nil {
		t.Errorf("the store was created although the audit key was refused")
	}
}

// TestServeRefusesLostAuditKey: a data directory that holds a database
// but no audit key stops `cradle serve` before a new key is made, with an
// error that names the key file and says what to do. Restoring the key is
// enough to start again.
func TestServeRefusesLostAuditKey(t *testing.T) {
	isolateCLI(t)
	serve := func(t *testing.T, args ...string) cliResult {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		var stdout, stderr strings.Builder
		code := run(ctx, append([]string{"serve", "--listen", "127.0.0.1:0"}, args...), strings.NewReader(""), &stdout, &stderr)
		return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
	}
	// loseKey starts and stops a server with cfg, then deletes its audit
	// key and returns the key's content.
	loseKey := func(t *testing.T, cfg Config) (keyPath string, key []byte) {
		t.Helper()
		m := &Main{Config: cfg}
		if err := m.Run(t.Context()); err != nil {
			t.Fatalf("first start: %v", err)
		}
		if err := m.Close(); err != nil {
			t.Fatalf("stopping the first server: %v", err)
		}
		keyPath = filepath.Join(cfg.DataDir, auditKeyFile)
		key, err := os.ReadFile(keyPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(keyPath); err != nil {
			t.Fatal(err)
		}
		return keyPath, key
	}
	noNewKey := func(t *testing.T, keyPath string) {
		t.Helper()
		if _, err := os.Stat(keyPath); err == nil {
			t.Errorf("a refused start wrote a new audit key %s", keyPath)
		}
	}

	t.Run("data directory", func(t *testing.T) {
		dir := t.TempDir()
		cfg := DefaultConfig()
		cfg.DataDir, cfg.Listen = dir, "127.0.0.1:0"
		keyPath, key := loseKey(t, cfg)

		r := serve(t, "--data-dir", dir)
		want := "error: serve: " + dir + " holds a database but has no audit key (" + keyPath + "): restore the key from your backup; " +
			"without it the audit log cannot be verified. To start a new audit key deliberately, move the database (" +
			filepath.Join(dir, "cradle.db") + ", with its -wal and -shm files) and " + filepath.Join(dir, "audit-witness.json") + " away too\n"
		if r.code != 1 || r.stderr != want {
			t.Errorf("serve without its audit key: exit %d, stderr\n%s\nwant exit 1 and\n%s", r.code, r.stderr, want)
		}
		if r.stdout != "" {
			t.Errorf("stdout %q, want nothing", r.stdout)
		}
		noNewKey(t, keyPath)

		// The key restored from backup starts it again, with the log intact.
		if err := os.WriteFile(keyPath, key, 0o600); err != nil {
			t.Fatal(err)
		}
		srv, out := startServer(t, dir)
		if out != "" {
			t.Errorf("the start with the restored key printed %q, want nothing", out)
		}
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		chains := decodeJSON[auditChains](t, ok(t, "audit", "verify", "--data-dir", dir, "--json"))
		for _, c := range chains.Chains {
			if !c.OK {
				t.Errorf("chain of tenant %d broken after the restore: %+v", c.TenantID, c.Broken)
			}
		}
	})

	t.Run("sqlite store elsewhere", func(t *testing.T) {
		dir, dbPath := t.TempDir(), filepath.Join(t.TempDir(), "fleet.db")
		cfg := DefaultConfig()
		cfg.DataDir, cfg.Listen, cfg.Store = dir, "127.0.0.1:0", "sqlite:"+dbPath
		keyPath, _ := loseKey(t, cfg)
		r := serve(t, "--data-dir", dir, "--store", cfg.Store)
		want := "error: serve: the store " + dbPath + " exists, but the data directory " + dir + " has no audit key (" + keyPath + "): restore the key from your backup"
		if r.code != 1 || !strings.HasPrefix(r.stderr, want) {
			t.Errorf("serve without its audit key: exit %d, stderr\n%s\nwant exit 1 and an error starting\n%s", r.code, r.stderr, want)
		}
		noNewKey(t, keyPath)
	})

	t.Run("database only in its WAL", func(t *testing.T) {
		dir := t.TempDir()
		writeFile(t, dir, "cradle.db-wal", "x")
		keyPath := filepath.Join(dir, auditKeyFile)
		err := checkKeyNotLost(dir, keyPath, filepath.Join(dir, "cradle.db"))
		if err == nil || !strings.Contains(err.Error(), "holds a database but has no audit key ("+keyPath+")") {
			t.Errorf("checkKeyNotLost = %v, want the lost-key error", err)
		}
	})

	t.Run("new data directory", func(t *testing.T) {
		dir := t.TempDir()
		if err := checkKeyNotLost(dir, filepath.Join(dir, auditKeyFile), filepath.Join(dir, "cradle.db")); err != nil {
			t.Errorf("checkKeyNotLost on an empty data directory: %v", err)
		}
		if err := checkKeyNotLost(dir, filepath.Join(dir, auditKeyFile), "postgres://db.example/cradle"); err != nil {
			t.Errorf("checkKeyNotLost with PostgreSQL: %v", err)
		}
	})
}

func FuzzParseConfigYAML(f *testing.F) {
	example, err := os.ReadFile("cradle.example.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte("listen: :0\nlog: {level: debug}\n"))
	f.Add([]byte("http:\n  max_body_bytes: 12KiB\n  shutdown_timeout: 1h\n"))
	f.Add([]byte("store: &a postgres://x\ndata_dir: *a\n"))
	f.Add([]byte("- 1\n- 2\n"))
	f.Add([]byte("log:\n  level:\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c := DefaultConfig()
		if err := parseConfigYAML(data, &c); err != nil {
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("error %q does not start with \"config: \"", err)
			}
			return
		}
		// Whatever was accepted must pass its own field's check again.
		for _, fl := range configFields {
			v := fl.get(&c)
			c2 := DefaultConfig()
			if err := fl.set(&c2, v); err != nil {
				t.Fatalf("accepted %s = %q, which its check refuses: %v", fl.key, v, err)
			}
		}
	})
}

func FuzzParseAuditKey(f *testing.F) {
	_, key, _ := ed25519.GenerateKey(nil)
	good := encodeKey(f, key)
	f.Add(good)
	f.Add(good[:40])
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := parseAuditKey(data)
		if err != nil {
			return
		}
		if len(k) != ed25519.PrivateKeySize {
			t.Fatalf("parsed a key of %d bytes", len(k))
		}
		again, err := parseAuditKey(encodeKey(t, k))
		if err != nil || !again.Equal(k) {
			t.Fatalf("re-encoded key does not parse back: %v", err)
		}
	})
}

func FuzzParseCLIConfig(f *testing.F) {
	f.Add([]byte("server: http://127.0.0.1:8080\ntoken: cradle_0123456789abcdef_secret\n"))
	f.Add([]byte("server: ftp://x\n"))
	f.Add([]byte("token: [1]\n"))
	f.Add([]byte("extra: 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := parseCLIConfig(data)
		if err != nil {
			return
		}
		if c.Server != "" {
			if err := checkServerURL(c.Server); err != nil {
				t.Fatalf("accepted server %q: %v", c.Server, err)
			}
		}
	})
}
