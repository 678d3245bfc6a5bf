package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"time"

	"cradle/internal/kms"
	"cradle/internal/pki"

	"github.com/spf13/cobra"
)

// pkiReleaseSignerCmd groups the local commands of the release signer.
func (a *app) pkiReleaseSignerCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "release-signer",
		Short: "The key that signs Mender artifacts and SWUpdate images: init, show",
		Long: `The release signer signs releases for other update clients (cradle release
sign-artifact): Mender artifacts, checked by mender-client with the signer's
public key (ArtifactVerifyKey), and SWUpdate images, checked by swupdate -k
against the PKI's root. Its key is an ECDSA P-256 key in the PKI's key store;
its certificate, issued by the root, has extended key usages emailProtection
(what SWUpdate checks) and codeSigning. cradle pki init makes one; init adds
one to a PKI made before.`,
	}
	c.AddCommand(a.pkiReleaseSignerInitCmd(), a.pkiReleaseSignerShowCmd())
	return c
}

func (a *app) pkiReleaseSignerInitCmd() *cobra.Command {
	var (
		dataDir, urlHost, passFile string
		plaintext                  bool
	)
	c := &cobra.Command{
		Use:   "init --data-dir DIR",
		Short: "Add a release signer to a PKI made before it existed (needs the root key)",
		Long: `Add the release signer to the PKI of a data directory: a new ECDSA P-256 key,
where the current device CA's key is (the same token for a pkcs11: key, else
DIR/pki/keys/), and its certificate DIR/pki/release-signer.crt, signed with the
root key (which must be reachable: keys.yaml's root entry). A PKI that has one
already is left alone.`,
		Example: `  CRADLE_PKI_PASSPHRASE=… cradle pki release-signer init --data-dir /var/lib/cradle`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return errors.New("--data-dir is required")
			}
			dir := pkiDirOf(dataDir)
			h, _, _, err := openPKI(cmd.Context(), dataDir, nil)
			if err != nil {
				return fmt.Errorf("release-signer init: %w", err)
			}
			if h.ReleaseSigner != nil {
				return fmt.Errorf("release-signer init: the PKI in %s has a release signer already (%s, valid until %s): see cradle pki release-signer show --data-dir %s",
					dir, h.ReleaseSigner.Subject, h.ReleaseSigner.NotAfter.UTC().Format(time.DateOnly), dataDir)
			}
			if plaintext && h.Profile() == pki.ProfileProduction {
				return errors.New("release-signer init: --insecure-plaintext-keys is for tests and development: a production PKI's key files are always encrypted")
			}
			var pass func() ([]byte, error)
			if !plaintext {
				pass = passphraseSource(passFile, a.stdin, a.stderr, false)
			}
			h, signers, closeKeys, err := openPKI(cmd.Context(), dataDir, pass, pki.NameRoot)
			if err != nil {
				return fmt.Errorf("release-signer init: %w", err)
			}
			defer closeKeys()
			uris, err := readKeyMap(dir)
			if err != nil {
				return fmt.Errorf("release-signer init: %w", err)
			}
			if u, ok := uris[pki.NameReleaseSigner]; ok {
				return fmt.Errorf("release-signer init: keys.yaml lists a release-signer key (%s) but there is no release-signer.crt: remove that key and its entry, then try again", resolveKeyURI(dir, u))
			}
			if urlHost == "" {
				if urlHost = urlHostOf(h.DeviceCA()); urlHost == "" {
					return errors.New("release-signer init: the current device CA has no caIssuers URL to take the host from: give --url-host HOST:PORT")
				}
			}
			km, err := newKeyMakerBeside(cmd.Context(), dir, uris[h.DeviceCAName()], h.DeviceCAName(), kms.ECDSAP256, pass)
			if err != nil {
				return fmt.Errorf("release-signer init: %w", err)
			}
			defer km.close()
			key, err := km.key(pki.NameReleaseSigner)
			if err == nil {
				err = h.AddReleaseSigner(cmd.Context(), signers[pki.NameRoot], key.Public(), urlHost, time.Now())
			}
			if err == nil {
				next := maps.Clone(uris)
				maps.Copy(next, km.uris)
				err = writeKeyMap(dir, next)
			}
			if err == nil {
				if err = pki.WriteHierarchy(dir, h); err != nil {
					writeKeyMap(dir, uris)
					os.Remove(filepath.Join(dir, pki.NameReleaseSigner+".crt"))
				}
			}
			if err != nil {
				return fmt.Errorf("release-signer init: %w%s", err, km.removeFiles())
			}
			w := &errWriter{w: a.stdout}
			w.printf("%s\n", filepath.Join(dir, pki.NameReleaseSigner+".crt"))
			fmt.Fprintf(a.stderr, "Added the release signer %s (SHA-256 %s), key at %s.\nMender devices: ArtifactVerifyKey = the output of cradle pki release-signer show --pubkey.\nSWUpdate devices: swupdate -k with the output of cradle pki release-signer show --ca.\n",
				h.ReleaseSigner.Subject, fingerprint(h.ReleaseSigner), resolveKeyURI(dir, km.uris[pki.NameReleaseSigner]))
			return w.err
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", "", "the data directory whose PKI (DIR/pki) gets the release signer")
	c.Flags().StringVar(&urlHost, "url-host", "", "HOST:PORT in the certificate's AIA URL (default: the current device CA's)")
	c.Flags().StringVar(&passFile, "passphrase-file", "", "file whose first line is the key files' passphrase (default: $"+pkiPassphraseEnv+", else a prompt)")
	c.Flags().BoolVar(&plaintext, "insecure-plaintext-keys", false, "the PKI's key files are unencrypted (a test PKI made with that flag)")
	return c
}

