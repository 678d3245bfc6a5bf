package storetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"embed"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"cradle"
	"cradle/internal/mcuboot"
	"cradle/internal/sqlstore"

	"github.com/google/go-cmp/cmp"
)

// mcubootVectors are images and public keys made by MCUboot's imgtool
// (copied from the shared reference vectors), so that image key
// fingerprints are checked against the KEYHASH imgtool writes.
//
//go:embed testdata/mcuboot
var mcubootVectors embed.FS

func vector(t *testing.T, name string) []byte {
	t.Helper()
	b, err := mcubootVectors.ReadFile("testdata/mcuboot/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// releaseKit is one tenant with a release store.
type releaseKit struct {
	t      *testing.T
	e      *Env
	svc    *sqlstore.ReleaseService
	tenant *cradle.Tenant
	admin  context.Context
}

func newReleaseKit(t *testing.T, e *Env, tenant string) *releaseKit {
	t.Helper()
	tn, admin := e.Tenant(tenant, cradle.RoleAdmin)
	return &releaseKit{t: t, e: e, svc: sqlstore.NewReleaseService(e.DB), tenant: tn, admin: admin}
}

// digest returns a made-up artifact digest named after s.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// fileRelease is a valid ReleaseCreate of a plain file.
func fileRelease(model, version string, counter uint32) cradle.ReleaseCreate {
	return cradle.ReleaseCreate{Model: model, Version: version, Kind: cradle.ReleaseFile, SHA256: digest(model + "@" + version),
		Size: 1000 + int64(counter), FileName: "fw-" + version + ".bin", SecurityCounter: counter}
}

func (k *releaseKit) create(c cradle.ReleaseCreate) *cradle.Release {
	k.t.Helper()
	r, err := k.svc.CreateRelease(k.admin, c)
	if err != nil {
		k.t.Fatalf("create release %s %s: %v", c.Model, c.Version, err)
	}
	return r
}

func (k *releaseKit) sign(r *cradle.Release, deltas ...cradle.ReleaseDelta) *cradle.Release {
	k.t.Helper()
	out, err := k.svc.MarkReleaseSigned(k.admin, r.ID, targetPath(r), deltas)
	if err != nil {
		k.t.Fatalf("sign release %s: %v", r.ID, err)
	}
	return out
}

func targetPath(r *cradle.Release) string { return r.Model + "/" + r.Version + "/" + r.FileName }

// deltaFrom is a delta from base to r.
func deltaFrom(base, r *cradle.Release) cradle.ReleaseDelta {
	return cradle.ReleaseDelta{FromRelease: base.ID, FromSHA256: base.SHA256, FromSize: base.Size,
		SHA256: digest("delta " + base.ID + " " + r.ID), Size: 77, TargetPath: targetPath(r) + ".from-" + base.Version + ".zst"}
}

// actions lists the audit actions of the kit's tenant after its creation,
// in order.
func (k *releaseKit) actions() []string {
	k.t.Helper()
	entries, err := k.e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{Limit: cradle.MaxPageSize})
	if err != nil {
		k.t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if e.Action != "tenant.create" {
			out = append(out, e.Action)
		}
	}
	return out
}

func pemOf(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func testReleaseLifecycle(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	key := must[*cradle.ImageKey](t)(k.svc.AddImageKey(k.admin, cradle.ImageKey{Model: "gw-1", PublicKey: string(vector(t, "ecdsa-p256-pub.pem")), Name: "release key"}))

	c1 := cradle.ReleaseCreate{Model: "gw-1", Version: "1.2.3+4", HardwareRevisions: []string{"B1", "B2"}, Kind: cradle.ReleaseMCUboot,
		SHA256: digest("one"), Size: 6674, FileName: "gw-1.2.3.bin", SecurityCounter: 5, Notes: "first", ImageKey: key.Fingerprint}
	r1 := k.create(c1)
	want := &cradle.Release{ID: r1.ID, Model: "gw-1", Version: "1.2.3+4", HardwareRevisions: []string{"B1", "B2"}, Kind: cradle.ReleaseMCUboot,
		SHA256: digest("one"), Size: 6674, FileName: "gw-1.2.3.bin", SecurityCounter: 5, Notes: "first", State: cradle.ReleaseUploaded,
		ImageKey: key.Fingerprint, CreatedBy: "test:admin(admin)", CreatedAt: Epoch, UpdatedAt: Epoch}
	if diff := cmp.Diff(want, r1); diff != "" {
		t.Fatalf("created release (-want +got):\n%s", diff)
	}
	if !strings.HasPrefix(r1.ID, "rel_") || len(r1.ID) != 24 || strings.Trim(r1.ID[4:], "0123456789abcdef") != "" {
		t.Fatalf("release id %q: want rel_ and 20 hex digits", r1.ID)
	}
	if diff := cmp.Diff(want, must[*cradle.Release](t)(k.svc.FindRelease(k.admin, r1.ID))); diff != "" {
		t.Fatalf("found release (-want +got):\n%s", diff)
	}

	e.Clock.Add(time.Minute)
	r1 = k.sign(r1)
	if r1.State != cradle.ReleaseSigned || r1.TargetPath != "gw-1/1.2.3+4/gw-1.2.3.bin" || !r1.SignedAt.Equal(Epoch.Add(time.Minute)) || len(r1.Deltas) != 0 {
		t.Fatalf("signed release: %+v", r1)
	}

	e.Clock.Add(time.Minute)
	r2 := k.create(fileRelease("gw-1", "1.3.0", 6))
	r0 := k.create(fileRelease("gw-1", "1.1.0", 7))
	signed := k.sign(r2, deltaFrom(r1, r2), deltaFrom(r0, r2))
	if diff := cmp.Diff([]cradle.ReleaseDelta{deltaFrom(r1, r2), deltaFrom(r0, r2)}, signed.Deltas); diff != "" {
		t.Fatalf("deltas (-want +got):\n%s", diff)
	}
	// Re-signing replaces the deltas.
	signed = k.sign(signed, deltaFrom(r0, r2))
	if diff := cmp.Diff([]cradle.ReleaseDelta{deltaFrom(r0, r2)}, signed.Deltas); diff != "" {
		t.Fatalf("deltas after re-signing (-want +got):\n%s", diff)
	}
	if got := must[*cradle.Release](t)(k.svc.FindRelease(k.admin, r2.ID)); !cmp.Equal(got, signed) {
		t.Fatalf("found after signing:\n%s", cmp.Diff(signed, got))
	}

	// Lists: newest first, by model and state, limited.
	k.create(fileRelease("other", "1", 0))
	list := func(f cradle.ReleaseFilter) []string {
		t.Helper()
		rs := must[[]*cradle.Release](t)(k.svc.FindReleases(k.admin, f))
		var out []string
		for _, r := range rs {
			out = append(out, r.Model+"@"+r.Version)
		}
		return out
	}
	signedState, uploaded := cradle.ReleaseSigned, cradle.ReleaseUploaded
	for _, tc := range []struct {
		name string
		f    cradle.ReleaseFilter
		want []string
	}{
		{"all", cradle.ReleaseFilter{}, []string{"other@1", "gw-1@1.1.0", "gw-1@1.3.0", "gw-1@1.2.3+4"}},
		{"model", cradle.ReleaseFilter{Model: "gw-1"}, []string{"gw-1@1.1.0", "gw-1@1.3.0", "gw-1@1.2.3+4"}},
		{"signed", cradle.ReleaseFilter{State: &signedState}, []string{"gw-1@1.3.0", "gw-1@1.2.3+4"}},
		{"model uploaded", cradle.ReleaseFilter{Model: "gw-1", State: &uploaded}, []string{"gw-1@1.1.0"}},
		{"limit", cradle.ReleaseFilter{Limit: 2}, []string{"other@1", "gw-1@1.1.0"}},
		{"no such model", cradle.ReleaseFilter{Model: "nope"}, nil},
	} {
		if diff := cmp.Diff(tc.want, list(tc.f)); diff != "" {
			t.Errorf("list %s (-want +got):\n%s", tc.name, diff)
		}
	}
	// The deltas come with listed releases too.
	if rs := must[[]*cradle.Release](t)(k.svc.FindReleases(k.admin, cradle.ReleaseFilter{State: &signedState})); len(rs[0].Deltas) != 1 || len(rs[1].Deltas) != 0 {
		t.Fatalf("listed deltas: %+v / %+v", rs[0].Deltas, rs[1].Deltas)
	}

	// Deprecate, then yank; yanked is final.
	e.Clock.Add(time.Minute)
	dep := must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, r1.ID, cradle.ReleaseDeprecated, "superseded by 1.3.0"))
	if dep.State != cradle.ReleaseDeprecated || dep.Reason != "superseded by 1.3.0" || !dep.UpdatedAt.Equal(Epoch.Add(3*time.Minute)) {
		t.Fatalf("deprecated: %+v", dep)
	}
	_, err := k.svc.MarkReleaseSigned(k.admin, r1.ID, targetPath(r1), nil)
	wantCode(t, err, cradle.ECONFLICT, "deprecated")
	_, err = k.svc.SetReleaseState(k.admin, r1.ID, cradle.ReleaseDeprecated, "again")
	wantCode(t, err, cradle.ECONFLICT, "only a signed release")
	_, err = k.svc.SetReleaseState(k.admin, r0.ID, cradle.ReleaseDeprecated, "")
	wantCode(t, err, cradle.ECONFLICT, "uploaded", "only a signed release")
	yanked := must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, r1.ID, cradle.ReleaseYanked, "boot loop on B1"))
	if yanked.State != cradle.ReleaseYanked || yanked.Reason != "boot loop on B1" {
		t.Fatalf("yanked: %+v", yanked)
	}
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, r0.ID, cradle.ReleaseYanked, "")) // uploaded → yanked
	for _, to := range []cradle.ReleaseState{cradle.ReleaseYanked, cradle.ReleaseDeprecated} {
		_, err = k.svc.SetReleaseState(k.admin, r1.ID, to, "")
		wantCode(t, err, cradle.ECONFLICT, "stays yanked")
	}
	_, err = k.svc.MarkReleaseSigned(k.admin, r1.ID, targetPath(r1), nil)
	wantCode(t, err, cradle.ECONFLICT, "yanked")
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, r2.ID, cradle.ReleaseYanked, "")) // signed → yanked

	wantActions := []string{"image_key.add", "release.create", "release.sign", "release.create", "release.create", "release.sign", "release.sign",
		"release.create", "release.deprecate", "release.sign.refused", "release.deprecate.refused", "release.deprecate.refused",
		"release.yank", "release.yank", "release.yank.refused", "release.deprecate.refused", "release.sign.refused", "release.yank"}
	if diff := cmp.Diff(wantActions, k.actions()); diff != "" {
		t.Fatalf("audit actions (-want +got):\n%s", diff)
	}
	if v := verify(t, e, k.admin); !v.OK {
		t.Fatalf("audit chain: %+v", v)
	}
}

