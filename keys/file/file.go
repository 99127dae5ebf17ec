// Package file is the file key backend: an Ed25519 key read from disk and
// held in memory. It is for tests and small setups, not production custody.
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
	cmtjson "github.com/cometbft/cometbft/libs/json"
)

// Key is an in-memory Ed25519 consensus key.
type Key struct {
	priv ed25519.PrivKey
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

func parse(data []byte) (ed25519.PrivKey, error) {
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

func parseJSON(data []byte) (ed25519.PrivKey, error) {
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
	priv, ok := f.PrivKey.(ed25519.PrivKey)
	if !ok {
		return nil, fmt.Errorf("priv_key is %T; only ed25519 consensus keys are supported", f.PrivKey)
	}
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("priv_key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	if _, ok := consistent(priv); !ok {
		return nil, errors.New("priv_key is not a consistent Ed25519 key (its public half is not the public key of its seed); the file is corrupt or edited")
	}
	if f.PubKey != nil && !f.PubKey.Equals(priv.PubKey()) {
		return nil, errors.New("pub_key does not match priv_key; the file is corrupt or edited")
	}
	return priv, nil
}

// consistent reports whether a 64-byte key is a seed followed by that
// seed's public key. (CometBFT's PrivKey.PubKey returns the second half
// as it is, so the check derives the public key from the seed.)
func consistent(raw []byte) (ed25519.PrivKey, bool) {
	want := stded25519.NewKeyFromSeed(raw[:ed25519.SeedSize])
	return ed25519.PrivKey(want), bytes.Equal(want, raw)
}

// New wraps an in-memory key (tests, generated keys).
func New(priv ed25519.PrivKey) *Key { return &Key{priv: priv} }

// PubKey implements keys.Signer.
func (k *Key) PubKey() crypto.PubKey { return k.priv.PubKey() }

// Sign implements keys.Signer.
func (k *Key) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return k.priv.Sign(msg)
}

// Close implements keys.Signer.
func (k *Key) Close() error { return nil }
