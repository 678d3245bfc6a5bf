package hw

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// The range of persistent handles a TPMKeyStore puts keys at (within the
// owner's 0x81000000–0x817FFFFF). Handles already taken in the TPM, such
// as an endorsement key at 0x81010001, are skipped, never reused.
const (
	TPMHandleFirst = 0x81010000
	TPMHandleLast  = 0x810100FF
)

// TPMKeyStore is a KeyStore in a TPM 2.0: a discrete or firmware TPM
// through its resource manager (TPMDevice("/dev/tpmrm0")), or swtpm
// (TPMTCP). Keys are ECDSA signing keys on NIST P-256 or P-384, created
// inside the TPM as children of the standard ECC P-256 storage root key
// (the TCG template, re-created deterministically under the owner
// hierarchy when needed, never stored) and made persistent with
// TPM2_EvictControl at a free handle in TPMHandleFirst..TPMHandleLast.
// Ed25519 is refused with ErrInvalid: TPMs have no EdDSA.
//
// A key's name maps to its handle and TPM Name in an index file,
// tpm-keys.json in the state directory, rewritten atomically (temporary
// file, fsync, rename, fsync of the directory). Before using a handle the
// store reads the object's public area and checks its Name, so an index
// that outlived the TPM's contents (a TPM clear) gives ErrNotFound, never
// a signature by another key.
//
// Every operation, each Sign included, opens its own connection to the
// TPM and closes it before returning, so other clients (tpm2-tools, or
// the next operation on swtpm, which serves one connection at a time) can
// use the TPM in between. The owner hierarchy and the keys use empty
// authorization values.
//
// If the process dies between making a key persistent and writing the
// index, the persistent object stays in the TPM without a name; it is
// never reused (its handle is taken), ListOrphans lists it and
// DestroyOrphan (a wipe) evicts it (tpm_orphans.go). A TPMKeyStore is safe for concurrent use, and
// processes sharing a state directory are serialized on a lock file
// there for CreateKey and DestroyKey.
type TPMKeyStore struct {
	open     func() (io.ReadWriteCloser, error)
	stateDir string

	mu    sync.Mutex // serializes index changes in this process
	tpmMu sync.Mutex // one connection at a time
}

var _ KeyStore = (*TPMKeyStore)(nil)

// NewTPMKeyStore returns the key store of the TPM that open connects to,
// keeping its index in stateDir (created when the first key is).
func NewTPMKeyStore(open func() (io.ReadWriteCloser, error), stateDir string) *TPMKeyStore {
	return &TPMKeyStore{open: open, stateDir: stateDir}
}

// TPMDevice returns an opener of the TPM character device at path, such
// as /dev/tpmrm0 (the kernel's resource manager: use it, not /dev/tpm0,
// unless nothing else talks to the TPM).
func TPMDevice(path string) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return nil, fmt.Errorf("hw: open TPM %s: %w (is the TPM enabled, and may this user open it? the tss group usually may)", path, err)
		}
		return f, nil
	}
}

// TPMTCP returns an opener of a TCP connection carrying raw TPM 2.0
// commands, as swtpm's --server port does (not the Microsoft simulator's
// framed protocol).
func TPMTCP(addr string) func() (io.ReadWriteCloser, error) {
	return func() (io.ReadWriteCloser, error) {
		c, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			return nil, fmt.Errorf("hw: connect to TPM at %s: %w (is swtpm running with --server type=tcp?)", addr, err)
		}
		return c, nil
	}
}

// maxTPMResponse bounds a TPM response (TPM2 responses fit in 4 KiB).
const maxTPMResponse = 4096

// tpmConn sends commands over a connection and reads whole responses,
// however the transport splits them.
type tpmConn struct{ rw io.ReadWriter }