func testReleaseValidation(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	good := fileRelease("gw-1", "1.0.0", 1)
	long := func(n int) string { return strings.Repeat("a", n) }
	manyRevs := make([]string, cradle.MaxHardwareRevs+1)
	for i := range manyRevs {
		manyRevs[i] = fmt.Sprintf("r%d", i)
	}
	for _, tc := range []struct {
		name string
		edit func(*cradle.ReleaseCreate)
		msg  string
	}{
		{"no model", func(c *cradle.ReleaseCreate) { c.Model = "" }, "model is required"},
		{"model with space", func(c *cradle.ReleaseCreate) { c.Model = "gw 1" }, "invalid model"},
		{"model too long", func(c *cradle.ReleaseCreate) { c.Model = long(cradle.MaxModelLen + 1) }, "invalid model"},
		{"no version", func(c *cradle.ReleaseCreate) { c.Version = "" }, "version is required"},
		{"version with slash", func(c *cradle.ReleaseCreate) { c.Version = "1/2" }, "invalid version"},
		{"version too long", func(c *cradle.ReleaseCreate) { c.Version = long(cradle.MaxReleaseVersion + 1) }, "invalid version"},
		{"too many revisions", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = manyRevs }, "invalid hardware_revisions: 33 revisions, at most 32"},
		{"duplicate revision", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = []string{"B1", "B2", "B1"} }, `"B1" is listed twice`},
		{"bad revision", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = []string{"B 1"} }, "invalid hardware revision"},
		{"empty revision", func(c *cradle.ReleaseCreate) { c.HardwareRevisions = []string{""} }, "hardware revision is required"},
		{"no kind", func(c *cradle.ReleaseCreate) { c.Kind = "" }, "invalid kind"},
		{"unknown kind", func(c *cradle.ReleaseCreate) { c.Kind = "deb" }, `invalid kind "deb"`},
		{"short sha256", func(c *cradle.ReleaseCreate) { c.SHA256 = c.SHA256[:63] }, "invalid sha256"},
		{"upper-case sha256", func(c *cradle.ReleaseCreate) { c.SHA256 = strings.ToUpper(c.SHA256) }, "lower-case"},
		{"non-hex sha256", func(c *cradle.ReleaseCreate) { c.SHA256 = "g" + c.SHA256[1:] }, "invalid sha256"},
		{"zero size", func(c *cradle.ReleaseCreate) { c.Size = 0 }, "invalid size 0"},
		{"negative size", func(c *cradle.ReleaseCreate) { c.Size = -5 }, "invalid size -5"},
		{"no file name", func(c *cradle.ReleaseCreate) { c.FileName = "" }, "file_name is required"},
		{"file name with slash", func(c *cradle.ReleaseCreate) { c.FileName = "a/b.bin" }, "invalid file_name"},
		{"file name with backslash", func(c *cradle.ReleaseCreate) { c.FileName = `a\b.bin` }, "invalid file_name"},
		{"file name dot-dot", func(c *cradle.ReleaseCreate) { c.FileName = ".." }, "invalid file_name"},
		{"file name containing dot-dot", func(c *cradle.ReleaseCreate) { c.FileName = "fw..bin" }, "invalid file_name"},
		{"file name with newline", func(c *cradle.ReleaseCreate) { c.FileName = "fw\n.bin" }, "invalid file_name"},
		{"file name with space around", func(c *cradle.ReleaseCreate) { c.FileName = " fw.bin" }, "invalid file_name"},
		{"file name too long", func(c *cradle.ReleaseCreate) { c.FileName = long(cradle.MaxReleaseFileName + 1) }, "invalid file_name"},
		{"file name not UTF-8", func(c *cradle.ReleaseCreate) { c.FileName = "fw\xff.bin" }, "invalid file_name"},
		{"notes too long", func(c *cradle.ReleaseCreate) { c.Notes = long(cradle.MaxReleaseNotes + 1) }, "invalid notes"},
		{"notes not UTF-8", func(c *cradle.ReleaseCreate) { c.Notes = "\xc3" }, "invalid notes"},
		{"image key on a file", func(c *cradle.ReleaseCreate) { c.ImageKey = digest("k") }, "invalid image_key: only an MCUboot image"},
		{"malformed image key", func(c *cradle.ReleaseCreate) { c.Kind, c.ImageKey = cradle.ReleaseMCUboot, "abc" }, "invalid image_key"},
		{"untrusted image key", func(c *cradle.ReleaseCreate) { c.Kind, c.ImageKey = cradle.ReleaseMCUboot, digest("k") }, "is not trusted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			c.HardwareRevisions = nil
			tc.edit(&c)
			_, err := k.svc.CreateRelease(k.admin, c)
			wantCode(t, err, cradle.EINVALID, tc.msg)
		})
	}
	// Edge values that are fine.
	edge := good
	edge.Version, edge.FileName, edge.Notes = long(cradle.MaxReleaseVersion), "fw.v1 (final).bin", long(cradle.MaxReleaseNotes)
	edge.HardwareRevisions = manyRevs[:cradle.MaxHardwareRevs]
	r := k.create(edge)
	if len(r.HardwareRevisions) != cradle.MaxHardwareRevs {
		t.Fatalf("revisions: %v", r.HardwareRevisions)
	}
	if n := count(t, e, `SELECT COUNT(*) FROM releases`); n != 1 {
		t.Fatalf("%d releases stored; the refused ones must store nothing", n)
	}

	// Signing: target paths and deltas.
	base := k.create(fileRelease("gw-1", "0.9", 0))
	other := k.create(fileRelease("gw-2", "0.9", 0))
	okDelta := deltaFrom(base, r)
	for _, tc := range []struct {
		name   string
		path   string
		deltas func() []cradle.ReleaseDelta
		msg    string
	}{
		{"empty target path", "", nil, "invalid target_path"},
		{"absolute target path", "/gw-1/fw.bin", nil, "invalid target_path"},
		{"dot-dot target path", "gw-1/../fw.bin", nil, "invalid target_path"},
		{"empty element", "gw-1//fw.bin", nil, "invalid target_path"},
		{"target path too long", long(cradle.MaxTargetPath + 1), nil, "invalid target_path"},
		{"delta without base", "", func() []cradle.ReleaseDelta { d := okDelta; d.FromRelease = ""; return []cradle.ReleaseDelta{d} }, "deltas[0].from_release is required"},
		{"delta from itself", "", func() []cradle.ReleaseDelta { d := okDelta; d.FromRelease = r.ID; return []cradle.ReleaseDelta{d} }, "to itself"},
		{"two deltas from one base", "", func() []cradle.ReleaseDelta { return []cradle.ReleaseDelta{okDelta, okDelta} }, "deltas[1]: a second delta"},
		{"delta bad sha256", "", func() []cradle.ReleaseDelta { d := okDelta; d.SHA256 = "x"; return []cradle.ReleaseDelta{d} }, "invalid deltas[0].sha256"},
		{"delta bad base sha256", "", func() []cradle.ReleaseDelta { d := okDelta; d.FromSHA256 = ""; return []cradle.ReleaseDelta{d} }, "invalid deltas[0].from_sha256"},
		{"delta zero size", "", func() []cradle.ReleaseDelta { d := okDelta; d.Size = 0; return []cradle.ReleaseDelta{d} }, "must be positive"},
		{"delta bad target path", "", func() []cradle.ReleaseDelta { d := okDelta; d.TargetPath = "../x"; return []cradle.ReleaseDelta{d} }, "invalid deltas[0].target_path"},
		{"delta unknown base", "", func() []cradle.ReleaseDelta {
			d := okDelta
			d.FromRelease = "rel_00000000000000000000"
			return []cradle.ReleaseDelta{d}
		}, "not found"},
		{"delta base of another model", "", func() []cradle.ReleaseDelta { return []cradle.ReleaseDelta{deltaFrom(other, r)} }, `is of model "gw-2"`},
		{"delta base digest differs", "", func() []cradle.ReleaseDelta {
			d := okDelta
			d.FromSHA256 = digest("else")
			return []cradle.ReleaseDelta{d}
		}, "base release " + base.ID + " is " + base.SHA256},
		{"delta base size differs", "", func() []cradle.ReleaseDelta { d := okDelta; d.FromSize++; return []cradle.ReleaseDelta{d} }, "base release " + base.ID},
	} {
		t.Run("sign/"+tc.name, func(t *testing.T) {
			p := tc.path
			if p == "" && tc.deltas != nil {
				p = targetPath(r)
			}
			var ds []cradle.ReleaseDelta
			if tc.deltas != nil {
				ds = tc.deltas()
			}
			_, err := k.svc.MarkReleaseSigned(k.admin, r.ID, p, ds)
			wantCode(t, err, cradle.EINVALID, tc.msg)
		})
	}
	if got := must[*cradle.Release](t)(k.svc.FindRelease(k.admin, r.ID)); got.State != cradle.ReleaseUploaded || len(got.Deltas) != 0 || got.TargetPath != "" {
		t.Fatalf("a refused signing changed the release: %+v", got)
	}
	_, err := k.svc.MarkReleaseSigned(k.admin, "rel_00000000000000000000", "a/b", nil)
	wantCode(t, err, cradle.ENOTFOUND, "rel_00000000000000000000")

	// State changes.
	for _, tc := range []struct {
		name   string
		to     cradle.ReleaseState
		reason string
		msg    string
	}{
		{"to uploaded", cradle.ReleaseUploaded, "", "invalid release state"},
		{"to signed", cradle.ReleaseSigned, "", "invalid release state"},
		{"to nonsense", "gone", "", `invalid release state "gone"`},
		{"reason too long", cradle.ReleaseYanked, long(cradle.MaxReleaseReason + 1), "invalid reason"},
		{"reason not UTF-8", cradle.ReleaseYanked, "\xff", "invalid reason"},
	} {
		t.Run("state/"+tc.name, func(t *testing.T) {
			_, err := k.svc.SetReleaseState(k.admin, r.ID, tc.to, tc.reason)
			wantCode(t, err, cradle.EINVALID, tc.msg)
		})
	}
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, r.ID, cradle.ReleaseYanked, long(cradle.MaxReleaseReason)))
	_, err = k.svc.SetReleaseState(k.admin, "rel_00000000000000000000", cradle.ReleaseYanked, "")
	wantCode(t, err, cradle.ENOTFOUND)

	// Filters.
	bad := cradle.ReleaseState("nope")
	_, err = k.svc.FindReleases(k.admin, cradle.ReleaseFilter{State: &bad})
	wantCode(t, err, cradle.EINVALID, "unknown release state")
	for _, n := range []int{-1, cradle.MaxPageSize + 1} {
		_, err = k.svc.FindReleases(k.admin, cradle.ReleaseFilter{Limit: n})
		wantCode(t, err, cradle.EINVALID, "invalid limit")
	}
	_, err = k.svc.FindRelease(k.admin, "rel_00000000000000000000")
	wantCode(t, err, cradle.ENOTFOUND, "not found")
}

