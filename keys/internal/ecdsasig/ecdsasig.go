// Package ecdsasig turns the ECDSA signatures secp256k1 backends return
// (an HSM's raw r||s, KMS's DER) into the formats CometBFT verifies: 64
// bytes r||s with low S for secp256k1, 65 bytes r||s||v over the Keccak-256
// of the message for secp256k1eth.
package ecdsasig

import (
	"errors"
	"fmt"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"golang.org/x/crypto/sha3"

	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// Keccak256 is the legacy Keccak-256 (not FIPS SHA3-256) secp256k1eth
// signs.
func Keccak256(msg []byte) []byte {
	h := sha3.NewLegacyKeccak256()
	h.Write(msg)
	return h.Sum(nil)
}

// FromDER reads a DER ECDSA signature into 64 bytes r||s with low S.
func FromDER(der []byte) ([]byte, error) {
	rs, err := secp256k1.ParseDER(der)
	if err != nil {
		return nil, err
	}
	return LowS(rs)
}

// LowS checks a 64-byte r||s and returns it with S in the lower half of
// the order: CometBFT refuses a high S, and neither KMS nor PKCS#11 tokens
// normalise it.
func LowS(rs []byte) ([]byte, error) {
	if len(rs) != 64 {
		return nil, errors.New("an ECDSA signature r||s has 64 bytes")
	}
	var r, s dsecp.ModNScalar
	if r.SetByteSlice(rs[:32]) || s.SetByteSlice(rs[32:]) || r.IsZero() || s.IsZero() {
		return nil, errors.New("ECDSA signature values out of range")
	}
	if s.IsOverHalfOrder() {
		s.Negate()
	}
	out := make([]byte, 0, 64)
	rb, sb := r.Bytes(), s.Bytes()
	return append(append(out, rb[:]...), sb[:]...), nil
}

// WithRecoveryID returns rs (low S) followed by v in {0,1}, the recovery
// id that makes r||s over digest recover to pub (33-byte compressed). A
// signature that does not verify against pub is secp256k1.ErrBadSignature.
func WithRecoveryID(pub, digest, rs []byte) ([]byte, error) {
	pk, err := dsecp.ParsePubKey(pub)
	if err != nil {
		return nil, fmt.Errorf("the key's public key: %w", err)
	}
	low, v, err := secp256k1.Normalize(pk, digest, rs)
	if err != nil {
		return nil, err
	}
	return append(low, v), nil
}