func (c tpmConn) Send(cmd []byte) ([]byte, error) {
	if _, err := c.rw.Write(cmd); err != nil {
		return nil, fmt.Errorf("hw: send TPM command: %w", err)
	}
	buf := make([]byte, maxTPMResponse)
	n := 0
	for n < 10 { // tag, size, response code
		m, err := c.rw.Read(buf[n:])
		n += m
		if err != nil && n < 10 {
			return nil, fmt.Errorf("hw: read TPM response: %w", err)
		}
	}
	size := int(binary.BigEndian.Uint32(buf[2:6]))
	if size < 10 || size > maxTPMResponse {
		return nil, fmt.Errorf("hw: TPM response claims %d bytes: not a TPM 2.0 response", size)
	}
	if n < size {
		if _, err := io.ReadFull(c.rw, buf[n:size]); err != nil {
			return nil, fmt.Errorf("hw: read TPM response: %w", err)
		}
	} else if n > size {
		return nil, fmt.Errorf("hw: TPM sent %d bytes for a %d-byte response", n, size)
	}
	return buf[:size], nil
}

// withTPM opens a connection, runs f on it and closes it. Cancelling ctx
// closes the connection, which aborts f.
func (s *TPMKeyStore) withTPM(ctx context.Context, f func(transport.TPM) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.tpmMu.Lock()
	defer s.tpmMu.Unlock()
	rwc, err := s.open()
	if err != nil {
		return err
	}
	var once sync.Once
	closeConn := func() { once.Do(func() { rwc.Close() }) }
	stop := context.AfterFunc(ctx, closeConn)
	defer func() { stop(); closeConn() }()
	if d, ok := rwc.(interface{ SetDeadline(time.Time) error }); ok {
		if _, isFile := rwc.(*os.File); !isFile {
			d.SetDeadline(time.Now().Add(2 * time.Minute))
		}
	}
	err = f(tpmConn{rwc})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

func tpmCurve(alg Algorithm) (tpm2.TPMECCCurve, error) {
	switch alg {
	case ECDSAP256, "":
		return tpm2.TPMECCNistP256, nil
	case ECDSAP384:
		return tpm2.TPMECCNistP384, nil
	case Ed25519:
		return 0, fmt.Errorf("hw: ed25519 keys are not supported by a TPM (TPM 2.0 has no EdDSA): use %s or %s: %w", ECDSAP256, ECDSAP384, ErrInvalid)
	}
	return 0, fmt.Errorf("hw: unknown key algorithm %q: %w", alg, ErrInvalid)
}

// signingTemplate is an unrestricted ECDSA signing key on curve whose
// scheme is chosen at each TPM2_Sign.
func signingTemplate(curve tpm2.TPMECCCurve) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   curve,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// CreateKey creates the key under the SRK, makes it persistent at a free
// handle and records it in the index.
func (s *TPMKeyStore) CreateKey(ctx context.Context, name string, alg Algorithm) (crypto.Signer, error) {
	if err := checkKeyName(name); err != nil {
		return nil, err
	}
	curve, err := tpmCurve(alg)
	if err != nil {
		return nil, err
	}
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	if _, ok := idx.Keys[name]; ok {
		return nil, fmt.Errorf("hw: create key %s: the TPM key store %s holds it already: %w", name, s.stateDir, ErrExists)
	}
	var sg *tpmSigner
	err = s.withTPM(ctx, func(t transport.TPM) error {
		handle, err := freeHandle(t, idx)
		if err != nil {
			return err
		}
		srk, err := tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHOwner,
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("create the storage root key under the owner hierarchy: %w", err)
		}
		defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(t)
		parent := tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}
		created, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(signingTemplate(curve))}.Execute(t)
		if err != nil {
			return fmt.Errorf("create the key: %w", err)
		}
		loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: created.OutPrivate, InPublic: created.OutPublic}.Execute(t)
		if err != nil {
			return fmt.Errorf("load the key: %w", err)
		}
		defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(t)
		_, err = tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name},
			PersistentHandle: handle,
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("make the key persistent at %#x: %w", uint32(handle), err)
		}
		pub, err := publicKey(created.OutPublic)
		if err != nil {
			evict(t, handle, loaded.Name)
			return err
		}
		idx.Keys[name] = tpmIndexEntry{Handle: uint32(handle), Name: hex.EncodeToString(loaded.Name.Buffer)}
		if err := s.writeIndex(idx); err != nil {
			evict(t, handle, loaded.Name)
			return err
		}
		sg = &tpmSigner{ks: s, key: name, handle: handle, name: loaded.Name, pub: pub}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hw: create key %s in the TPM: %w", name, err)
	}
	return sg, nil
}