func testReleaseConflicts(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	k2 := newReleaseKit(t, e, "globex")
	r := k.create(fileRelease("gw-1", "1.0.0", 1))
	dup := fileRelease("gw-1", "1.0.0", 2)
	dup.SHA256 = digest("different bytes")
	_, err := k.svc.CreateRelease(k.admin, dup)
	wantCode(t, err, cradle.ECONFLICT, `model "gw-1" already has a release of version "1.0.0"`, r.ID)
	// The same model and version in another tenant, and another model.
	r2 := k2.create(fileRelease("gw-1", "1.0.0", 1))
	k.create(fileRelease("gw-2", "1.0.0", 1))

	// Tenants do not see each other's releases, nor use them as delta bases.
	_, err = k2.svc.FindRelease(k2.admin, r.ID)
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k2.svc.SetReleaseState(k2.admin, r.ID, cradle.ReleaseYanked, "")
	wantCode(t, err, cradle.ENOTFOUND)
	_, err = k2.svc.MarkReleaseSigned(k2.admin, r2.ID, targetPath(r2), []cradle.ReleaseDelta{deltaFrom(r, r2)})
	wantCode(t, err, cradle.EINVALID, "not found")
	if rs := must[[]*cradle.Release](t)(k2.svc.FindReleases(k2.admin, cradle.ReleaseFilter{})); len(rs) != 1 || rs[0].ID != r2.ID {
		t.Fatalf("globex sees %d releases", len(rs))
	}
	if n := count(t, e, `SELECT COUNT(*) FROM releases`); n != 3 {
		t.Fatalf("%d releases stored, want 3", n)
	}
	if got := k.actions(); !slices.Contains(got, "release.create.refused") {
		t.Fatalf("the duplicate was not audited: %v", got)
	}
}

