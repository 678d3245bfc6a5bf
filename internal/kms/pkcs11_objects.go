//go:build cgo

package kms

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"
)

// Whole-token sweeps for a decommissioned device's wipe. crypto11, which
// the rest of this package uses, sees only key pairs whose two halves
// share a CKA_ID; a crash while a key was made, or another tool, can
// leave a private or public key alone, or two pairs under one label.
// These functions talk PKCS#11 directly and see every object.

// withPKCS11Session runs f in a read-write session of the token u names,
// logged in as the user. The module may be initialized already (crypto11
// contexts are open in this process): then it is shared, not finalized.
func withPKCS11Session(u *PKCS11URI, opts Options, f func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error) error {
	if u.Token == "" || u.ModulePath == "" {
		return fmt.Errorf("kms: give the token and its module-path")
	}
	if _, err := os.Stat(u.ModulePath); err != nil {
		return fmt.Errorf("kms: PKCS#11 module-path %s: %w (is the HSM's library installed?)", u.ModulePath, err)
	}
	pin, err := tokenPIN(u, opts)
	if err != nil {
		return err
	}
	p := pkcs11.New(u.ModulePath)
	if p == nil {
		return fmt.Errorf("kms: PKCS#11 module-path %s: cannot load the module", u.ModulePath)
	}
	defer p.Destroy()
	if err := p.Initialize(); err == nil {
		defer p.Finalize()
	} else if err != pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
		return fmt.Errorf("kms: PKCS#11 module %s: %w", u.ModulePath, err)
	}
	slots, err := p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("kms: PKCS#11 module %s: list the slots: %w", u.ModulePath, err)
	}
	slot, found := uint(0), false
	for _, sl := range slots {
		ti, err := p.GetTokenInfo(sl)
		if err == nil && strings.TrimRight(ti.Label, " \x00") == u.Token {
			slot, found = sl, true
			break
		}
	}
	if !found {
		return errorf(ErrKeyNotFound, "kms: no initialized PKCS#11 token labelled %q in module %s (list them with pkcs11-tool --module %s -L)", u.Token, u.ModulePath, u.ModulePath)
	}
	s, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("kms: PKCS#11 token %q: open a session: %w", u.Token, err)
	}
	// Closing the last session of the token logs it out; a login of
	// crypto11's (already logged in) stays.
	defer p.CloseSession(s)
	if err := p.Login(s, pkcs11.CKU_USER, pin); err != nil && err != pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN) {
		if err == pkcs11.Error(pkcs11.CKR_PIN_INCORRECT) || err == pkcs11.Error(pkcs11.CKR_PIN_INVALID) || err == pkcs11.Error(pkcs11.CKR_PIN_LEN_RANGE) {
			return errorf(ErrWrongPassphrase, "kms: wrong PIN for PKCS#11 token %q", u.Token)
		}
		return fmt.Errorf("kms: PKCS#11 token %q: log in: %w", u.Token, err)
	}
	return f(p, s)
}

// findObjects returns every object matching tmpl.
func findObjects(p *pkcs11.Ctx, s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := p.FindObjectsInit(s, tmpl); err != nil {
		return nil, err
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := p.FindObjects(s, 64)
		if err != nil {
			p.FindObjectsFinal(s)
			return nil, err
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	return all, p.FindObjectsFinal(s)
}

// attr reads one attribute of o; nil when the object has none (or hides
// it).
func attr(p *pkcs11.Ctx, s pkcs11.SessionHandle, o pkcs11.ObjectHandle, typ uint) []byte {
	a, err := p.GetAttributeValue(s, o, []*pkcs11.Attribute{pkcs11.NewAttribute(typ, nil)})
	if err != nil || len(a) == 0 {
		return nil
	}
	return a[0].Value
}

// ListPKCS11KeyLabels returns the labels of every private and public key
// object in the token u names (its object and id are ignored), sorted,
// without duplicates: key pairs, and halves left alone (which
// a listing of key pairs alone would miss). An object without a
// label is not listed.
func ListPKCS11KeyLabels(ctx context.Context, u PKCS11URI, opts Options) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var labels []string
	err := withPKCS11Session(&u, opts, func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error {
		for _, class := range []uint{pkcs11.CKO_PRIVATE_KEY, pkcs11.CKO_PUBLIC_KEY} {
			hs, err := findObjects(p, s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)})
			if err != nil {
				return err
			}
			for _, h := range hs {
				if l := attr(p, s, h, pkcs11.CKA_LABEL); len(l) > 0 {
					labels = append(labels, string(l))
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("kms: list the keys of token %q: %w", u.Token, err)
	}
	slices.Sort(labels)
	return slices.Compact(labels), nil
}

// DestroyPKCS11Objects destroys every object in the token of uri that
// carries uri's label (object=): every key pair under it however many
// there are, a private or public key alone, certificates, data objects;
// and then the certificates sharing the CKA_ID of a key it destroyed
// (as pkcs11-tool writes a key's certificate). Unlike Destroy it never
// refuses several matches: it is a decommissioned device's wipe, which
// must leave none of its keys. It returns how many objects it destroyed;
// none is no error.
func DestroyPKCS11Objects(ctx context.Context, uri string, opts Options) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	u, err := ParsePKCS11URI(uri)
	if err != nil {
		return 0, err
	}
	if u.Object == "" {
		return 0, fmt.Errorf("kms: destroy objects: %s names no label", u)
	}
	n := 0
	err = withPKCS11Session(u, opts, func(p *pkcs11.Ctx, s pkcs11.SessionHandle) error {
		hs, err := findObjects(p, s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, []byte(u.Object))})
		if err != nil {
			return fmt.Errorf("find the objects labelled %q: %w", u.Object, err)
		}
		var ids [][]byte
		for _, h := range hs {
			class := attr(p, s, h, pkcs11.CKA_CLASS)
			isKey := slices.Equal(class, classBytes(pkcs11.CKO_PRIVATE_KEY)) || slices.Equal(class, classBytes(pkcs11.CKO_PUBLIC_KEY))
			if id := attr(p, s, h, pkcs11.CKA_ID); isKey && len(id) > 0 && !slices.ContainsFunc(ids, func(b []byte) bool { return slices.Equal(b, id) }) {
				ids = append(ids, id)
			}
			if err := p.DestroyObject(s, h); err != nil {
				return fmt.Errorf("destroy an object labelled %q: %w", u.Object, err)
			}
			n++
		}
		for _, id := range ids {
			certs, err := findObjects(p, s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_CERTIFICATE), pkcs11.NewAttribute(pkcs11.CKA_ID, id)})
			if err != nil {
				return fmt.Errorf("find the certificates of a key labelled %q: %w", u.Object, err)
			}
			for _, h := range certs {
				if err := p.DestroyObject(s, h); err != nil {
					return fmt.Errorf("destroy a certificate of a key labelled %q: %w", u.Object, err)
				}
				n++
			}
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("kms: destroy the objects of %s: %w", u, err)
	}
	return n, nil
}

// classBytes is how a CKA_CLASS value reads back: a CK_ULONG in the
// platform's byte order, as pkcs11.NewAttribute encodes it.
func classBytes(class uint) []byte {
	return pkcs11.NewAttribute(pkcs11.CKA_CLASS, class).Value
}