// evict removes the persistent object at handle, best effort (undoing a
// half-made key).
func evict(t transport.TPM, handle tpm2.TPMHandle, name tpm2.TPM2BName) {
	tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: handle, Name: name},
		PersistentHandle: handle,
	}.Execute(t)
}

// freeHandle returns the lowest handle of the store's range that neither
// the TPM nor the index uses.
func freeHandle(t transport.TPM, idx *tpmIndex) (tpm2.TPMHandle, error) {
	used := map[uint32]bool{}
	for _, e := range idx.Keys {
		used[e.Handle] = true
	}
	next := uint32(TPMHandleFirst)
	for {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: next, PropertyCount: TPMHandleLast - TPMHandleFirst + 1}.Execute(t)
		if err != nil {
			return 0, fmt.Errorf("list the persistent handles: %w", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return 0, fmt.Errorf("list the persistent handles: %w", err)
		}
		for _, h := range hs.Handle {
			used[uint32(h)] = true
			next = max(next, uint32(h)+1)
		}
		if !bool(rsp.MoreData) || len(hs.Handle) == 0 || next > TPMHandleLast {
			break
		}
	}
	for h := uint32(TPMHandleFirst); h <= TPMHandleLast; h++ {
		if !used[h] {
			return tpm2.TPMHandle(h), nil
		}
	}
	return 0, fmt.Errorf("all persistent handles %#x to %#x are taken: destroy a key, or evict objects with tpm2_evictcontrol", TPMHandleFirst, TPMHandleLast)
}

func publicKey(b tpm2.TPM2BPublic) (*ecdsa.PublicKey, error) {
	pub, err := b.Contents()
	if err != nil {
		return nil, fmt.Errorf("read the public key: %w", err)
	}
	k, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("read the public key: %w", err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("the object is a %T key, not ECDSA", k)
	}
	return ek, nil
}

// entry looks name up in the index; op names the operation in the error
// that wraps ErrNotFound when the store has no such key.
func (s *TPMKeyStore) entry(op, name string) (tpmIndexEntry, error) {
	if err := checkKeyName(name); err != nil {
		return tpmIndexEntry{}, err
	}
	s.mu.Lock()
	idx, err := s.readIndex()
	s.mu.Unlock()
	if err != nil {
		return tpmIndexEntry{}, err
	}
	e, ok := idx.Keys[name]
	if !ok {
		return e, fmt.Errorf("hw: %s %s: not in the TPM key store %s: %w", op, name, s.stateDir, ErrNotFound)
	}
	return e, nil
}

// Key looks name up in the index and checks the TPM still holds it.
func (s *TPMKeyStore) Key(ctx context.Context, name string) (crypto.Signer, error) {
	e, err := s.entry("key", name)
	if err != nil {
		return nil, err
	}
	var sg *tpmSigner
	err = s.withTPM(ctx, func(t transport.TPM) error {
		pub, tname, err := readKey(t, name, e)
		if err != nil {
			return err
		}
		sg = &tpmSigner{ks: s, key: name, handle: tpm2.TPMHandle(e.Handle), name: tname, pub: pub}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hw: key %s: %w", name, err)
	}
	return sg, nil
}

// readKey reads the public area at e's handle and checks that its Name is
// the one recorded. A missing or different object wraps ErrNotFound.
func readKey(t transport.TPM, name string, e tpmIndexEntry) (*ecdsa.PublicKey, tpm2.TPM2BName, error) {
	rsp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(e.Handle)}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("the TPM holds no object at its handle %#x (was the TPM cleared, or the key evicted with tpm2_evictcontrol?): %w", e.Handle, ErrNotFound)
	}
	if err != nil {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("read the public area at %#x: %w", e.Handle, err)
	}
	if hex.EncodeToString(rsp.Name.Buffer) != e.Name {
		return nil, tpm2.TPM2BName{}, fmt.Errorf("the object at its handle %#x is another key than the one created as %s (the key was replaced outside this store): %w", e.Handle, name, ErrNotFound)
	}
	pub, err := publicKey(rsp.OutPublic)
	if err != nil {
		return nil, tpm2.TPM2BName{}, err
	}
	return pub, rsp.Name, nil
}