func testReleaseDowngrade(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	v1 := k.sign(k.create(fileRelease("gw-1", "1.0", 5)))
	// An uploaded release does not raise the floor; another model has its own.
	k.create(fileRelease("gw-1", "3.0", 9))
	k.sign(k.create(fileRelease("gw-2", "1.0", 20)))

	_, err := k.svc.CreateRelease(k.admin, fileRelease("gw-1", "0.9", 4))
	wantCode(t, err, cradle.EINVALID, "downgrade", "security counter 4 is below 5", v1.ID, "version 1.0")
	same := k.create(fileRelease("gw-1", "1.0.1", 5)) // equal is no downgrade
	v2 := k.sign(k.create(fileRelease("gw-1", "2.0", 7)))
	_, err = k.svc.CreateRelease(k.admin, fileRelease("gw-1", "1.5", 6))
	wantCode(t, err, cradle.EINVALID, "downgrade", "below 7", v2.ID)
	// Signing an older upload after a newer release was signed is a
	// downgrade too; re-signing a signed release is not.
	_, err = k.svc.MarkReleaseSigned(k.admin, same.ID, targetPath(same), nil)
	wantCode(t, err, cradle.EINVALID, "downgrade", "below 7", v2.ID)
	k.sign(v1)
	// A deprecated release still counts; a yanked one does not.
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, v2.ID, cradle.ReleaseDeprecated, ""))
	_, err = k.svc.CreateRelease(k.admin, fileRelease("gw-1", "1.6", 6))
	wantCode(t, err, cradle.EINVALID, "downgrade", v2.ID)
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, v2.ID, cradle.ReleaseYanked, "bricks devices"))
	k.create(fileRelease("gw-1", "1.6", 6))

	refusals := 0
	for _, a := range k.actions() {
		if a == "release.create.refused" || a == "release.sign.refused" {
			refusals++
		}
	}
	if refusals != 4 {
		t.Fatalf("%d downgrade refusals audited, want 4: %v", refusals, k.actions())
	}
}

