package main

import (
	"crypto"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"cradle/internal/atomicfile"
	"cradle/internal/kms"
	"cradle/internal/mcuboot"

	"github.com/spf13/cobra"
)

// releaseCmd groups the release commands: the offline ones that sign and
// check MCUboot images, the clients of the server's release routes, and
// the local TUF repository commands.
func (a *app) releaseCmd() *cobra.Command {
	c := &cobra.Command{
		Use:   "release",
		Short: "Releases: upload, sign, list, show, deprecate, yank; image keys, the TUF repository, MCUboot images, Mender/SWUpdate signing",
		Long: `A release is one uploaded image or artifact of a model, signed into the
tenant's TUF repository before a rollout can use it. upload, sign, list, show,
deprecate, yank, tuf and key are clients of the server's API. repo works on
the data directory (the TUF repository and its offline root keys), and
sign-image, verify-image and sign-artifact work on local files only.`,
	}
	c.AddCommand(a.releaseSignImageCmd(), a.releaseVerifyImageCmd(), a.releaseSignArtifactCmd())
	c.AddCommand(a.releaseClientCmds()...)
	c.AddCommand(a.releaseRepoCmd())
	return c
}

// imageInfo is the --json output of sign-image and verify-image.
type imageInfo struct {
	File               string  `json:"file"`
	Size               int     `json:"size"`
	Version            string  `json:"version"`
	SecurityCounter    *uint32 `json:"security_counter,omitempty"`
	HeaderSize         uint16  `json:"header_size"`
	ImageSize          uint32  `json:"image_size"`
	LoadAddr           uint32  `json:"load_addr"`
	Flags              uint32  `json:"flags"`
	Hash               string  `json:"hash"`               // SHA-256 of header, body and protected TLVs, hex
	KeyHash            string  `json:"key_hash,omitempty"` // SHA-256 of the signing key's DER public key, hex
	SignatureAlgorithm string  `json:"signature_algorithm,omitempty"`
}

func newImageInfo(file string, size int, img *mcuboot.Image, key crypto.PublicKey) imageInfo {
	info := imageInfo{File: file, Size: size, Version: img.Header.Version.String(), HeaderSize: img.Header.HeaderSize,
		ImageSize: img.Header.ImageSize, LoadAddr: img.Header.LoadAddr, Flags: img.Header.Flags, Hash: hex.EncodeToString(img.Hash[:])}
	if img.HasSecurityCounter {
		n := img.SecurityCounter
		info.SecurityCounter = &n
	}
	if key != nil {
		info.KeyHash = hex.EncodeToString(img.KeyHash)
		for _, t := range img.TLVs {
			switch {
			case t.Protected:
			case t.Type == mcuboot.TLVECDSASig:
				info.SignatureAlgorithm = "ecdsa-p256"
			case t.Type == mcuboot.TLVEd25519:
				info.SignatureAlgorithm = "ed25519"
			}
		}
	}
	return info
}

func (a *app) writeImageInfo(info imageInfo, jsonOut bool) error {
	if jsonOut {
		return writeJSON(a.stdout, info)
	}
	sc := "none"
	if info.SecurityCounter != nil {
		sc = strconv.FormatUint(uint64(*info.SecurityCounter), 10)
	}
	t := newTable(a.stdout)
	t.row("File", info.File)
	t.row("Version", info.Version)
	t.row("Security counter", sc)
	t.row("Size", fmt.Sprintf("%d (header %#x, body %d)", info.Size, info.HeaderSize, info.ImageSize))
	t.row("Hash", info.Hash)
	if info.KeyHash != "" {
		t.row("Key hash", info.KeyHash)
		t.row("Signature", info.SignatureAlgorithm)
	}
	return t.flush()
}

// parseUint parses a decimal or 0x-prefixed number of at most bits bits.
func parseUint(flag, s string, bits int) (uint64, error) {
	n, err := strconv.ParseUint(s, 0, bits)
	if err != nil {
		return 0, fmt.Errorf("%s %q: want a number from 0 to %d (decimal or 0x hex)", flag, s, uint64(1)<<bits-1)
	}
	return n, nil
}

