// Package file is the file key backend: a consensus key (ed25519,
// secp256k1, secp256k1eth or mldsa65) read from disk and held in memory. It
// is for tests and small setups, not production custody.
package file

import (
	"bytes"
	"context"
	stded25519 "crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys"
)

// Key is an in-memory consensus key.
type Key struct {
	priv crypto.PrivKey
}

// Open reads path: a CometBFT priv_validator_key.json, a file holding the
// base64 of a raw 64-byte Ed25519 private key (seed then public key), or a
// tmkms softsign consensus key: the base64 of the 32-byte seed, as
// `tmkms softsign keygen` and `tmkms softsign import` write it. Errors
// never include key material.
func Open(path string) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("keys/file: read %s: %w", path, err)
	}
	priv, err := parse(data)
	if err != nil {
		return nil, fmt.Errorf("keys/file: %s: %w", path, err)
	}
	return &Key{priv: priv}, nil
}

func parse(data []byte) (crypto.PrivKey, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) > 0 && trimmed[0] == '{' {
		return parseJSON(trimmed)
	}
	raw, err := base64.StdEncoding.DecodeString(string(trimmed))
	if err != nil {
		return nil, errors.New("neither a priv_validator_key.json nor a base64 Ed25519 key")
	}
	switch len(raw) {
	case ed25519.SeedSize:
		// tmkms softsign: the seed alone. Every 32 bytes are a valid seed,
		// so nothing more can be checked here; the cluster compares the
		// public key with the one it recorded for the chain.
		return ed25519.PrivKey(stded25519.NewKeyFromSeed(raw)), nil
	case ed25519.PrivateKeySize:
		// The last 32 bytes of a raw Ed25519 key are the public key of the
		// first 32; a mismatch means a mangled file, or tmkms's other
		// 64-byte form, an expanded key (the SHA-512 of a seed).
		priv, ok := consistent(raw)
		if !ok {
			return nil, errors.New("base64 key of 64 bytes is not an Ed25519 seed followed by its public key " +
				"(a tmkms expanded key, the SHA-512 of a seed, cannot be turned back into one: use the original priv_validator_key.json)")
		}
		return priv, nil
	case 96:
		return nil, errors.New("base64 key of 96 bytes looks like a key exported from a YubiHSM (expanded key and public key), " +
			"which cannot be turned back into an Ed25519 seed: use the original priv_validator_key.json")
	default:
		return nil, fmt.Errorf("base64 key decodes to %d bytes, want %d (a tmkms softsign seed) or %d (seed and public key)",
			len(raw), ed25519.SeedSize, ed25519.PrivateKeySize)
	}
}

func parseJSON(data []byte) (crypto.PrivKey, error) {
	var probe map[string]json.RawMessage
	if json.Unmarshal(data, &probe) == nil {
		for _, f := range []string{"privateShard", "privShare", "secretShare"} {
			if _, ok := probe[f]; ok {
				return nil, errors.New("this is a horcrux key shard, not a key: no single shard can sign; " +
					"use the original priv_validator_key.json the shards were made from, or rotate to a new key")
			}
		}
	}
	var f struct {
		PubKey  crypto.PubKey  `json:"pub_key"`
		PrivKey crypto.PrivKey `json:"priv_key"`
	}
	if err := cmtjson.Unmarshal(data, &f); err != nil {
		return nil, errors.New("not a valid priv_validator_key.json (expected a typed \"priv_key\" field)")
	}
	if f.PrivKey == nil {
		return nil, errors.New("not a valid priv_validator_key.json (no \"priv_key\" field)")
	}
	priv, err := checkPriv(f.PrivKey)
	if err != nil {
		return nil, err
	}
	if f.PubKey != nil && !f.PubKey.Equals(priv.PubKey()) {
		return nil, errors.New("pub_key does not match priv_key; the file is corrupt or edited")
	}
	return priv, nil
}

// checkPriv accepts the key types CometBFT v0.40 takes as validator keys,
// each checked for what its JSON decoder leaves unchecked.
func checkPriv(k crypto.PrivKey) (crypto.PrivKey, error) {
	switch priv := k.(type) {
	case ed25519.PrivKey:
		if len(priv) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("priv_key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
		}
		if _, ok := consistent(priv); !ok {
			return nil, errors.New("priv_key is not a consistent Ed25519 key (its public half is not the public key of its seed); the file is corrupt or edited")
		}
		return priv, nil
	case secp256k1.PrivKey:
		// CometBFT's decoder takes any length, and decred reduces an
		// out-of-range scalar silently: sign only with a valid one.
		if !validScalar(priv) {
			return nil, fmt.Errorf("priv_key is not a valid secp256k1 key (want a 32-byte scalar in (0, N)); the file is corrupt or edited")
		}
		return priv, nil
	case secp256k1eth.PrivKey, mldsa65.PrivKey:
		// Their decoders check length and range.
		return priv, nil
	}
	return nil, fmt.Errorf("priv_key is a %s key; consensus keys are ed25519, secp256k1, secp256k1eth or mldsa65", k.Type())
}

func validScalar(b []byte) bool {
	if len(b) != secp256k1.PrivKeySize {
		return false
	}
	var d dsecp.ModNScalar
	overflow := d.SetByteSlice(b)
	return !overflow && !d.IsZero()
}

// consistent reports whether a 64-byte key is a seed followed by that
// seed's public key. (CometBFT's PrivKey.PubKey returns the second half
// as it is, so the check derives the public key from the seed.)
func consistent(raw []byte) (ed25519.PrivKey, bool) {
	want := stded25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
	return ed25519.PrivKey(want), bytes.Equal(want, raw)
}

// New wraps an in-memory key (tests, generated keys). It panics on a
// key of another type than the four consensus types: that is a bug in the
// caller, not an operator's mistake.
func New(priv crypto.PrivKey) *Key {
	k, err := checkPriv(priv)
	if err != nil {
		panic("keys/file: New: " + err.Error())
	}
	return &Key{priv: k}
}

// Algorithm names the key's algorithm (keys.Ed25519, ...).
func (k *Key) Algorithm() string { return keys.AlgorithmOf(k.priv.PubKey()) }

// PubKey implements keys.Signer.
func (k *Key) PubKey() crypto.PubKey { return k.priv.PubKey() }

// Sign implements keys.Signer.
func (k *Key) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return k.priv.Sign(msg)
}

// Deterministic implements keys.Signer: every file key type signs
// deterministically (Ed25519 by RFC 8032, secp256k1 and secp256k1eth with
// RFC 6979 nonces, ML-DSA-65 in CometBFT's deterministic mode); a test
// checks each.
func (k *Key) Deterministic() bool { return true }

// Close implements keys.Signer.
func (k *Key) Close() error { return nil }