func testImageKeys(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	k2 := newReleaseKit(t, e, "globex")
	var fingerprints []string
	for _, v := range []struct{ pub, image string }{{"ecdsa-p256-pub.pem", "ecdsa-p256-signed.bin"}, {"ed25519-pub.pem", "ed25519-signed.bin"}} {
		img, err := mcuboot.Parse(vector(t, v.image))
		if err != nil {
			t.Fatalf("%s: %v", v.image, err)
		}
		key, err := k.svc.AddImageKey(k.admin, cradle.ImageKey{Model: "gw-1", PublicKey: string(vector(t, v.pub)), Name: v.pub})
		if err != nil {
			t.Fatalf("add %s: %v", v.pub, err)
		}
		// The fingerprint is the KEYHASH that imgtool put into the image.
		if want := hex.EncodeToString(img.KeyHash); key.Fingerprint != want {
			t.Fatalf("%s: fingerprint %s, imgtool's KEYHASH %s", v.pub, key.Fingerprint, want)
		}
		if key.Model != "gw-1" || key.Name != v.pub || key.CreatedBy != "test:admin(admin)" || !key.CreatedAt.Equal(Epoch) {
			t.Fatalf("key: %+v", key)
		}
		fingerprints = append(fingerprints, key.Fingerprint)
	}
	ecPEM := string(vector(t, "ecdsa-p256-pub.pem"))
	ecFingerprint := fingerprints[0]

	// The same key for the same model again: the stored key, no change.
	before := len(k.actions())
	again := must[*cradle.ImageKey](t)(k.svc.AddImageKey(k.admin, cradle.ImageKey{Model: "gw-1", PublicKey: ecPEM, Name: "renamed"}))
	if again.Name != "ecdsa-p256-pub.pem" || len(k.actions()) != before {
		t.Fatalf("adding a key again changed something: %+v, %d audit entries after %d", again, len(k.actions()), before)
	}
	// Another model: refused, naming the model it is trusted for.
	_, err := k.svc.AddImageKey(k.admin, cradle.ImageKey{Model: "gw-2", PublicKey: ecPEM})
	wantCode(t, err, cradle.ECONFLICT, `already trusted for model "gw-1"`)
	// Another tenant has keys of its own.
	must[*cradle.ImageKey](t)(k2.svc.AddImageKey(k2.admin, cradle.ImageKey{Model: "gw-2", PublicKey: ecPEM}))

	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name string
		key  cradle.ImageKey
		msg  string
	}{
		{"not PEM", cradle.ImageKey{Model: "gw-1", PublicKey: "hello"}, "no PEM block"},
		{"private key block", cradle.ImageKey{Model: "gw-1", PublicKey: strings.Replace(ecPEM, "PUBLIC KEY", "EC PRIVATE KEY", 2)}, `"EC PRIVATE KEY"`},
		{"two keys", cradle.ImageKey{Model: "gw-1", PublicKey: ecPEM + pemOf(t, edPub)}, "data after the PEM block"},
		{"garbage DER", cradle.ImageKey{Model: "gw-1", PublicKey: string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}}))}, "invalid public_key"},
		{"P-384", cradle.ImageKey{Model: "gw-1", PublicKey: pemOf(t, &p384.PublicKey)}, "ECDSA on P-384; image keys are ECDSA P-256 or Ed25519"},
		{"RSA", cradle.ImageKey{Model: "gw-1", PublicKey: pemOf(t, &rsaKey.PublicKey)}, "a *rsa.PublicKey; image keys are ECDSA P-256 or Ed25519"},
		{"no model", cradle.ImageKey{PublicKey: pemOf(t, edPub)}, "model is required"},
		{"bad model", cradle.ImageKey{Model: "a b", PublicKey: pemOf(t, edPub)}, "invalid model"},
		{"bad name", cradle.ImageKey{Model: "gw-1", PublicKey: pemOf(t, edPub), Name: "a\nb"}, "invalid name"},
		{"wrong fingerprint", cradle.ImageKey{Model: "gw-1", PublicKey: pemOf(t, edPub), Fingerprint: digest("x")}, "the key's fingerprint is"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := k.svc.AddImageKey(k.admin, tc.key)
			wantCode(t, err, cradle.EINVALID, tc.msg)
		})
	}

	keys := must[[]*cradle.ImageKey](t)(k.svc.FindImageKeys(k.admin, ""))
	if len(keys) != 2 {
		t.Fatalf("%d keys, want 2", len(keys))
	}
	if got := must[[]*cradle.ImageKey](t)(k.svc.FindImageKeys(k.admin, "gw-2")); len(got) != 0 {
		t.Fatalf("gw-2 has %d keys in acme", len(got))
	}
	ec := keys[0]
	if ec.Fingerprint != ecFingerprint {
		ec = keys[1]
	}
	if ec.Fingerprint != ecFingerprint || ec.PublicKey != ecPEM {
		t.Fatalf("stored P-256 key %+v, want fingerprint %s and PEM\n%s", ec, ecFingerprint, ecPEM)
	}

	// Releases name a trusted key of their model.
	c := fileRelease("gw-1", "1.0", 1)
	c.Kind, c.ImageKey = cradle.ReleaseMCUboot, ec.Fingerprint
	k.create(c)
	c2 := fileRelease("gw-2", "1.0", 1)
	c2.Kind, c2.ImageKey = cradle.ReleaseMCUboot, ec.Fingerprint
	_, err = k.svc.CreateRelease(k.admin, c2)
	wantCode(t, err, cradle.EINVALID, "wrong model", `signs images of model "gw-1", not "gw-2"`)

	if err := k.svc.RemoveImageKey(k.admin, ec.Fingerprint); err != nil {
		t.Fatal(err)
	}
	wantCode(t, k.svc.RemoveImageKey(k.admin, ec.Fingerprint), cradle.ENOTFOUND, "image key")
	c.Version = "1.1"
	_, err = k.svc.CreateRelease(k.admin, c)
	wantCode(t, err, cradle.EINVALID, "not trusted")
	if got := must[[]*cradle.ImageKey](t)(k.svc.FindImageKeys(k.admin, "gw-1")); len(got) != 1 {
		t.Fatalf("%d keys after removal, want 1", len(got))
	}
	// globex's copy of the key is untouched.
	if got := must[[]*cradle.ImageKey](t)(k2.svc.FindImageKeys(k2.admin, "")); len(got) != 1 || got[0].Fingerprint != ec.Fingerprint {
		t.Fatalf("globex keys: %+v", got)
	}
	want := []string{"image_key.add", "image_key.add", "image_key.add.refused", "release.create", "release.create.refused", "image_key.remove", "release.create.refused"}
	if diff := cmp.Diff(want, k.actions()); diff != "" {
		t.Fatalf("audit actions (-want +got):\n%s", diff)
	}
}

