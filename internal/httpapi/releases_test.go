package httpapi_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"cradle"
	"cradle/internal/httpapi"
	"cradle/internal/sqlstore"
	"cradle/internal/sqlstore/storetest"
)

// TestReleaseRoutes uploads, signs, lists, deprecates and yanks releases
// through the Go client over the real publisher, store, artifact directory
// and TUF repository, and checks that every bad upload is a JSON error
// that stored nothing.
func TestReleaseRoutes(t *testing.T) {
	e := newEnv(t)
	ctx := t.Context()
	op := e.client(cradle.RoleOperator)
	body := []byte("firmware 1.0.0 for the gateway")
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	rel, err := op.UploadRelease(ctx, cradle.ReleaseUpload{Model: "gw-100", Version: "1.0.0", HardwareRevisions: []string{"B", "C"},
		FileName: "fw.bin", SHA256: digest, Size: int64(len(body)), SecurityCounter: 3, Notes: "first"}, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if rel.State != cradle.ReleaseUploaded || rel.Kind != cradle.ReleaseFile || rel.SHA256 != digest || rel.Size != int64(len(body)) ||
		strings.Join(rel.HardwareRevisions, ",") != "B,C" || rel.SecurityCounter != 3 || rel.Notes != "first" {
		t.Errorf("uploaded = %+v", rel)
	}
	if got, err := e.client(cradle.RoleAuditor).FindRelease(ctx, rel.ID); err != nil || got.ID != rel.ID {
		t.Errorf("FindRelease = %+v, %v", got, err)
	}
	if rel, err = op.SignRelease(ctx, rel.ID); err != nil || rel.State != cradle.ReleaseSigned || rel.TargetPath != "gw-100/1.0.0/fw.bin" {
		t.Fatalf("sign = %+v, %v", rel, err)
	}
	st, err := e.client(cradle.RoleAuditor).RepositoryStatus(ctx)
	if err != nil || st.Targets != 1 || st.Roles["targets"].Version < 2 {
		t.Errorf("repository = %+v, %v", st, err)
	}
	signed := cradle.ReleaseSigned
	if rs, err := op.FindReleases(ctx, cradle.ReleaseFilter{Model: "gw-100", State: &signed}); err != nil || len(rs) != 1 || rs[0].ID != rel.ID {
		t.Errorf("FindReleases = %+v, %v", rs, err)
	}
	if rel, err = op.DeprecateRelease(ctx, rel.ID, "superseded"); err != nil || rel.State != cradle.ReleaseDeprecated || rel.Reason != "superseded" {
		t.Errorf("deprecate = %+v, %v", rel, err)
	}
	if rel, err = op.YankRelease(ctx, rel.ID, "bricks rev C"); err != nil || rel.State != cradle.ReleaseYanked {
		t.Errorf("yank = %+v, %v", rel, err)
	}
	if st, err := op.RepositoryStatus(ctx); err != nil || st.Targets != 0 {
		t.Errorf("repository after the yank = %+v, %v", st, err)
	}
	if _, err := op.SignRelease(ctx, rel.ID); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("signing a yanked release: %v, want conflict", err)
	}

	// Bad uploads: each a JSON error, none stores a release.
	good := []byte("firmware 2.0.0")
	for _, tt := range []struct {
		name, query string
		body        []byte
		chunked     bool
		status      int
		msg         string
	}{
		{"digest mismatch", uploadPath("2.0.0", []byte("other bytes"), ""), good, false, 400, "digest mismatch"},
		{"no sha256", "/api/v1/releases?model=gw-100&version=2.0.0&kind=file", good, false, 400, "sha256 is required"},
		{"unknown parameter", uploadPath("2.0.0", good, "&colour=red"), good, false, 400, `"colour"`},
		{"repeated parameter", uploadPath("2.0.0", good, "&model=gw-200"), good, false, 400, `"model" is given 2 times`},
		{"unknown kind", strings.Replace(uploadPath("2.0.0", good, ""), "kind=file", "kind=zip", 1), good, false, 400, "unknown release kind"},
		{"bad security counter", uploadPath("2.0.0", good, "&security_counter=-1"), good, false, 400, "security_counter"},
		{"bad sign flag", uploadPath("2.0.0", good, "&sign=yes"), good, false, 400, "sign="},
		{"chunked", uploadPath("2.0.0", good, ""), good, true, 411, "Content-Length"},
		{"too large", uploadPath("2.0.0", bytes.Repeat([]byte("x"), 2<<20), ""), bytes.Repeat([]byte("x"), 2<<20), false, 413, ""},
		{"existing version", uploadPath("1.0.0", []byte("firmware 1.0.0 again"), ""), []byte("firmware 1.0.0 again"), false, 409, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rd := bytes.NewReader(tt.body)
			req, _ := http.NewRequestWithContext(ctx, "POST", e.url+tt.query, rd)
			if tt.chunked {
				req.ContentLength, req.Body, req.GetBody = -1, io.NopCloser(rd), nil
			}
			req.Header.Set("Authorization", "Bearer "+e.tokens[cradle.RoleOperator])
			req.Header.Set("Content-Type", "application/octet-stream")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var b bytes.Buffer
			b.ReadFrom(resp.Body)
			r := response{status: resp.StatusCode, body: b.Bytes()}
			if r.status != tt.status {
				t.Fatalf("status %d, want %d; %s", r.status, tt.status, r.body)
			}
			if msg := r.errorBody(t).Message; !strings.Contains(msg, tt.msg) {
				t.Errorf("message %q does not mention %q", msg, tt.msg)
			}
		})
	}
	if rs, err := op.FindReleases(ctx, cradle.ReleaseFilter{}); err != nil || len(rs) != 1 {
		t.Errorf("%d releases after the bad uploads (%v), want 1", len(rs), err)
	}

	// Image keys.
	k, err := op.AddImageKey(ctx, cradle.ImageKey{Model: "gw-100", PublicKey: newKeyPEM(t), Name: "build-1"})
	if err != nil || len(k.Fingerprint) != 64 || k.Name != "build-1" {
		t.Fatalf("AddImageKey = %+v, %v", k, err)
	}
	if _, err := op.AddImageKey(ctx, cradle.ImageKey{Model: "gw-200", PublicKey: k.PublicKey}); cradle.ErrorCode(err) != cradle.ECONFLICT {
		t.Errorf("one key for two models: %v, want conflict", err)
	}
	if _, err := op.AddImageKey(ctx, cradle.ImageKey{Model: "gw-100", PublicKey: "not a key"}); cradle.ErrorCode(err) != cradle.EINVALID {
		t.Errorf("a bad key: %v, want invalid", err)
	}
	if ks, err := e.client(cradle.RoleAuditor).FindImageKeys(ctx, "gw-100"); err != nil || len(ks) != 1 || ks[0].Fingerprint != k.Fingerprint {
		t.Errorf("FindImageKeys = %+v, %v", ks, err)
	}
	if err := op.RemoveImageKey(ctx, k.Fingerprint); err != nil {
		t.Fatal(err)
	}
	if err := op.RemoveImageKey(ctx, k.Fingerprint); cradle.ErrorCode(err) != cradle.ENOTFOUND {
		t.Errorf("removing twice: %v, want not found", err)
	}
	// Another tenant sees none of it.
	if rs, err := httpapi.NewClient(e.url, e.other, nil).FindReleases(ctx, cradle.ReleaseFilter{}); err != nil || len(rs) != 0 {
		t.Errorf("other tenant's releases = %+v, %v", rs, err)
	}
}

