package sqlstore_test

import (
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
			admin, err := sql.Open("pgx", base)
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close()
			var b [6]byte
			rand.Read(b[:])
			schema := "cradle_test_" + hex.EncodeToString(b[:])
			if _, err := admin.Exec("CREATE SCHEMA " + schema); err != nil {
				t.Fatalf("create schema: %v", err)
			}
			t.Cleanup(func() {
				a, err := sql.Open("pgx", base)
				if err != nil {
					return
				}
				defer a.Close()
				a.Exec("DROP SCHEMA " + schema + " CASCADE")
			})
			u, err := url.Parse(base)
			if err != nil {
				t.Fatal(err)
			}
			q := u.Query()
			q.Set("search_path", schema)
			u.RawQuery = q.Encode()
			dsn := u.String()
			raw, err := sql.Open("pgx", dsn)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { raw.Close() })
			return dsn, raw
		},
		Rebind: func(q string) string {
			var b strings.Builder
			n := 0
			for _, c := range q {
				if c == '?' {
					n++
					b.WriteString("$" + strconv.Itoa(n))
					continue
				}
				b.WriteRune(c)
			}
			return b.String()
		},
	}
}