func (a *app) releaseSignImageCmd() *cobra.Command {
	var (
		key, version, secCnt, headerSize, loadAddr, slotSize, passFile string
		padHeader, jsonOut                                             bool
		align                                                          int
	)
	c := &cobra.Command{
		Use:   "sign-image --key KEY --version 1.2.3+4 --security-counter N IN OUT",
		Short: "Sign a firmware binary as an MCUboot image",
		Long: `Sign a firmware binary as an MCUboot image, laid out as MCUboot's imgtool
sign writes it: the header, the security counter in the protected TLV area, and
the SHA-256, key hash and signature TLVs (ECDSA P-256 or Ed25519).

--key is a key URI as everywhere in Cradle: a PKCS#8 PEM file (encrypted ones
take the passphrase from $CRADLE_PKI_PASSPHRASE, --passphrase-file or the
terminal) or a pkcs11: URI. --security-counter is a number, or "auto" for
imgtool's (major<<24 | minor<<16 | revision). The input must start with
--header-size zero bytes (the build reserved them), unless --pad-header adds
them. --slot-size pads the image to its slot with MCUboot's trailer, sized for
the flash write alignment --align (imgtool --pad). OUT is written atomically.`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if key == "" || version == "" || secCnt == "" {
				return errors.New("--key, --version and --security-counter are required")
			}
			v, err := mcuboot.ParseVersion(version)
			if err != nil {
				return err
			}
			opts := mcuboot.Options{Version: v, PadHeader: padHeader, Align: align}
			var sc uint32
			if strings.EqualFold(secCnt, "auto") {
				sc = uint32(v.Major)<<24 | uint32(v.Minor)<<16 | uint32(v.Revision)
			} else {
				n, err := parseUint("--security-counter", secCnt, 32)
				if err != nil {
					return err
				}
				sc = uint32(n)
			}
			opts.SecurityCounter = &sc
			n, err := parseUint("--header-size", headerSize, 16)
			if err != nil {
				return err
			}
			opts.HeaderSize = int(n)
			if n, err = parseUint("--load-addr", loadAddr, 32); err != nil {
				return err
			}
			opts.LoadAddr = uint32(n)
			if n, err = parseUint("--slot-size", slotSize, 32); err != nil {
				return err
			}
			opts.SlotSize = int(n)
			body, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			signer, err := kms.Open(cmd.Context(), key, kms.Options{Passphrase: pkiPassphrase(passFile, a.stdin, a.stderr)})
			if err != nil {
				return fmt.Errorf("signing key: %w", err)
			}
			defer kms.Close(signer)
			opts.Key = signer
			img, err := mcuboot.Sign(body, opts)
			if err != nil {
				return err
			}
			// Check what was written as a device would, before it is
			// put in place.
			p, err := mcuboot.Verify(img, []crypto.PublicKey{signer.Public()})
			if err != nil {
				return fmt.Errorf("the signed image does not verify: %w", err)
			}
			if err := atomicfile.WriteFile(args[1], img, 0o644); err != nil {
				return err
			}
			return a.writeImageInfo(newImageInfo(args[1], len(img), p, p.Key), jsonOut)
		},
	}
	f := c.Flags()
	f.StringVar(&key, "key", "", "signing key: a PEM file or a pkcs11: URI (ECDSA P-256 or Ed25519)")
	f.StringVar(&version, "version", "", "image version, major.minor.revision+build")
	f.StringVar(&secCnt, "security-counter", "", `security counter (a number, or "auto" from the version)`)
	f.StringVar(&headerSize, "header-size", "0x200", "header size in bytes")
	f.BoolVar(&padHeader, "pad-header", false, "prepend the header instead of using the input's leading zero bytes")
	f.StringVar(&loadAddr, "load-addr", "0", "RAM load address (sets the RAM_LOAD flag when not 0)")
	f.StringVar(&slotSize, "slot-size", "0", "pad the image to this slot size with MCUboot's trailer (0: no padding)")
	f.IntVar(&align, "align", 1, "flash write alignment for the trailer: 1, 2, 4, 8, 16 or 32")
	f.StringVar(&passFile, "passphrase-file", "", "file holding the key file's passphrase (else $CRADLE_PKI_PASSPHRASE, else asked)")
	f.BoolVar(&jsonOut, "json", false, "print the image's details as JSON")
	return c
}

func (a *app) releaseVerifyImageCmd() *cobra.Command {
	var (
		keyFiles []string
		jsonOut  bool
	)
	c := &cobra.Command{
		Use:   "verify-image --key PUB.pem IN",
		Short: "Check an MCUboot image's structure, hash and signature",
		Long: `Check an MCUboot image as the bootloader does: its header and TLV areas, its
SHA-256, and that a trusted key signed it. --key names a PEM file of public keys
or certificates (repeat it, or put several in one file); each is trusted. It
prints the version, security counter, hash and the signing key's hash.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(keyFiles) == 0 {
				return errors.New("--key is required: the public key (PEM) the image must be signed with")
			}
			var trusted []crypto.PublicKey
			for _, f := range keyFiles {
				ks, err := readPublicKeys(f)
				if err != nil {
					return err
				}
				trusted = append(trusted, ks...)
			}
			b, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			img, err := mcuboot.Verify(b, trusted)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return a.writeImageInfo(newImageInfo(args[0], len(b), img, img.Key), jsonOut)
		},
	}
	c.Flags().StringArrayVar(&keyFiles, "key", nil, "trusted public key or certificate (PEM); repeatable")
	c.Flags().BoolVar(&jsonOut, "json", false, "print the image's details as JSON")
	return c
}

// readPublicKeys returns the public keys of the PUBLIC KEY and CERTIFICATE
// blocks of a PEM file.
func readPublicKeys(path string) ([]crypto.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var keys []crypto.PublicKey
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		switch block.Type {
		case "PUBLIC KEY":
			k, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			keys = append(keys, k)
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", path, err)
			}
			keys = append(keys, c.PublicKey)
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s holds no PEM public key or certificate (export one with: openssl pkey -pubout)", path)
	}
	return keys, nil
}
