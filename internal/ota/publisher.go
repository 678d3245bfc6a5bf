package ota

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	"cradle"
	"cradle/internal/artifact"
	"cradle/internal/compat/menderartifact"
	"cradle/internal/compat/swu"
	"cradle/internal/delta"
	"cradle/internal/mcuboot"
	"cradle/internal/tuf"
)

// MaxDeltaImageSize is the largest image, base or target, for which
// SignRelease tries a delta: both are held in memory while the patch is
// made.
const MaxDeltaImageSize = 256 << 20

// AllHardwareRevisions is the hardware revision a target's custom metadata
// lists when its release names none, meaning "every revision of the
// model": TUF custom metadata must list at least one revision, and a
// device matches "*" whatever its own.
const AllHardwareRevisions = "*"

// Publisher implements cradle.ReleasePublisher: it keeps the bytes in
// Artifacts, the records in Releases, and signs targets into the tenant's
// repository through Repos. Set every field but Rollouts and Logger.
type Publisher struct {
	Releases  cradle.ReleaseService
	Artifacts artifact.Store
	Repos     *Repos
	// Rollouts is used only to abort a yanked release's active rollouts;
	// nil means this server keeps no rollouts.
	Rollouts cradle.RolloutService
	// TenantName names the tenant of an actor: its repository is
	// <data_dir>/tuf/<name>.
	TenantName func(ctx context.Context, tenantID int64) (string, error)
	// MaxImageSize caps an upload; zero means cradle.DefaultMaxImageSize.
	MaxImageSize int64
	// Logger logs what happens after a change that cannot be undone
	// fails; nil means slog.Default().
	Logger *slog.Logger
}

var _ cradle.ReleasePublisher = (*Publisher)(nil)

func (p *Publisher) maxSize() int64 {
	if p.MaxImageSize > 0 {
		return p.MaxImageSize
	}
	return cradle.DefaultMaxImageSize
}

func (p *Publisher) logger() *slog.Logger {
	if p.Logger == nil {
		return slog.Default()
	}
	return p.Logger
}

// checkPathElement refuses what cannot be one element of a TUF target
// path: empty, "." or "..", a slash, a backslash, a space or a control
// character.
func checkPathElement(field, s string) error {
	if s == "" {
		return cradle.Errorf(cradle.EINVALID, "%s is required", field)
	}
	if s == "." || s == ".." {
		return cradle.Errorf(cradle.EINVALID, "%s %q is not a usable name", field, s)
	}
	for _, c := range s {
		if c < 0x21 || c == 0x7f || c == '/' || c == '\\' {
			return cradle.Errorf(cradle.EINVALID, "%s %q has a slash, backslash, space or control character", field, s)
		}
	}
	return nil
}

// targetPath is a release's TUF target path.
func targetPath(model, version, file string) string { return model + "/" + version + "/" + file }

// patchPath is the TUF target path of the patch from release fromVersion.
func patchPath(model, version, file, fromVersion string) string {
	return targetPath(model, version, file) + ".from-" + fromVersion + ".zst"
}

// checkUpload checks an upload's metadata before any byte is read.
func (p *Publisher) checkUpload(u cradle.ReleaseUpload) (artifact.Digest, error) {
	for _, f := range []struct{ name, v string }{{"model", u.Model}, {"version", u.Version}, {"file name", u.FileName}} {
		if err := checkPathElement(f.name, f.v); err != nil {
			return artifact.Digest{}, err
		}
	}
	if n := len(targetPath(u.Model, u.Version, u.FileName)); n > 200 {
		return artifact.Digest{}, cradle.Errorf(cradle.EINVALID, "model, version and file name together are %d bytes; the TUF target path allows 200", n)
	}
	if u.Kind != "" && !slices.Contains(cradle.ReleaseKinds, u.Kind) {
		return artifact.Digest{}, cradle.Errorf(cradle.EINVALID, "unknown release kind %q; use one of mcuboot, mender, swupdate, file (or none to recognise it)", u.Kind)
	}
	if len(u.HardwareRevisions) > cradle.MaxHardwareRevs {
		return artifact.Digest{}, cradle.Errorf(cradle.EINVALID, "%d hardware revisions; at most %d", len(u.HardwareRevisions), cradle.MaxHardwareRevs)
	}
	for _, r := range u.HardwareRevisions {
		if strings.TrimSpace(r) == "" || r != strings.TrimSpace(r) {
			return artifact.Digest{}, cradle.Errorf(cradle.EINVALID, "hardware revision %q is empty or has surrounding spaces", r)
		}
	}
	if len(u.Notes) > cradle.MaxReleaseNotes {
		return artifact.Digest{}, cradle.Errorf(cradle.EINVALID, "notes are %d bytes; at most %d", len(u.Notes), cradle.MaxReleaseNotes)
	}
	d, err := artifact.ParseDigest(u.SHA256)
	if err == nil && d.IsZero() {
		err = errors.New("zero digest")
	}
	if err != nil {
		return artifact.Digest{}, cradle.Errorf(cradle.EINVALID, "sha256 %q is not 64 lower-case hex digits; give the artifact's SHA-256", u.SHA256)
	}
	if u.Size <= 0 {
		return artifact.Digest{}, cradle.Errorf(cradle.EINVALID, "size %d: give the artifact's length in bytes", u.Size)
	}
	if u.Size > p.maxSize() {
		return artifact.Digest{}, cradle.Errorf(cradle.ETOOLARGE, "the artifact is %d bytes; the limit is %d (ota.max_image_size)", u.Size, p.maxSize())
	}
	return d, nil
}

