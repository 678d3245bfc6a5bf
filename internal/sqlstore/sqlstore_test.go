package sqlstore_test

import (
	"database/sql"
	"os"
	"path/filepath"
	"testing"

	"cradle/internal/sqlstore/storetest"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"
)

func TestSQLite(t *testing.T) {
	storetest.Run(t, sqliteBackend())
}

func sqliteBackend() storetest.Backend {
	return storetest.Backend{
		Name: "sqlite",
		New: func(t *testing.T) (string, *sql.DB) {
			path := filepath.Join(t.TempDir(), "cradle.db")
			raw, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return path, raw
		},
		Rebind: func(q string) string { return q },
	}
}

// TestPostgres runs the suite on the server CRADLE_TEST_POSTGRES names, each
// test in a schema of its own that is dropped afterwards.
func TestPostgres(t *testing.T) {
	base := os.Getenv("CRADLE_TEST_POSTGRES")
	if base == "" {
		if os.Getenv("CI") != "" {
			t.Fatal("CRADLE_TEST_POSTGRES is not set, and CI must run the PostgreSQL store tests")
		}
		t.Skip("CRADLE_TEST_POSTGRES is not set; set it to a PostgreSQL URL (postgres://postgres@127.0.0.1:5432/test?sslmode=disable) to run the store suite on PostgreSQL")
	}
	storetest.Run(t, postgresBackend(base))
}

func postgresBackend(base string) storetest.Backend {
	return storetest.Backend{
		Name: "postgres",
		New: func(t *testing.T) (string, *sql.DB) {
			dsn := storetest.PostgresSchema(t, base, "cradle_test_")
			raw, err := sql.Open("pgx", dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return dsn, raw
		},
		Rebind: storetest.RebindDollar,
	}
}
