package menderartifact

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
	"math/big"

	"cradle"
)

// verify checks the base64 signature sigB64 over manifest against each
// key and returns the one that verifies it.
func verify(keys []crypto.PublicKey, manifest, sigB64 []byte) (crypto.PublicKey, error) {
	sig, err := base64.StdEncoding.DecodeString(string(sigB64))
	if err != nil {
		return nil, invalid("manifest.sig is not base64: %v", err)
	}
	digest := sha256.Sum256(manifest)
	for i, k := range keys {
		switch k := k.(type) {
		case *rsa.PublicKey:
			if rsa.VerifyPKCS1v15(k, crypto.SHA256, digest[:], sig) == nil {
				return k, nil
			}
		case *ecdsa.PublicKey:
			if k.Curve != elliptic.P256() {
				return nil, cradle.Errorf(cradle.EINVALID, "mender artifact: trusted key %d: ECDSA on %s is not supported, only P-256", i, k.Curve.Params().Name)
			}
			if len(sig) != 64 {
				continue // not a raw r‖s signature of this curve
			}
			r := new(big.Int).SetBytes(sig[:32])
			s := new(big.Int).SetBytes(sig[32:])
			if ecdsa.Verify(k, digest[:], r, s) {
				return k, nil
			}
		default:
			return nil, cradle.Errorf(cradle.EINVALID, "mender artifact: trusted key %d: type %T is not supported (RSA or ECDSA P-256)", i, k)
		}
	}
	return nil, invalid("manifest.sig does not verify with any of the %d trusted keys", len(keys))
}

// sign returns the base64 manifest.sig for manifest, made by signer in
// mender-artifact's encoding.
func sign(signer crypto.Signer, manifest []byte) ([]byte, error) {
	digest := sha256.Sum256(manifest)
	var sig []byte
	switch pub := signer.Public().(type) {
	case *rsa.PublicKey:
		s, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("mender artifact: sign manifest: %w", err)
		}
		sig = s
	case *ecdsa.PublicKey:
		if pub.Curve != elliptic.P256() {
			return nil, invalid("signing key: ECDSA on %s is not supported, only P-256", pub.Curve.Params().Name)
		}
		der, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256)
		if err != nil {
			return nil, fmt.Errorf("mender artifact: sign manifest: %w", err)
		}
		var rs struct{ R, S *big.Int }
		if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) > 0 || rs.R == nil || rs.S == nil {
			return nil, fmt.Errorf("mender artifact: signer returned a malformed ECDSA signature")
		}
		if rs.R.Sign() <= 0 || rs.S.Sign() <= 0 || rs.R.BitLen() > 256 || rs.S.BitLen() > 256 {
			return nil, fmt.Errorf("mender artifact: signer returned an ECDSA signature out of range")
		}
		sig = make([]byte, 64)
		rs.R.FillBytes(sig[:32])
		rs.S.FillBytes(sig[32:])
	default:
		return nil, invalid("signing key: type %T is not supported (RSA or ECDSA P-256)", pub)
	}
	return []byte(base64.StdEncoding.EncodeToString(sig)), nil
}
