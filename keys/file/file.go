// Package file is the file key backend: an Ed25519 key read from disk and
// held in memory. It is for tests and small setups, not production custody.
package file

import (
	"bytes"
	"context"
	"encoding/base64"
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

// Open reads path: a CometBFT priv_validator_key.json, or a file holding
// the base64 of a raw 64-byte Ed25519 private key. Errors never include
// key material.
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
		var f struct {
			PubKey  crypto.PubKey  `json:"pub_key"`
			PrivKey crypto.PrivKey `json:"priv_key"`
		}
		if err := cmtjson.Unmarshal(trimmed, &f); err != nil {
			return nil, errors.New("not a valid priv_validator_key.json (expected a typed \"priv_key\" field)")
		}
		priv, ok := f.PrivKey.(ed25519.PrivKey)
		if !ok {
			return nil, fmt.Errorf("priv_key is %T; only ed25519 consensus keys are supported", f.PrivKey)
		}
		if len(priv) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("priv_key has %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
		}
		if f.PubKey != nil && !f.PubKey.Equals(priv.PubKey()) {
			return nil, errors.New("pub_key does not match priv_key; the file is corrupt or edited")
		}
		return priv, nil
	}
	raw, err := base64.StdEncoding.DecodeString(string(trimmed))
	if err != nil {
		return nil, errors.New("neither a priv_validator_key.json nor a base64 Ed25519 key")
	}
	if len(raw) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("base64 key decodes to %d bytes, want %d", len(raw), ed25519.PrivateKeySize)
	}
	priv := ed25519.PrivKey(raw)
	// The last 32 bytes of a raw Ed25519 key are its public key; a
	// mismatch means a truncated or mangled file.
	if !bytes.Equal(priv.PubKey().Bytes(), raw[32:]) {
		return nil, errors.New("base64 key is not a consistent Ed25519 private key")
	}
	return priv, nil
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
