package hw

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
)

// Op names a simulated operation that FailNext can make fail.
type Op string

// The operations fault injection can hit.
const (
	OpProgram    Op = "program"     // Fuses.Program
	OpSlotWrite  Op = "slot-write"  // Slots.Write
	OpBootEnvSet Op = "bootenv-set" // BootEnv.Set
	OpCreateKey  Op = "create-key"  // KeyStore.CreateKey
	OpFactory    Op = "factory"     // FactoryData.Write and Lock
)

// SimDevice is a simulated unit in a device directory:
//
//	uid            the hardware UID, one line of text
//	otp            the OTP image (OTPImageSize bytes, see ParseOTP); bits are only ever OR-ed in
//	slot-a slot-b  the firmware images (absent until first written)
//	slot-boot      the bootloader image (absent until first written)
//	factory        the factory data partition (see FactoryData), JSON
//	bootenv        the boot environment (see ParseBootEnv)
//	keys/<name>.key  private keys, PKCS#8 PEM, mode 0600
//	lock           the lock file serializing writers across processes
//
// The keys directory simulates a secure element: the keys are plain files
// anyone with access to the directory can read. It is for tests, the
// simulator and demos, never a real unit.
//
// Every file is replaced atomically (temporary file, fsync, rename, fsync
// of the directory), except a slot written as flash (SlotWriter: Erase
// truncates it, WriteAt appends and syncs), which a power cut leaves partly
// written. CutAfter cuts the power for fault injection. A SimDevice is safe for concurrent use; processes
// sharing a directory are serialized on the lock file (flock) for Program
// and BootEnv.Set, so no fuse bit and no boot variable is lost between
// them. On systems without flock only the in-process mutex serializes.
type SimDevice struct {
	dir string

	mu     sync.Mutex
	slotMu sync.Mutex // serializes Erase and WriteAt
	fail   map[Op]error
	ops    int  // mutating operations started (Ops)
	cutAt  int  // the value of ops at which the power is cut; 0: none armed
	cut    bool // the power was cut: every mutating operation fails
}

var (
	_ KeyStore   = (*SimDevice)(nil)
	_ Fuses      = (*SimDevice)(nil)
	_ Slots      = (*SimDevice)(nil)
	_ BootEnv    = (*SimDevice)(nil)
	_ Identity   = (*SimDevice)(nil)
	_ SlotWriter = (*SimDevice)(nil)
)

// simFactory is the FactoryData part of a SimDevice (its methods would
// clash with Slots' Write and Open on SimDevice itself).
type simFactory struct{ s *SimDevice }

var _ FactoryData = simFactory{}

// CreateSimDevice creates a simulated unit with the given hardware UID in
// dir (created if missing): blank fuses, an empty boot environment, no
// key and no slot image. It refuses a directory that already holds a
// device (its uid file exists) with an error wrapping ErrExists, and a UID
// that is empty, longer than 128 bytes or holds anything but printable
// non-space ASCII with ErrInvalid.
func CreateSimDevice(dir, uid string) (*Device, error) {
	if err := checkUID(uid); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		return nil, fmt.Errorf("hw: create device: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "uid")); err == nil {
		return nil, fmt.Errorf("hw: create device: %s already holds a device: %w", dir, ErrExists)
	}
	s := &SimDevice{dir: dir}
	if err := s.writeFile("otp", make([]byte, OTPImageSize), nil); err != nil {
		return nil, err
	}
	if err := s.writeFile("bootenv", nil, nil); err != nil {
		return nil, err
	}
	// The uid last: a directory with a uid is a whole device.
	if err := s.writeFile("uid", []byte(uid+"\n"), nil); err != nil {
		return nil, err
	}
	return s.device(), nil
}

