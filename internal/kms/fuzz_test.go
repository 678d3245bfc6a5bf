package kms_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/youmark/pkcs8"

	"cradle/internal/kms"
)

// FuzzParsePrivateKeyPEM feeds key file contents, plain and encrypted, to
// the parser. It must never panic, and a key it accepts must sign. The
// bounds on key derivation are lowered so that inputs asking for millions
// of PBKDF2 iterations do not slow the fuzzer down (the real bounds are
// checked the same way, by the same code).
func FuzzParsePrivateKeyPEM(f *testing.F) {
	defer kms.LimitKDFCost(2048, 1<<20)()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	plain, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: plain}), []byte(""))
	for _, kdf := range []pkcs8.KDFOpts{
		pkcs8.PBKDF2Opts{SaltSize: 8, IterationCount: 16, HMACHash: crypto.SHA256},
		pkcs8.ScryptOpts{SaltSize: 8, CostParameter: 16, BlockSize: 8, ParallelizationParameter: 1},
	} {
		enc, err := pkcs8.MarshalPrivateKey(key, []byte("fuzz"), &pkcs8.Opts{Cipher: pkcs8.AES256CBC, KDFOpts: kdf})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: enc}), []byte("fuzz"))
		f.Add(pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: enc}), []byte("wrong"))
	}
	sec1, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(append(pem.EncodeToMemory(&pem.Block{Type: "EC PARAMETERS", Bytes: []byte{6, 8, 42, 134, 72, 206, 61, 3, 1, 7}}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})...), []byte(""))
	f.Add([]byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"), []byte("x"))
	f.Add([]byte(""), []byte(""))
	f.Fuzz(func(t *testing.T, data, passphrase []byte) {
		signer, err := kms.ParsePrivateKeyPEM(data, passphrase)
		if err != nil {
			if signer != nil {
				t.Fatalf("error %v with a signer", err)
			}
			if errors.Is(err, kms.ErrWrongPassphrase) && len(passphrase) == 0 {
				t.Fatalf("wrong passphrase reported for an empty one")
			}
			return
		}
		digest := make([]byte, 32)
		if _, err := signer.Sign(rand.Reader, digest, cryptoHashFor(signer)); err != nil {
			t.Fatalf("accepted key does not sign: %v", err)
		}
	})
}

// cryptoHashFor returns the signer options for a 32-byte digest.
func cryptoHashFor(s crypto.Signer) crypto.SignerOpts {
	if _, ok := s.Public().(ed25519.PublicKey); ok {
		return crypto.Hash(0)
	}
	return crypto.SHA256
}
