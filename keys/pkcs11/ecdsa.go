//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"fmt"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/miekg/pkcs11"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

var ecdsaMech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}

// Secp256k1Key is a secp256k1 ECDSA key (CKK_EC on the secp256k1 curve) on
// a PKCS#11 token, for the SignerService. It signs 32-byte digests with
// CKM_ECDSA, which hashes nothing. Tokens draw a random nonce, so two
// signatures over one digest differ. It is safe for concurrent use.
type Secp256k1Key struct {
	k   *Key
	pub *dsecp.PublicKey
}

// OpenSecp256k1 opens the key as Open opens a secp256k1 consensus key (the
// key type, the curve, the public key object and a self-test signature are
// checked there) and signs digests with it.
func OpenSecp256k1(ctx context.Context, cfg Config) (*Secp256k1Key, error) {
	cfg.Algorithm = keys.Secp256k1
	k, err := Open(ctx, cfg)
	if err != nil {
		return nil, err
	}
	pub, err := dsecp.ParsePubKey(k.PubKey().Bytes())
	if err != nil {
		_ = k.Close()
		return nil, fmt.Errorf("keys/pkcs11: %s: %w", k.desc, err)
	}
	return &Secp256k1Key{k: k, pub: pub}, nil
}

// PubKey is the key's public key.
func (e *Secp256k1Key) PubKey() *dsecp.PublicKey { return e.pub }

// SignDigest signs a 32-byte digest as it is and answers r||s as the
// token gave it (s may be high; secp256k1.Normalize fixes and checks it).
func (e *Secp256k1Key) SignDigest(ctx context.Context, digest []byte) ([]byte, error) {
	if len(digest) != secp256k1.DigestSize {
		return nil, fmt.Errorf("keys/pkcs11: digest is %d bytes, want %d", len(digest), secp256k1.DigestSize)
	}
	d := bytes.Clone(digest) // the C call may outlive this function
	var sig []byte
	err := e.k.do(ctx, "sign", func(c *pkcs11.Ctx, s *session) error {
		if err := c.SignInit(s.h, ecdsaMech, s.key); err != nil {
			return err
		}
		out, err := c.Sign(s.h, d)
		sig = out
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("keys/pkcs11: sign: %w", err)
	}
	if len(sig) != 64 {
		return nil, fmt.Errorf("keys/pkcs11: the token returned a %d-byte ECDSA signature, want 64 (r||s): %w", len(sig), secp256k1.ErrBadSignature)
	}
	return sig, nil
}

// Close releases the token's sessions, as Key.Close.
func (e *Secp256k1Key) Close() error { return e.k.Close() }