// UploadRelease implements cradle.ReleasePublisher. It checks the actor
// and the metadata before it reads body, stores the bytes only when they
// have the declared digest and length, then checks what they are: an
// MCUboot image is verified, a Mender artifact or SWUpdate image is parsed
// whole from the store (checkForeign), so a malformed one, or one for
// another device type or hardware revision, makes no record. A
// failure after the bytes are stored (a bad image, a refused record)
// leaves an unreferenced blob, which garbage collection (CollectGarbage)
// removes once its grace period is over; the same bytes uploaded again
// meanwhile are stored once.
func (p *Publisher) UploadRelease(ctx context.Context, u cradle.ReleaseUpload, body io.Reader) (*cradle.Release, error) {
	if _, err := p.Releases.AuthorizeRelease(ctx, cradle.PermReleaseWrite, "release.upload", "release:"+u.Model+"/"+u.Version); err != nil {
		return nil, err
	}
	digest, err := p.checkUpload(u)
	if err != nil {
		return nil, err
	}
	if _, err := p.Artifacts.Put(ctx, body, artifact.Expect{Digest: digest, Size: u.Size, MaxSize: p.maxSize()}); err != nil {
		return nil, err
	}
	rd, _, err := p.Artifacts.Open(ctx, digest)
	if err != nil {
		return nil, fmt.Errorf("ota: open the uploaded artifact: %w", err)
	}
	defer rd.Close()
	head := make([]byte, min(u.Size, SniffSize))
	if _, err := rd.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("ota: read the uploaded artifact: %w", err)
	}
	kind := u.Kind
	if kind == "" {
		kind = Sniff(head)
	} else if err := CheckKind(head, kind); err != nil {
		return nil, err
	}
	var artifactName string
	switch kind {
	case cradle.ReleaseMender, cradle.ReleaseSWUpdate:
		if artifactName, err = p.checkForeign(kind, io.NewSectionReader(rd, 0, u.Size), u); err != nil {
			return nil, err
		}
	}
	c := cradle.ReleaseCreate{
		Model: u.Model, Version: u.Version, HardwareRevisions: u.HardwareRevisions, Kind: kind,
		SHA256: digest.String(), Size: u.Size, FileName: u.FileName, SecurityCounter: u.SecurityCounter, Notes: u.Notes,
		ArtifactName: artifactName, Remediation: u.Remediation,
	}
	if kind == cradle.ReleaseMCUboot {
		if _, err := rd.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("ota: read the uploaded artifact: %w", err)
		}
		image, err := readAllLimit(rd, u.Size)
		if err != nil {
			return nil, fmt.Errorf("ota: read the uploaded artifact: %w", err)
		}
		img, err := p.verifyImage(ctx, u.Model, image)
		if err != nil {
			return nil, err
		}
		if u.SecurityCounter != 0 && u.SecurityCounter != img.SecurityCounter {
			return nil, cradle.Errorf(cradle.EINVALID, "security counter %d was given, but the image's SEC_CNT is %d", u.SecurityCounter, img.SecurityCounter)
		}
		c.SecurityCounter = img.SecurityCounter
		c.ImageKey = hex.EncodeToString(img.KeyHash)
	}
	r, err := p.Releases.CreateRelease(ctx, c)
	if err != nil {
		return nil, err
	}
	if u.Sign {
		return p.SignRelease(ctx, r.ID)
	}
	return r, nil
}