func testReleasePermissions(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	k2 := newReleaseKit(t, e, "globex")
	auditor, device := e.As(k.tenant.ID, cradle.RoleAuditor), asDevice(k.tenant.ID, "SN-1")
	r := k.create(fileRelease("gw-1", "1.0", 1))
	must[*cradle.Release](t)(k.svc.FindRelease(auditor, r.ID))
	must[[]*cradle.ImageKey](t)(k.svc.FindImageKeys(auditor, ""))

	_, err := k.svc.CreateRelease(auditor, fileRelease("gw-1", "2.0", 1))
	wantCode(t, err, cradle.EFORBIDDEN, "role auditor may not upload")
	_, err = k.svc.MarkReleaseSigned(auditor, r.ID, targetPath(r), nil)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.svc.SetReleaseState(auditor, r.ID, cradle.ReleaseYanked, "")
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.svc.AddImageKey(auditor, cradle.ImageKey{Model: "gw-1", PublicKey: string(vector(t, "ed25519-pub.pem"))})
	wantCode(t, err, cradle.EFORBIDDEN)
	wantCode(t, k.svc.RemoveImageKey(auditor, digest("k")), cradle.EFORBIDDEN)
	_, err = k.svc.FindRelease(device, r.ID)
	wantCode(t, err, cradle.EFORBIDDEN)
	_, err = k.svc.FindReleases(context.Background(), cradle.ReleaseFilter{})
	wantCode(t, err, cradle.EUNAUTHORIZED)
	refused := 0
	for _, a := range k.actions() {
		if strings.HasSuffix(a, ".refused") {
			refused++
		}
	}
	if refused != 6 {
		t.Fatalf("%d refusals audited, want 6: %v", refused, k.actions())
	}

	// ReferencedArtifacts: the server only; every tenant; not yanked.
	err = k.svc.ReferencedArtifacts(k.admin, func(string) error { return nil })
	wantCode(t, err, cradle.EFORBIDDEN, "only the server")
	base := k.sign(k.create(fileRelease("gw-1", "0.5", 1)))
	r = k.sign(r, deltaFrom(base, r))
	gone := k.sign(k.create(fileRelease("gw-1", "3.0", 1)))
	goneBase := k.create(fileRelease("gw-1", "2.5", 1))
	gone = k.sign(gone, deltaFrom(goneBase, gone))
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, gone.ID, cradle.ReleaseYanked, ""))
	must[*cradle.Release](t)(k.svc.SetReleaseState(k.admin, goneBase.ID, cradle.ReleaseYanked, ""))
	r2 := k2.create(fileRelease("gw-9", "1.0", 1))
	// The same bytes under another release: reported once.
	dupe := fileRelease("gw-9", "1.0.1", 1)
	dupe.SHA256 = r2.SHA256
	k2.create(dupe)

	system := cradle.NewContextWithActor(context.Background(), cradle.SystemActor(0, "gc"))
	var got []string
	if err := k.svc.ReferencedArtifacts(system, func(s string) error { got = append(got, s); return nil }); err != nil {
		t.Fatal(err)
	}
	want := []string{r.SHA256, base.SHA256, r.Deltas[0].SHA256, r2.SHA256}
	slices.Sort(got)
	slices.Sort(want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("referenced artifacts (-want +got):\n%s", diff)
	}
	stop := errors.New("stop")
	calls := 0
	err = k.svc.ReferencedArtifacts(system, func(string) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("a callback error: got %v after %d calls", err, calls)
	}
}

