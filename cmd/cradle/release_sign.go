package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"cradle"
	"cradle/internal/atomicfile"
	"cradle/internal/compat/menderartifact"
	"cradle/internal/compat/swu"
	"cradle/internal/kms"
	"cradle/internal/ota"
	"cradle/internal/pki"

	"github.com/spf13/cobra"
)

// The release signer signs releases in the formats of other update
// clients: a Mender artifact's manifest.sig (mender-client checks it with
// ArtifactVerifyKey, the signer's public key) and a SWUpdate image's
// sw-description.sig (swupdate -k checks it against the root, with
// extended key usage emailProtection). Its key is the PKI's
// "release-signer" (keys.yaml), its certificate release-signer.crt,
// issued by the root (pki.ReleaseSigner).

// releaseSigner is a key that signs releases and the certificates that
// vouch for it.
type releaseSigner struct {
	// Key is the signing key.
	Key crypto.Signer
	// Chain is the signer's certificate first, then its issuers; the last
	// one is the anchor devices trust (the PKI's root). It may be only
	// the signer's certificate, which then is its own anchor.
	Chain []*x509.Certificate
	close func() error
}

// Close releases the key (a PKCS#11 session).
func (s *releaseSigner) Close() error {
	if s.close == nil {
		return nil
	}
	return s.close()
}

// openReleaseSigner opens the release signer of dataDir's PKI: its key
// through keys.yaml and kms (passphrase as in openPKI) and the chain
// release-signer.crt, root.crt. Call Close when done. A PKI without a
// release signer is an error naming the command that adds one.
func openReleaseSigner(ctx context.Context, dataDir string, passphrase func() ([]byte, error)) (*releaseSigner, error) {
	h, _, _, err := openPKI(ctx, dataDir, nil)
	if err != nil {
		return nil, err
	}
	if h.ReleaseSigner == nil {
		return nil, fmt.Errorf("pki: the PKI in %s has no release signer: add one with cradle pki release-signer init --data-dir %s", pkiDirOf(dataDir), dataDir)
	}
	h, signers, closeKeys, err := openPKI(ctx, dataDir, passphrase, pki.NameReleaseSigner)
	if err != nil {
		return nil, err
	}
	key := signers[pki.NameReleaseSigner]
	if !publicKeyEqual(key.Public(), h.ReleaseSigner.PublicKey) {
		closeKeys()
		return nil, fmt.Errorf("pki: the key release-signer of keys.yaml is not the key of %s", filepath.Join(pkiDirOf(dataDir), pki.NameReleaseSigner+".crt"))
	}
	return &releaseSigner{Key: key, Chain: append([]*x509.Certificate{h.ReleaseSigner}, h.ReleaseSignerCAs()...), close: closeKeys}, nil
}

// loadReleaseSigner opens the key at keyURI (a file or pkcs11: URI) and,
// when certFile is not "", the PEM certificates in it: the signer's first
// (it must be the key's), then any issuers. Without certFile only Mender
// artifacts can be signed.
func loadReleaseSigner(ctx context.Context, keyURI, certFile string, passphrase func() ([]byte, error)) (*releaseSigner, error) {
	var chain []*x509.Certificate
	if certFile != "" {
		b, err := os.ReadFile(certFile)
		if err != nil {
			return nil, err
		}
		for {
			var blk *pem.Block
			if blk, b = pem.Decode(b); blk == nil {
				break
			}
			if blk.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", certFile, err)
			}
			chain = append(chain, c)
		}
		if len(chain) == 0 {
			return nil, fmt.Errorf("%s holds no PEM certificate", certFile)
		}
	}
	key, err := kms.Open(ctx, keyURI, kms.Options{Passphrase: passphrase})
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if len(chain) > 0 && !publicKeyEqual(key.Public(), chain[0].PublicKey) {
		kms.Close(key)
		return nil, fmt.Errorf("the first certificate of %s (%s) is not for the key %s", certFile, chain[0].Subject, keyURI)
	}
	return &releaseSigner{Key: key, Chain: chain, close: func() error { return kms.Close(key) }}, nil
}