// checkForeign parses a whole Mender artifact or SWUpdate image from the
// artifact store, streaming, and checks it against the release's model or
// hardware revisions (CheckMenderArtifact, CheckSWUpdateImage), and
// returns the name the artifact gives itself (the release's ArtifactName):
// a Mender artifact's artifact_name, which the Mender client compares with
// the one it runs, or a .swu's "name version" (SWUpdateArtifactName).
// Refusals are the parsers' own cradle.Errors; a failing read is internal.
func (p *Publisher) checkForeign(kind cradle.ReleaseKind, r io.Reader, u cradle.ReleaseUpload) (string, error) {
	var err error
	var name string
	switch kind {
	case cradle.ReleaseMender:
		var a *menderartifact.Artifact
		if a, err = CheckMenderArtifact(r, u.Model, MenderPayloadFactor*p.maxSize()); err == nil {
			name = a.Name
		}
	case cradle.ReleaseSWUpdate:
		var img *swu.Image
		if img, err = CheckSWUpdateImage(r, u.HardwareRevisions); err == nil {
			name = SWUpdateArtifactName(img)
		}
	}
	var ce *cradle.Error
	if err != nil && !errors.As(err, &ce) {
		return "", fmt.Errorf("ota: read the uploaded artifact: %w", err)
	}
	return name, err
}

// SWUpdateArtifactName is the name a .swu gives itself: sw-description's
// software name and version, "name version", or the version alone when
// it has no name.
func SWUpdateArtifactName(img *swu.Image) string {
	sw := img.Description.Root.Get("software")
	if n := sw.Get("name"); n != nil && n.Kind == swu.KindString && strings.TrimSpace(n.Str) != "" {
		return strings.TrimSpace(n.Str) + " " + img.Description.Version
	}
	return img.Description.Version
}

// verifyImage checks an MCUboot image against the image keys of model.
// An image signed by a key trusted for another model, or by a key not
// trusted at all, is EINVALID naming the key.
func (p *Publisher) verifyImage(ctx context.Context, model string, image []byte) (*mcuboot.Image, error) {
	keys, err := p.Releases.FindImageKeys(ctx, model)
	if err != nil {
		return nil, err
	}
	trusted := make([]crypto.PublicKey, 0, len(keys))
	for _, k := range keys {
		pub, err := parsePublicKey(k.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("ota: image key %s of model %s: %w", k.Fingerprint, model, err)
		}
		trusted = append(trusted, pub)
	}
	img, err := mcuboot.Verify(image, trusted)
	if err == nil {
		return img, nil
	}
	if !errors.Is(err, mcuboot.ErrUnknownKey) {
		return nil, cradle.Errorf(cradle.EINVALID, "not a valid signed MCUboot image: %v", err)
	}
	parsed, perr := mcuboot.Parse(image)
	if perr != nil || parsed.KeyHash == nil {
		return nil, cradle.Errorf(cradle.EINVALID, "the MCUboot image names no signing key (no KEYHASH or PUBKEY TLV)")
	}
	hash := hex.EncodeToString(parsed.KeyHash)
	all, err := p.Releases.FindImageKeys(ctx, "")
	if err != nil {
		return nil, err
	}
	for _, k := range all {
		if k.Fingerprint == hash && k.Model != model {
			return nil, cradle.Errorf(cradle.EINVALID, "image signed by the key of model %s, not %s (key %s)", k.Model, model, hash)
		}
	}
	if len(keys) == 0 {
		return nil, cradle.Errorf(cradle.EINVALID, "image signed by an unknown key (KEYHASH %s): model %s has no image keys; trust the key with cradle release key add", hash, model)
	}
	return nil, cradle.Errorf(cradle.EINVALID, "image signed by an unknown key (KEYHASH %s), not by one of the %d image keys of model %s", hash, len(keys), model)
}

func parsePublicKey(pemText string) (crypto.PublicKey, error) {
	b, _ := pem.Decode([]byte(pemText))
	if b == nil || b.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM \"PUBLIC KEY\"")
	}
	return x509.ParsePKIXPublicKey(b.Bytes)
}