// OpenSimDevice opens the simulated unit in dir, checking that its uid,
// OTP image and boot environment can be read.
func OpenSimDevice(dir string) (*Device, error) {
	s := &SimDevice{dir: dir}
	ctx := context.Background()
	if _, err := s.HardwareUID(ctx); err != nil {
		return nil, err
	}
	if _, err := s.Read(ctx); err != nil {
		return nil, err
	}
	if _, err := s.Get(ctx); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o700); err != nil {
		return nil, fmt.Errorf("hw: open device: %w", err)
	}
	return s.device(), nil
}

func (s *SimDevice) device() *Device {
	return &Device{Keys: s, Fuses: s, Slots: s, BootEnv: s, Identity: s, FactoryData: simFactory{s}, Sim: s}
}

// Dir returns the device directory.
func (s *SimDevice) Dir() string { return s.dir }

// FailNext makes the next op on this SimDevice fail midway with an error
// wrapping err, after part of the new data was written to the temporary
// file, as a write error or power loss would. Nothing of the operation
// takes effect. A nil err cancels a pending failure.
func (s *SimDevice) FailNext(op Op, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail == nil {
		s.fail = map[Op]error{}
	}
	if err == nil {
		delete(s.fail, op)
		return
	}
	s.fail[op] = err
}

// takeFail returns and clears the pending failure of op; s.mu is held.
func (s *SimDevice) takeFail(op Op) error {
	err := s.fail[op]
	delete(s.fail, op)
	return err
}

func checkUID(uid string) error {
	if uid == "" || len(uid) > 128 {
		return fmt.Errorf("hw: uid must be 1 to 128 bytes: %w", ErrInvalid)
	}
	for _, c := range []byte(uid) {
		if c <= ' ' || c > '~' {
			return fmt.Errorf("hw: uid %q: only printable ASCII without spaces: %w", uid, ErrInvalid)
		}
	}
	return nil
}

// HardwareUID returns the content of the uid file.
func (s *SimDevice) HardwareUID(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	b, err := os.ReadFile(filepath.Join(s.dir, "uid"))
	if err != nil {
		return "", fmt.Errorf("hw: read uid: %w", err)
	}
	uid := strings.TrimSuffix(string(b), "\n")
	if err := checkUID(uid); err != nil {
		return "", err
	}
	return uid, nil
}

// writeFile atomically replaces dir/name with data. With fail non-nil it
// writes half of data to the temporary file, then removes it and returns
// fail.
func (s *SimDevice) writeFile(name string, data []byte, fail error) error {
	_, err := s.writeFrom(context.Background(), name, bytes.NewReader(data), fail, 0o600)
	return err
}