func publicKeyEqual(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

// swuSigner is s as swu wants it: the certificate, the key and the
// intermediates to embed (not self-signed anchors).
func (s *releaseSigner) swuSigner() (swu.Signer, error) {
	if len(s.Chain) == 0 {
		return swu.Signer{}, cradle.Errorf(cradle.EINVALID, "a SWUpdate image is signed with a certificate: give --cert with --key")
	}
	out := swu.Signer{Cert: s.Chain[0], Key: s.Key}
	for _, c := range s.Chain[1:] {
		if !bytes.Equal(c.RawIssuer, c.RawSubject) {
			out.Chain = append(out.Chain, c)
		}
	}
	return out, nil
}

// signedRelease describes what signRelease wrote (sign-artifact --json).
type signedRelease struct {
	File   string `json:"file"`
	Kind   string `json:"kind"` // mender or swupdate
	Name   string `json:"name"` // artifact_name, or the .swu's software version
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	Signer string `json:"signer"` // the certificate's subject, or "public key" without one
}

// signRelease signs the Mender artifact or SWUpdate image in with s and
// writes it to out: the format is recognised from the first bytes (as the
// publisher does, ota.Sniff), the signature added or replaced
// (menderartifact.Resign, swu.Resign), and the result parsed back and
// checked as a device would (the signer's key; the chain's anchor with
// emailProtection) before it is renamed to out. Anything else, and any
// failure, leaves out as it was (a temporary file next to it is removed).
// in and out may be the same file.
func signRelease(in, out string, s *releaseSigner) (*signedRelease, error) {
	f, err := os.Open(in)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	head := make([]byte, ota.SniffSize)
	n, err := io.ReadFull(f, head)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("read %s: %w", in, err)
	}
	head = head[:n]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	kind := ota.Sniff(head)
	var sw swu.Signer
	switch kind {
	case cradle.ReleaseMender:
	case cradle.ReleaseSWUpdate:
		if sw, err = s.swuSigner(); err != nil {
			return nil, err
		}
	case cradle.ReleaseMCUboot:
		return nil, cradle.Errorf(cradle.EINVALID, "%s is an MCUboot image: sign it with cradle release sign-image", in)
	default:
		return nil, cradle.Errorf(cradle.EINVALID, "%s is neither a Mender artifact (%v) nor a SWUpdate image (%v)", in, ota.CheckMender(head), ota.CheckSWUpdate(head))
	}

	tmp, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return nil, err
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	bw := bufio.NewWriterSize(tmp, 256<<10)
	if kind == cradle.ReleaseMender {
		err = menderartifact.Resign(bw, f, s.Key)
	} else {
		err = swu.Resign(bw, f, sw)
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return nil, explain(err, in)
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	h := sha256.New()
	size, err := io.Copy(h, tmp)
	if err != nil {
		return nil, err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	res := &signedRelease{File: out, Kind: string(kind), Size: size, SHA256: hex.EncodeToString(h.Sum(nil)), Signer: "public key"}
	// Check the result as a device would, before it is put in place.
	if kind == cradle.ReleaseMender {
		a, err := menderartifact.Parse(bufio.NewReaderSize(tmp, 256<<10), menderartifact.Options{Keys: []crypto.PublicKey{s.Key.Public()}})
		if err != nil {
			return nil, explain(err, in+": the signed artifact does not verify")
		}
		res.Name = a.Name
	} else {
		roots := x509.NewCertPool()
		roots.AddCert(s.Chain[len(s.Chain)-1])
		img, err := swu.Parse(tmp, swu.Options{Roots: roots})
		if err != nil {
			return nil, explain(err, in+": the signed image does not verify")
		}
		res.Name = img.Description.Version
	}
	if len(s.Chain) > 0 {
		res.Signer = s.Chain[0].Subject.String()
	}
	if err := tmp.Chmod(0o644); err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		os.Remove(tmp.Name())
		done = true
		return nil, err
	}
	done = true
	if err := atomicfile.SyncDir(filepath.Dir(out)); err != nil {
		return nil, err
	}
	return res, nil
}

// explain puts context before err's message; a *cradle.Error keeps its
// code, and its message (all the CLI prints of it) gets the context.
func explain(err error, context string) error {
	var ce *cradle.Error
	if errors.As(err, &ce) {
		return cradle.Errorf(ce.Code, "%s: %s", context, ce.Message)
	}
	return fmt.Errorf("%s: %w", context, err)
}

func (a *app) releaseSignArtifactCmd() *cobra.Command {
	var (
		out, dataDir, key, cert, passFile string
		jsonOut                           bool
	)
	c := &cobra.Command{
		Use:   "sign-artifact IN -o OUT (--data-dir DIR | --key KEY [--cert CERT])",
		Short: "Sign a Mender artifact or a SWUpdate image (.swu) with the PKI's release signer",
		Long: `Sign a Mender artifact (adds or replaces manifest.sig: ECDSA P-256 as raw r‖s,
what mender-artifact 3.9 and mender-client 3.4 verify with ArtifactVerifyKey)
or a SWUpdate image (adds or replaces sw-description.sig: CMS with the signer
certificate, what swupdate -k CA verifies). The format is recognised from the
file; anything else is refused. The result is checked as a device would check
it, then written to OUT atomically: a failure leaves OUT as it was.

--data-dir signs with the release signer of that data directory's PKI
(cradle pki release-signer init makes one); give devices its public key
(cradle pki release-signer show --pubkey, for Mender) or its CA
(show --ca, for SWUpdate). --key signs with another key instead (a PEM file
or a pkcs11: URI); --cert is its certificate (then its issuers), which a .swu
needs. Encrypted key files take the passphrase from $CRADLE_PKI_PASSPHRASE,
--passphrase-file or the terminal.`,
		Example: `  cradle release sign-artifact app-1.2.mender -o app-1.2.signed.mender --data-dir /var/lib/cradle
  cradle release sign-artifact rootfs.swu -o rootfs.signed.swu --key signer.pem --cert signer.crt`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return errors.New("-o OUT is required: where the signed file goes")
			}
			if (dataDir == "") == (key == "") {
				return errors.New("give either --data-dir (the PKI's release signer) or --key (another key)")
			}
			if cert != "" && key == "" {
				return errors.New("--cert goes with --key")
			}
			pass := pkiPassphrase(passFile, a.stdin, a.stderr)
			var (
				s   *releaseSigner
				err error
			)
			if dataDir != "" {
				s, err = openReleaseSigner(cmd.Context(), dataDir, pass)
			} else {
				s, err = loadReleaseSigner(cmd.Context(), key, cert, pass)
			}
			if err != nil {
				return err
			}
			defer s.Close()
			res, err := signRelease(args[0], out, s)
			if err != nil {
				return err
			}
			if jsonOut {
				return writeJSON(a.stdout, res)
			}
			t := newTable(a.stdout)
			t.row("File", res.File)
			t.row("Kind", res.Kind)
			t.row("Name", res.Name)
			t.row("Size", fmt.Sprint(res.Size))
			t.row("SHA-256", res.SHA256)
			t.row("Signed by", res.Signer)
			return t.flush()
		},
	}
	f := c.Flags()
	f.StringVarP(&out, "output", "o", "", "where the signed artifact goes (may be IN)")
	f.StringVar(&dataDir, "data-dir", "", "sign with the release signer of this data directory's PKI")
	f.StringVar(&key, "key", "", "sign with this key instead: a PEM file or a pkcs11: URI (ECDSA P-256 or RSA)")
	f.StringVar(&cert, "cert", "", "with --key: PEM file of the key's certificate, then its issuers (needed for .swu)")
	f.StringVar(&passFile, "passphrase-file", "", "file holding the key files' passphrase (else $CRADLE_PKI_PASSPHRASE, else asked)")
	f.BoolVar(&jsonOut, "json", false, "print what was written as JSON")
	return c
}