// FuzzUploadQuery sends arbitrary upload queries: the answer is a release
// or a JSON error of the client's making, never a 500 or a panic.
func FuzzUploadQuery(f *testing.F) {
	body := []byte("fuzzed firmware")
	sum := sha256.Sum256(body)
	digest := hex.EncodeToString(sum[:])
	for _, s := range []string{
		"", "model=gw-100&version=1&sha256=" + digest, "model=gw-100&version=1&kind=file&sha256=" + digest + "&hardware_revision=A&hardware_revision=B",
		"sha256=" + digest + "&security_counter=4294967296", "sign=true&sha256=00", "kind=mcuboot&sha256=" + digest, "notes=%ff&sha256=x",
		"a=%zz", "model=gw-100&model=x", "file_name=../../etc/passwd&model=m&version=1&sha256=" + digest,
	} {
		f.Add(s)
	}
	e := newOTAHandlerEnv(f)
	f.Fuzz(func(t *testing.T, q string) {
		req := httptest.NewRequest("POST", "/api/v1/releases", bytes.NewReader(body))
		req.URL.RawQuery = q
		req.Header.Set("Authorization", "Bearer "+e.token)
		rec := httptest.NewRecorder()
		e.handler.ServeHTTP(rec, req)
		switch {
		case rec.Code == 201:
			var r cradle.Release
			if err := json.Unmarshal(rec.Body.Bytes(), &r); err != nil || r.ID == "" {
				t.Fatalf("query %q: 201 with %q", q, rec.Body)
			}
		case rec.Code >= 400 && rec.Code < 500:
			var e cradle.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Message == "" {
				t.Fatalf("query %q: %d with %q", q, rec.Code, rec.Body)
			}
		default:
			t.Fatalf("query %q: status %d %s", q, rec.Code, rec.Body)
		}
	})
}

// newOTAHandlerEnv is the API's handler with the release services and a
// publisher over a SQLite store, with an admin token, for fuzzing.
func newOTAHandlerEnv(f testing.TB) *handlerEnv {
	_, key, _ := ed25519.GenerateKey(nil)
	clock := storetest.NewClock(storetest.Epoch)
	db, err := sqlstore.Open(f.Context(), filepath.Join(f.TempDir(), "cradle.db"), sqlstore.Options{AuditKey: key, Clock: clock})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	tokens := sqlstore.NewTokenService(db)
	secret, err := tokens.Bootstrap(f.Context())
	if err != nil {
		f.Fatal(err)
	}
	releases := sqlstore.NewReleaseService(db)
	api := &httpapi.Server{Tokens: tokens, Releases: releases, Publisher: newPublisher(f, db, clock, releases, nil)}
	return &handlerEnv{handler: api.Handler(), token: secret}
}
