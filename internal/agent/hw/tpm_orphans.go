package hw

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// Orphaned TPM keys. A process that dies between TPM2_EvictControl and
// the index write (CreateKey) leaves a persistent key in the store's
// handle range that no name leads to. A wipe must not leave it: the
// store lists such keys (ListOrphans) and evicts them (DestroyOrphan).
// An orphan is a persistent object in TPMHandleFirst..TPMHandleLast that
// the index does not name and whose public area is one CreateKey makes
// (signingTemplate, P-256 or P-384): another object there, such as an
// endorsement key (a restricted decryption key) a provisioning tool put
// at 0x81010001, is not the store's and is left alone.

var _ OrphanKeys = (*TPMKeyStore)(nil)

// OrphanKeyPrefix starts the names ListOrphans gives, "handle:0x81010003":
// a colon is in no key name, so they cannot be taken for one.
const OrphanKeyPrefix = "handle:"

// persistentHandles lists the TPM's persistent handles in the store's
// range.
func persistentHandles(t transport.TPM) ([]uint32, error) {
	var out []uint32
	next := uint32(TPMHandleFirst)
	for next <= TPMHandleLast {
		rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: next, PropertyCount: TPMHandleLast - TPMHandleFirst + 1}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("list the persistent handles: %w", err)
		}
		hs, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			return nil, fmt.Errorf("list the persistent handles: %w", err)
		}
		for _, h := range hs.Handle {
			if uint32(h) >= TPMHandleFirst && uint32(h) <= TPMHandleLast {
				out = append(out, uint32(h))
			}
			next = max(next, uint32(h)+1)
		}
		if !bool(rsp.MoreData) || len(hs.Handle) == 0 {
			break
		}
	}
	return out, nil
}

// storeMade reports whether the object at handle has a public area
// CreateKey makes, and returns its Name. ErrNotFound: no object there.
func storeMade(t transport.TPM, handle uint32) (bool, tpm2.TPM2BName, error) {
	rsp, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(handle)}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return false, tpm2.TPM2BName{}, fmt.Errorf("no object at %#x: %w", handle, ErrNotFound)
	}
	if err != nil {
		return false, tpm2.TPM2BName{}, fmt.Errorf("read the public area at %#x: %w", handle, err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return false, tpm2.TPM2BName{}, fmt.Errorf("read the public area at %#x: %w", handle, err)
	}
	a := pub.ObjectAttributes
	if pub.Type != tpm2.TPMAlgECC || pub.NameAlg != tpm2.TPMAlgSHA256 ||
		!(a.FixedTPM && a.FixedParent && a.SensitiveDataOrigin && a.UserWithAuth && a.NoDA && a.SignEncrypt) ||
		a.Restricted || a.Decrypt || a.AdminWithPolicy || a.STClear || a.EncryptedDuplication {
		return false, rsp.Name, nil
	}
	ecc, err := pub.Parameters.ECCDetail()
	if err != nil || (ecc.CurveID != tpm2.TPMECCNistP256 && ecc.CurveID != tpm2.TPMECCNistP384) || ecc.Scheme.Scheme != tpm2.TPMAlgNull {
		return false, rsp.Name, nil
	}
	return true, rsp.Name, nil
}

// ListOrphans returns the store's orphaned keys (see above), each as
// OrphanKeyPrefix and its handle in hex, in handle order.
func (s *TPMKeyStore) ListOrphans(ctx context.Context) ([]string, error) {
	unlock, err := s.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return nil, err
	}
	named := map[uint32]bool{}
	for _, e := range idx.Keys {
		named[e.Handle] = true
	}
	var out []string
	err = s.withTPM(ctx, func(t transport.TPM) error {
		hs, err := persistentHandles(t)
		if err != nil {
			return err
		}
		for _, h := range hs {
			if named[h] {
				continue
			}
			ours, _, err := storeMade(t, h)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if ours {
				out = append(out, fmt.Sprintf("%s%#x", OrphanKeyPrefix, h))
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("hw: list the orphaned keys in the TPM: %w", err)
	}
	return out, nil
}

// DestroyOrphan evicts the orphaned key ListOrphans named orphan. It
// wraps ErrNotFound when no object is at its handle any more, and
// refuses (ErrInvalid) a handle outside the store's range, one the index
// names, and an object CreateKey does not make.
func (s *TPMKeyStore) DestroyOrphan(ctx context.Context, orphan string) error {
	hex, ok := strings.CutPrefix(orphan, OrphanKeyPrefix)
	h, err := strconv.ParseUint(hex, 0, 32)
	if !ok || err != nil || h < TPMHandleFirst || h > TPMHandleLast {
		return fmt.Errorf("hw: destroy orphaned key %q: not %s and a handle in %#x..%#x: %w", orphan, OrphanKeyPrefix, TPMHandleFirst, TPMHandleLast, ErrInvalid)
	}
	handle := uint32(h)
	unlock, err := s.lock()
	if err != nil {
		return err
	}
	defer unlock()
	idx, err := s.readIndex()
	if err != nil {
		return err
	}
	for name, e := range idx.Keys {
		if e.Handle == handle {
			return fmt.Errorf("hw: destroy orphaned key %q: the index names it %s: %w", orphan, name, ErrInvalid)
		}
	}
	err = s.withTPM(ctx, func(t transport.TPM) error {
		ours, name, err := storeMade(t, handle)
		if err != nil {
			return err
		}
		if !ours {
			return fmt.Errorf("the object at %#x is no key this store makes: %w", handle, ErrInvalid)
		}
		_, err = tpm2.EvictControl{
			Auth:             tpm2.TPMRHOwner,
			ObjectHandle:     tpm2.NamedHandle{Handle: tpm2.TPMHandle(handle), Name: name},
			PersistentHandle: tpm2.TPMHandle(handle),
		}.Execute(t)
		if err != nil {
			return fmt.Errorf("evict the key at %#x: %w", handle, err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("hw: destroy orphaned key %s in the TPM: %w", orphan, err)
	}
	return nil
}