// tenant returns the name of the actor's tenant.
func (p *Publisher) tenant(ctx context.Context, a cradle.Actor) (string, error) {
	name, err := p.TenantName(ctx, a.TenantID)
	if err != nil {
		return "", fmt.Errorf("ota: name of tenant %d: %w", a.TenantID, err)
	}
	return name, nil
}

// predecessor returns the signed or deprecated release of r's model and
// kind with the highest security counter (ties: the newest) other than r,
// or nil. It looks at the newest cradle.MaxPageSize releases of each of
// the two states.
func (p *Publisher) predecessor(ctx context.Context, r *cradle.Release) (*cradle.Release, error) {
	var best *cradle.Release
	for _, st := range []cradle.ReleaseState{cradle.ReleaseSigned, cradle.ReleaseDeprecated} {
		list, err := p.Releases.FindReleases(ctx, cradle.ReleaseFilter{Model: r.Model, State: &st, Limit: cradle.MaxPageSize})
		if err != nil {
			return nil, err
		}
		for _, c := range list {
			if c.ID == r.ID || c.Kind != r.Kind || c.Model != r.Model {
				continue
			}
			if best == nil || c.SecurityCounter > best.SecurityCounter ||
				(c.SecurityCounter == best.SecurityCounter && c.CreatedAt.After(best.CreatedAt)) {
				best = c
			}
		}
	}
	return best, nil
}

// readBlob reads a whole blob of the artifact store.
func (p *Publisher) readBlob(ctx context.Context, hexDigest string, size int64) ([]byte, error) {
	d, err := artifact.ParseDigest(hexDigest)
	if err != nil {
		return nil, err
	}
	rd, _, err := p.Artifacts.Open(ctx, d)
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	return readAllLimit(rd, size)
}

// makeDelta makes and stores the patch from pred to r when both are small
// enough and it pays off (delta.Decide); nil otherwise.
func (p *Publisher) makeDelta(ctx context.Context, r, pred *cradle.Release) (*cradle.ReleaseDelta, error) {
	if pred == nil || pred.SHA256 == r.SHA256 || r.Size > MaxDeltaImageSize || pred.Size > MaxDeltaImageSize {
		return nil, nil
	}
	base, err := p.readBlob(ctx, pred.SHA256, pred.Size)
	if err != nil {
		return nil, fmt.Errorf("ota: read release %s: %w", pred.ID, err)
	}
	target, err := p.readBlob(ctx, r.SHA256, r.Size)
	if err != nil {
		return nil, fmt.Errorf("ota: read release %s: %w", r.ID, err)
	}
	patch, dec, err := delta.Make(base, target)
	if err != nil {
		return nil, fmt.Errorf("ota: delta from %s to %s: %w", pred.Version, r.Version, err)
	}
	if patch == nil {
		p.logger().Info("ota: no delta", "release", r.ID, "from", pred.ID, "decision", dec.String())
		return nil, nil
	}
	info, err := p.Artifacts.Put(ctx, bytes.NewReader(patch.Data), artifact.Expect{Digest: artifact.Digest(patch.PatchSHA256), Size: patch.PatchSize})
	if err != nil {
		return nil, fmt.Errorf("ota: store the delta patch: %w", err)
	}
	return &cradle.ReleaseDelta{
		FromRelease: pred.ID, FromSHA256: pred.SHA256, FromSize: pred.Size,
		SHA256: info.Digest.String(), Size: info.Size,
		TargetPath: patchPath(r.Model, r.Version, r.FileName, pred.Version),
	}, nil
}

// custom is the TUF custom metadata of r's target.
func custom(r *cradle.Release, deltas []cradle.ReleaseDelta) tuf.Custom {
	revs := r.HardwareRevisions
	if len(revs) == 0 {
		revs = []string{AllHardwareRevisions}
	}
	c := tuf.Custom{Model: r.Model, HardwareRevisions: revs, Version: r.Version, SecurityCounter: r.SecurityCounter}
	for _, d := range deltas {
		c.DeltaBases = append(c.DeltaBases, tuf.DeltaBase{From: d.FromSHA256, Patch: d.TargetPath, Length: d.Size, Hashes: map[string]string{"sha256": d.SHA256}})
	}
	return c
}

