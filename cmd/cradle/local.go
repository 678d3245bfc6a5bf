package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"

	"cradle"
	"cradle/internal/sqlstore"

	"github.com/spf13/cobra"
)

// Local administration opens the store of a data directory directly, with
// the audit key found there, instead of going through the API. It works
// while the server is stopped (and, on SQLite or PostgreSQL, while it runs).
// Its changes are audited under the actor "system:local:<user>".

// localFlags are the flags of a command that can work on a data directory.
type localFlags struct {
	dataDir string
	store   string
}

func (l *localFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&l.dataDir, "data-dir", "", "work on this data directory directly instead of through the API (the server may be stopped)")
	cmd.Flags().StringVar(&l.store, "store", "", `with --data-dir: the store, if not <data-dir>/cradle.db ("sqlite:PATH" or "postgres://…")`)
}

// local reports whether the command works on a data directory.
func (l *localFlags) local() (bool, error) {
	if l.dataDir == "" {
		if l.store != "" {
			return false, errors.New("--store needs --data-dir, which holds the audit key")
		}
		return false, nil
	}
	return true, nil
}

// open opens the data directory's store with its audit key. It never creates
// a data directory, a key or an SQLite file: a typo must not start an empty
// registry.
func (l *localFlags) open(ctx context.Context, stderr io.Writer) (*sqlstore.DB, error) {
	if err := checkStore(l.store); err != nil {
		return nil, fmt.Errorf("--store: %v", err)
	}
	fi, err := os.Stat(l.dataDir)
	if err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("data directory %s does not exist; start cradle serve --data-dir %s once to create it", l.dataDir, l.dataDir)
	}
	key, err := loadAuditKey(filepath.Join(l.dataDir, auditKeyFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s has no audit key (%s); is it a Cradle data directory?", l.dataDir, auditKeyFile)
	} else if err != nil {
		return nil, err
	}
	cfg := Config{DataDir: l.dataDir, Store: l.store}
	dsn := cfg.StoreDSN()
	if l.store == "" {
		if _, err := os.Stat(dsn); err != nil {
			return nil, fmt.Errorf("%s has no store (%s); give --store if the server uses another one", l.dataDir, dsn)
		}
	}
	return sqlstore.Open(ctx, dsn, sqlstore.Options{
		AuditKey:    key,
		WitnessPath: filepath.Join(l.dataDir, witnessFile),
		Logger:      slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
}

// localActor returns the actor for local administration in tenant t.
func localActor(tenantID int64) cradle.Actor {
	name := os.Getenv("USER")
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if name == "" {
		name = "unknown"
	}
	return cradle.SystemActor(tenantID, "local:"+name)
}

// closeStore closes db and keeps the first error.
func closeStore(db *sqlstore.DB, err *error) {
	if cerr := db.Close(); cerr != nil && *err == nil {
		*err = cerr
	}
}