// writeFrom atomically replaces dir/name with what r yields and returns
// its SHA-256. The temporary file is removed on any error.
func (s *SimDevice) writeFrom(ctx context.Context, name string, r io.Reader, fail error, mode os.FileMode) (sum [32]byte, err error) {
	tmp, err := os.CreateTemp(s.dir, "."+name+".tmp-*")
	if err != nil {
		return sum, fmt.Errorf("hw: write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	h := sha256.New()
	w := io.MultiWriter(tmp, h)
	buf := make([]byte, 64<<10)
	written := 0
	for {
		if err := ctx.Err(); err != nil {
			return sum, err
		}
		n, rerr := r.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if fail != nil {
				// Write part of the data, then fail as the hardware would.
				if _, err := w.Write(chunk[:(n+1)/2]); err != nil {
					return sum, fmt.Errorf("hw: write %s: %w", name, err)
				}
				return sum, fmt.Errorf("hw: write %s: failed after %d bytes (injected): %w", name, written+(n+1)/2, fail)
			}
			if _, err := w.Write(chunk); err != nil {
				return sum, fmt.Errorf("hw: write %s: %w", name, err)
			}
			written += n
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return sum, fmt.Errorf("hw: write %s: read: %w", name, rerr)
		}
	}
	if fail != nil { // nothing to write: fail before the rename
		return sum, fmt.Errorf("hw: write %s: failed (injected): %w", name, fail)
	}
	if err := tmp.Chmod(mode); err != nil {
		return sum, fmt.Errorf("hw: write %s: %w", name, err)
	}
	if err := tmp.Sync(); err != nil {
		return sum, fmt.Errorf("hw: write %s: sync: %w", name, err)
	}
	if err := tmp.Close(); err != nil {
		return sum, fmt.Errorf("hw: write %s: %w", name, err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(s.dir, name)); err != nil {
		return sum, fmt.Errorf("hw: write %s: %w", name, err)
	}
	if err := syncDir(s.dir); err != nil {
		return sum, fmt.Errorf("hw: write %s: %w", name, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// lock takes the in-process mutex and the cross-process lock file.
func (s *SimDevice) lock() (unlock func(), err error) {
	s.mu.Lock()
	u, err := lockFile(filepath.Join(s.dir, "lock"))
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	return func() { u(); s.mu.Unlock() }, nil
}

// Read returns the fuse values in the otp file.
func (s *SimDevice) Read(ctx context.Context) (FuseValues, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	img, err := os.ReadFile(filepath.Join(s.dir, "otp"))
	if err != nil {
		return nil, fmt.Errorf("hw: read otp: %w", err)
	}
	return ParseOTP(img)
}

// Program programs field as the Fuses interface says, rewriting the otp
// file atomically under the device lock.
func (s *SimDevice) Program(ctx context.Context, field string, value []byte) error {
	if err := CheckFuseValue(field, value); err != nil {
		return err
	}
	if err := s.tickLocked("program fuse " + field); err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	v, err := s.Read(ctx)
	if err != nil {
		return err
	}
	have := v[field]
	if err := checkProgram(field, have, value); err != nil {
		return err
	}
	if bytes.Equal(have, value) {
		return nil
	}
	v[field] = bytes.Clone(value)
	img, err := FormatOTP(v)
	if err != nil {
		return err
	}
	if err := s.writeFile("otp", img, s.takeFail(OpProgram)); err != nil {
		return fmt.Errorf("fuse %s: %w", field, err)
	}
	return nil
}

func slotFile(slot Slot) (string, error) {
	switch slot {
	case SlotA, SlotB, SlotBoot:
		return "slot-" + string(slot), nil
	}
	return "", fmt.Errorf("hw: unknown slot %q: %w", slot, ErrInvalid)
}

// Write replaces the slot file atomically.
func (s *SimDevice) Write(ctx context.Context, slot Slot, r io.Reader) ([32]byte, error) {
	name, err := slotFile(slot)
	if err != nil {
		return [32]byte{}, err
	}
	s.mu.Lock()
	fail := s.tick("write slot " + string(slot))
	if fail == nil {
		fail = s.takeFail(OpSlotWrite)
	}
	s.mu.Unlock()
	// Slot writes take no lock: the last rename wins, and each image is
	// whole.
	return s.writeFrom(ctx, name, r, fail, 0o600)
}

// Open opens the slot file.
func (s *SimDevice) Open(ctx context.Context, slot Slot) (io.ReadCloser, error) {
	name, err := slotFile(slot)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(s.dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hw: slot %s is empty: %w", slot, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("hw: open slot %s: %w", slot, err)
	}
	return f, nil
}

// Digest hashes the slot file.
func (s *SimDevice) Digest(ctx context.Context, slot Slot) ([32]byte, error) {
	var sum [32]byte
	rc, err := s.Open(ctx, slot)
	if err != nil {
		return sum, err
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		return sum, fmt.Errorf("hw: read slot %s: %w", slot, err)
	}
	copy(sum[:], h.Sum(nil))
	return sum, nil
}

// Get reads the bootenv file.
func (s *SimDevice) Get(ctx context.Context) (map[string]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(s.dir, "bootenv"))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("hw: read bootenv: %w", err)
	}
	return ParseBootEnv(b)
}

// Set rewrites the bootenv file atomically under the device lock.
func (s *SimDevice) Set(ctx context.Context, changes map[string]string) error {
	for k, v := range changes {
		if err := checkBootEnvKey(k); err != nil {
			return err
		}
		if err := checkBootEnvValue(k, v); err != nil {
			return err
		}
	}
	if err := s.tickLocked("set boot environment"); err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	env, err := s.Get(ctx)
	if err != nil {
		return err
	}
	for k, v := range changes {
		if v == "" {
			delete(env, k)
		} else {
			env[k] = v
		}
	}
	b, err := FormatBootEnv(env)
	if err != nil {
		return err
	}
	return s.writeFile("bootenv", b, s.takeFail(OpBootEnvSet))
}

func checkKeyName(name string) error {
	if name == "" || len(name) > 64 || name[0] == '.' {
		return fmt.Errorf("hw: key name %q must be 1 to 64 characters, not starting with a dot: %w", name, ErrInvalid)
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("hw: key name %q: only letters, digits and ._- are allowed: %w", name, ErrInvalid)
		}
	}
	return nil
}

func (s *SimDevice) keyPath(name string) string {
	return filepath.Join(s.dir, "keys", name+".key")
}

// signer exposes only Public and Sign, so callers cannot reach the private
// key through a type assertion.
type signer struct{ k crypto.Signer }

func (s signer) Public() crypto.PublicKey { return s.k.Public() }

func (s signer) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.k.Sign(r, digest, opts)
}

// CreateKey generates the key and stores it as keys/<name>.key; the file
// appears whole or not at all, and only if the name is free.
func (s *SimDevice) CreateKey(ctx context.Context, name string, alg Algorithm) (crypto.Signer, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var k crypto.Signer
	var err error
	switch alg {
	case ECDSAP256, "":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case Ed25519:
		_, k, err = ed25519.GenerateKey(rand.Reader)
	default:
		return nil, fmt.Errorf("hw: unknown key algorithm %q: %w", alg, ErrInvalid)
	}
	if err != nil {
		return nil, fmt.Errorf("hw: create key %s: %w", name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, fmt.Errorf("hw: create key %s: %w", name, err)
	}
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	keys := filepath.Join(s.dir, "keys")
	tmp, err := os.CreateTemp(keys, ".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("hw: create key %s: %w", name, err)
	}
	defer os.Remove(tmp.Name())
	s.mu.Lock()
	fail := s.takeFail(OpCreateKey)
	s.mu.Unlock()
	if fail != nil {
		tmp.Write(data[:len(data)/2])
		tmp.Close()
		return nil, fmt.Errorf("hw: create key %s: failed (injected): %w", name, fail)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("hw: create key %s: %w", name, err)
	}
	// A hard link fails if the name exists: no two creators both win.
	if err := os.Link(tmp.Name(), s.keyPath(name)); err != nil {
		if errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("hw: create key %s: %w", name, ErrExists)
		}
		return nil, fmt.Errorf("hw: create key %s: %w", name, err)
	}
	if err := syncDir(keys); err != nil {
		return nil, fmt.Errorf("hw: create key %s: %w", name, err)
	}
	return signer{k}, nil
}

// Key reads keys/<name>.key.
func (s *SimDevice) Key(ctx context.Context, name string) (crypto.Signer, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(s.keyPath(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("hw: key %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("hw: key %s: %w", name, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("hw: key %s: not a PKCS#8 PEM file", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("hw: key %s: %w", name, err)
	}
	sg, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("hw: key %s: %T cannot sign", name, k)
	}
	return signer{sg}, nil
}

// DestroyKey overwrites keys/<name>.key with zeros, syncs it and removes
// it. (On flash and copy-on-write file systems the overwrite may not reach
// the old blocks: a simulation, not a secure erase.)
func (s *SimDevice) DestroyKey(ctx context.Context, name string) error {
	if err := checkKeyName(name); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	p := s.keyPath(name)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("hw: destroy key %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("hw: destroy key %s: %w", name, err)
	}
	st, err := f.Stat()
	if err == nil {
		_, err = f.WriteAt(make([]byte, st.Size()), 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("hw: destroy key %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("hw: destroy key %s: %w", name, err)
	}
	return syncDir(filepath.Dir(p))
}