// SignRelease implements cradle.ReleasePublisher. The patch (if any) is
// made and stored before the repository is locked; then the patch and the
// release are added as targets and published in one operation. A failure
// before Publish publishes nothing (the repository is re-opened by the
// next operation, discarding what was staged) and leaves at most an
// unreferenced patch blob for garbage collection. A failure of the record
// after Publish leaves the target published and the release uploaded:
// signing it again re-adds the same targets and records them.
func (p *Publisher) SignRelease(ctx context.Context, id string) (*cradle.Release, error) {
	a, err := p.Releases.AuthorizeRelease(ctx, cradle.PermReleaseWrite, "release.sign", "release:"+id)
	if err != nil {
		return nil, err
	}
	r, err := p.Releases.FindRelease(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State != cradle.ReleaseUploaded && r.State != cradle.ReleaseSigned {
		return nil, cradle.Errorf(cradle.ECONFLICT, "release %s is %s; only an uploaded (or signed) release can be signed", r.ID, r.State)
	}
	tenant, err := p.tenant(ctx, a)
	if err != nil {
		return nil, err
	}
	if err := p.checkRepository(ctx, tenant); err != nil {
		return nil, err
	}
	pred, err := p.predecessor(ctx, r)
	if err != nil {
		return nil, err
	}
	var deltas []cradle.ReleaseDelta
	d, err := p.makeDelta(ctx, r, pred)
	if err != nil {
		return nil, err
	}
	if d != nil {
		deltas = append(deltas, *d)
	}
	path := targetPath(r.Model, r.Version, r.FileName)
	var out *cradle.Release
	err = p.Repos.Do(ctx, tenant, func(repo *tuf.Repository, s tuf.Signers) error {
		if err := p.rootValid(repo, tenant); err != nil {
			return err
		}
		// A yank (which records under this lock) may have come since the
		// release was read: never publish a yanked release's targets.
		cur, err := p.Releases.FindRelease(ctx, id)
		if err != nil {
			return err
		}
		if cur.State != cradle.ReleaseUploaded && cur.State != cradle.ReleaseSigned {
			return cradle.Errorf(cradle.ECONFLICT, "release %s is %s; only an uploaded (or signed) release can be signed", r.ID, cur.State)
		}
		for _, d := range deltas {
			sum, _ := hex.DecodeString(d.SHA256)
			if err := repo.AddTarget(d.TargetPath, tuf.Target{Length: d.Size, SHA256: sum, Custom: custom(r, nil)}); err != nil {
				return err
			}
		}
		sum, _ := hex.DecodeString(r.SHA256)
		if err := repo.AddTarget(path, tuf.Target{Length: r.Size, SHA256: sum, Custom: custom(r, deltas)}); err != nil {
			return err
		}
		if err := repo.Publish(ctx, s); err != nil {
			return err
		}
		out, err = p.Releases.MarkReleaseSigned(ctx, r.ID, path, deltas)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// checkRepository fails early, before a delta is made, when the tenant
// has no repository or its root has expired.
func (p *Publisher) checkRepository(ctx context.Context, tenant string) error {
	err := p.Repos.Do(ctx, tenant, func(repo *tuf.Repository, _ tuf.Signers) error { return p.rootValid(repo, tenant) })
	if cradle.ErrorCode(err) == cradle.ENOTFOUND {
		return cradle.Errorf(cradle.EUNAVAILABLE, "%s", cradle.ErrorMessage(err))
	}
	return err
}

// rootValid refuses a repository whose root metadata has expired.
func (p *Publisher) rootValid(repo *tuf.Repository, tenant string) error {
	exp := repo.Expires()[tuf.RoleRoot]
	if now := p.Repos.now(); !now.Before(exp) {
		return cradle.Errorf(cradle.EINVALID, "the root metadata of tenant %s's TUF repository expired at %s: devices would refuse anything signed now; renew it with cradle release repo rotate-root --tenant %s (the same root keys renew it)",
			tenant, exp.UTC().Format("2006-01-02 15:04:05Z"), tenant)
	}
	return nil
}

// DeprecateRelease implements cradle.ReleasePublisher: the record only; the
// release stays a target.
func (p *Publisher) DeprecateRelease(ctx context.Context, id, reason string) (*cradle.Release, error) {
	if _, err := p.Releases.AuthorizeRelease(ctx, cradle.PermReleaseWrite, "release.deprecate", "release:"+id); err != nil {
		return nil, err
	}
	return p.Releases.SetReleaseState(ctx, id, cradle.ReleaseDeprecated, reason)
}

// YankRelease implements cradle.ReleasePublisher. Under the tenant's
// repository lock, the release's targets (every target under
// MODEL/VERSION/: the image and its patches, whatever the record says,
// since a signing may have published them before recording) are removed
// and the repository published, so that no device is offered it again,
// then the record is marked yanked; SignRelease checks the record under
// the same lock, so a yank and a signing of one release never leave a
// published target of a yanked record. Then its running and paused
// rollouts are aborted. When the record or an abort fails after Publish,
// yanking again finishes the job (the targets are already gone).
func (p *Publisher) YankRelease(ctx context.Context, id, reason string) (*cradle.Release, error) {
	a, err := p.Releases.AuthorizeRelease(ctx, cradle.PermReleaseWrite, "release.yank", "release:"+id)
	if err != nil {
		return nil, err
	}
	r, err := p.Releases.FindRelease(ctx, id)
	if err != nil {
		return nil, err
	}
	if r.State == cradle.ReleaseYanked {
		return nil, cradle.Errorf(cradle.ECONFLICT, "release %s is yanked already", r.ID)
	}
	if strings.TrimSpace(reason) == "" {
		return nil, cradle.Errorf(cradle.EINVALID, "give a reason for yanking release %s", r.ID)
	}
	tenant, err := p.tenant(ctx, a)
	if err != nil {
		return nil, err
	}
	var y *cradle.Release
	ran := false
	err = p.Repos.Do(ctx, tenant, func(repo *tuf.Repository, s tuf.Signers) error {
		ran = true
		current, err := repo.Targets()
		if err != nil {
			return err
		}
		prefix := r.Model + "/" + r.Version + "/"
		var paths []string
		for path := range current {
			if strings.HasPrefix(path, prefix) {
				paths = append(paths, path)
			}
		}
		if len(paths) > 0 {
			if err := p.rootValid(repo, tenant); err != nil {
				return err
			}
			for _, path := range paths {
				if err := repo.RemoveTarget(path); err != nil {
					return err
				}
			}
			if err := repo.Publish(ctx, s); err != nil {
				return err
			}
		}
		y, err = p.Releases.SetReleaseState(ctx, r.ID, cradle.ReleaseYanked, reason)
		return err
	})
	if !ran && cradle.ErrorCode(err) == cradle.ENOTFOUND && r.TargetPath == "" {
		// No TUF repository: nothing of the release was ever published.
		y, err = p.Releases.SetReleaseState(ctx, r.ID, cradle.ReleaseYanked, reason)
	}
	if err != nil {
		return nil, err
	}
	if err := p.abortRollouts(ctx, r.ID, reason); err != nil {
		return nil, err
	}
	return y, nil
}

// abortRollouts aborts the running and paused rollouts of a release.
func (p *Publisher) abortRollouts(ctx context.Context, releaseID, reason string) error {
	if p.Rollouts == nil {
		return nil
	}
	for _, st := range []cradle.RolloutState{cradle.RolloutRunning, cradle.RolloutPaused} {
		for {
			list, err := p.Rollouts.FindRollouts(ctx, cradle.RolloutFilter{State: &st, ReleaseID: releaseID, Limit: cradle.MaxPageSize})
			if err != nil {
				return err
			}
			aborted := 0
			for _, ro := range list {
				_, err := p.Rollouts.AbortRollout(ctx, ro.ID, "release "+releaseID+" yanked: "+reason)
				if err != nil && cradle.ErrorCode(err) != cradle.ECONFLICT {
					return err
				}
				if err == nil {
					aborted++
				}
			}
			if len(list) < cradle.MaxPageSize || aborted == 0 {
				break
			}
		}
	}
	return nil
}

// RepositoryStatus implements cradle.ReleasePublisher.
func (p *Publisher) RepositoryStatus(ctx context.Context) (*cradle.RepositoryStatus, error) {
	a, err := p.Releases.AuthorizeRelease(ctx, cradle.PermReleaseRead, "tuf.status", "tuf")
	if err != nil {
		return nil, err
	}
	tenant, err := p.tenant(ctx, a)
	if err != nil {
		return nil, err
	}
	return p.Repos.Status(ctx, tenant)
}