// testReleaseConcurrent races writers of one tenant: the same version
// created at once, one key trusted for several models at once, a release
// signed, deprecated and yanked at once. Every call ends in success or a
// clear conflict, never a database error, and the rules hold afterwards.
func testReleaseConcurrent(t *testing.T, e *Env) {
	k := newReleaseKit(t, e, "acme")
	const n = 8
	race := func(fn func(i int) error) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = fn(i) }()
		}
		wg.Wait()
		return errs
	}
	tally := func(what string, errs []error, allowed ...string) map[string]int {
		t.Helper()
		out := map[string]int{}
		for _, err := range errs {
			code := cradle.ErrorCode(err)
			if err != nil && !slices.Contains(allowed, code) {
				t.Fatalf("%s: %v", what, err)
			}
			out[code]++
		}
		return out
	}

	errs := race(func(i int) error {
		c := fileRelease("gw-1", "1.0", 1)
		c.SHA256 = digest(fmt.Sprint("upload ", i))
		_, err := k.svc.CreateRelease(k.admin, c)
		return err
	})
	if got := tally("create", errs, cradle.ECONFLICT); got[""] != 1 || got[cradle.ECONFLICT] != n-1 {
		t.Fatalf("concurrent creates of one version: %v", got)
	}

	pub := string(vector(t, "ed25519-pub.pem"))
	errs = race(func(i int) error {
		_, err := k.svc.AddImageKey(k.admin, cradle.ImageKey{Model: fmt.Sprint("m", i%2), PublicKey: pub})
		return err
	})
	got := tally("add key", errs, cradle.ECONFLICT)
	keys := must[[]*cradle.ImageKey](t)(k.svc.FindImageKeys(k.admin, ""))
	if len(keys) != 1 || got[""] != n/2 || got[cradle.ECONFLICT] != n/2 {
		t.Fatalf("one key for two models at once: %v, keys %+v", got, keys)
	}

	// Releases with rising counters signed at once, while lower ones are
	// created: nothing below a signed counter gets in.
	rs := make([]*cradle.Release, n)
	for i := range rs {
		rs[i] = k.create(fileRelease("gw-2", fmt.Sprint("2.", i), uint32(10+i)))
	}
	errs = race(func(i int) error {
		if i%2 == 0 {
			_, err := k.svc.MarkReleaseSigned(k.admin, rs[i].ID, targetPath(rs[i]), nil)
			return err
		}
		_, err := k.svc.CreateRelease(k.admin, fileRelease("gw-2", fmt.Sprint("low.", i), 10))
		return err
	})
	tally("sign and create", errs, cradle.EINVALID)
	// The audit log is in commit order: no release was created below the
	// counter of a release signed before it.
	counters := map[string]uint32{}
	for _, r := range must[[]*cradle.Release](t)(k.svc.FindReleases(k.admin, cradle.ReleaseFilter{Model: "gw-2"})) {
		counters["release:"+r.ID] = r.SecurityCounter
	}
	floor, lows, signs := uint32(0), 0, 0
	for _, en := range must[[]*cradle.AuditEntry](t)(e.Audit.FindAuditEntries(k.admin, cradle.AuditFilter{Limit: cradle.MaxPageSize})) {
		c, ok := counters[en.Subject]
		switch {
		case !ok:
		case en.Action == "release.sign" && c < floor:
			t.Fatalf("%s (counter %d) was signed after a release with counter %d", en.Subject, c, floor)
		case en.Action == "release.sign":
			floor = max(floor, c)
			signs++
		case en.Action == "release.create" && c < floor:
			t.Fatalf("%s (counter %d) was created after a release with counter %d was signed", en.Subject, c, floor)
		case en.Action == "release.create" && c == 10:
			lows++
		}
	}
	if signs == 0 {
		t.Fatal("no release was signed")
	}
	t.Logf("%d of %d signed, %d of %d low releases created before a higher one was signed", signs, n/2, lows, n/2)

	r := k.create(fileRelease("gw-3", "1.0", 1))
	errs = race(func(i int) error {
		var err error
		switch i % 3 {
		case 0:
			_, err = k.svc.MarkReleaseSigned(k.admin, r.ID, targetPath(r), nil)
		case 1:
			_, err = k.svc.SetReleaseState(k.admin, r.ID, cradle.ReleaseDeprecated, "")
		default:
			_, err = k.svc.SetReleaseState(k.admin, r.ID, cradle.ReleaseYanked, "")
		}
		return err
	})
	tally("sign, deprecate, yank", errs, cradle.ECONFLICT)
	if final := must[*cradle.Release](t)(k.svc.FindRelease(k.admin, r.ID)); final.State != cradle.ReleaseYanked {
		t.Fatalf("after the race the release is %s; every yank either won or found it yanked", final.State)
	}
	if v := verify(t, e, k.admin); !v.OK {
		t.Fatalf("audit chain: %+v", v)
	}
}