func (a *app) pkiReleaseSignerShowCmd() *cobra.Command {
	var (
		dataDir       string
		pubkey, caOut bool
	)
	c := &cobra.Command{
		Use:   "show --data-dir DIR [--pubkey | --ca]",
		Short: "Print the release signer's certificate, its public key (Mender) or its CA file (SWUpdate)",
		Long: `Print the release signer of a data directory's PKI as PEM: its certificate;
with --pubkey its public key, what a Mender client's ArtifactVerifyKey file
holds; with --ca the CA certificates that swupdate -k takes.`,
		Example: `  cradle pki release-signer show --data-dir /var/lib/cradle --pubkey > artifact-verify-key.pem
  cradle pki release-signer show --data-dir /var/lib/cradle --ca > swupdate-ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dataDir == "" {
				return errors.New("--data-dir is required")
			}
			if pubkey && caOut {
				return errors.New("--pubkey and --ca exclude each other")
			}
			h, _, _, err := openPKI(cmd.Context(), dataDir, nil)
			if err != nil {
				return err
			}
			if h.ReleaseSigner == nil {
				return fmt.Errorf("the PKI in %s has no release signer: add one with cradle pki release-signer init --data-dir %s", pkiDirOf(dataDir), dataDir)
			}
			var blocks []*pem.Block
			switch {
			case pubkey:
				der, err := x509.MarshalPKIXPublicKey(h.ReleaseSigner.PublicKey)
				if err != nil {
					return err
				}
				blocks = append(blocks, &pem.Block{Type: "PUBLIC KEY", Bytes: der})
			case caOut:
				for _, c := range h.ReleaseSignerCAs() {
					blocks = append(blocks, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
				}
			default:
				blocks = append(blocks, &pem.Block{Type: "CERTIFICATE", Bytes: h.ReleaseSigner.Raw})
			}
			for _, b := range blocks {
				if err := pem.Encode(a.stdout, b); err != nil {
					return err
				}
			}
			return nil
		},
	}
	c.Flags().StringVar(&dataDir, "data-dir", "", "the data directory whose PKI (DIR/pki) holds the release signer")
	c.Flags().BoolVar(&pubkey, "pubkey", false, "print the public key (PEM), for a Mender client's ArtifactVerifyKey")
	c.Flags().BoolVar(&caOut, "ca", false, "print the CA certificates (PEM) that swupdate -k takes")
	return c
}