// DestroyKey evicts the persistent object and removes the index entry. An
// index entry whose object is gone from the TPM is removed too.
func (s *TPMKeyStore) DestroyKey(ctx context.Context, name string) error {
	if err := checkKeyName(name); err != nil {
		return err
	}
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	e, ok := idx.Keys[name]
	if !ok {
		return fmt.Errorf("hw: destroy key %s: not in the TPM key store %s: %w", name, s.stateDir, ErrNotFound)
	}
	err = s.withTPM(ctx, func(t transport.TPM) error {
		_, tname, err := readKey(t, name, e)
		if errors.Is(err, ErrNotFound) {
			return nil // nothing of ours left in the TPM
		}
		if err != nil {
			return err
		}
		_, err = tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     tpm2.NamedHandle{Handle: tpm2.TPMHandle(e.Handle), Name: tname},
			PersistentHandle: tpm2.TPMHandle(e.Handle),
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("evict the key at %#x: %w", e.Handle, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hw: destroy key %s in the TPM: %w", name, err)
	}
	delete(idx.Keys, name)
	if err := s.writeIndex(idx); err != nil {
		return fmt.Errorf("hw: destroy key %s: the TPM object is evicted, but: %w", name, err)
	}
	return nil
}

// lock takes the in-process mutex and the state directory's lock file.
func (s *TPMKeyStore) lock() (func(), error) {
	if err := os.MkdirAll(s.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("hw: TPM key store: %w", err)
	}
	s.mu.Lock()
	u, err := lockFile(filepath.Join(s.stateDir, "tpm-keys.lock"))
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	return func() { u(); s.mu.Unlock() }, nil
}

// tpmSigner signs with a persistent key inside the TPM.
type tpmSigner struct {
	ks     *TPMKeyStore
	key    string
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    *ecdsa.PublicKey
}

// Public returns the key's public half.
func (g *tpmSigner) Public() crypto.PublicKey { return g.pub }

// Sign signs digest (SHA-256, SHA-384 or SHA-512, as opts says) with
// TPM2_Sign and ECDSA, over a fresh connection, and returns the ASN.1 DER
// signature crypto/x509 and ecdsa.VerifyASN1 expect. It fails once the
// key was destroyed. rand is unused: the TPM draws the nonce.
func (g *tpmSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	h := crypto.SHA256
	if opts != nil {
		h = opts.HashFunc()
	}
	var alg tpm2.TPMIAlgHash
	switch h {
	case crypto.SHA256:
		alg = tpm2.TPMAlgSHA256
	case crypto.SHA384:
		alg = tpm2.TPMAlgSHA384
	case crypto.SHA512:
		alg = tpm2.TPMAlgSHA512
	default:
		return nil, fmt.Errorf("hw: TPM key %s: cannot sign a %v digest: use SHA-256, SHA-384 or SHA-512", g.key, h)
	}
	if len(digest) != h.Size() {
		return nil, fmt.Errorf("hw: TPM key %s: digest is %d bytes, a %v digest is %d", g.key, len(digest), h, h.Size())
	}
	var sig []byte
	err := g.ks.withTPM(context.Background(), func(t transport.TPM) error {
		// The handle may have been evicted, and even reused, since.
		rsp, err := tpm2.ReadPublic{ObjectHandle: g.handle}.Execute(t)
		if err != nil || string(rsp.Name.Buffer) != string(g.name.Buffer) {
			return fmt.Errorf("the key is no longer at %#x (destroyed?): %w", uint32(g.handle), ErrNotFound)
		}
		srsp, err := tpm2.Sign{
			KeyHandle: tpm2.NamedHandle{Handle: g.handle, Name: g.name},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: alg}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(t)
		if err != nil {
			return err
		}
		e, err := srsp.Signature.Signature.ECDSA()
		if err != nil {
			return err
		}
		sig, err = asn1.Marshal(struct{ R, S *big.Int }{
			new(big.Int).SetBytes(e.SignatureR.Buffer),
			new(big.Int).SetBytes(e.SignatureS.Buffer),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("hw: TPM key %s: sign: %w", g.key, err)
	}
	return sig, nil
}
