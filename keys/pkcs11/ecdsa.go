//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"fmt"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/miekg/pkcs11"

	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// secp256k1Params is the DER of the named curve secp256k1 (1.3.132.0.10),
// the CKA_EC_PARAMS of such a key.
var secp256k1Params = []byte{0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a}

var ecdsaMech = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)}

// Secp256k1Key is a secp256k1 ECDSA key (CKK_EC on the secp256k1 curve) on
// a PKCS#11 token, for the SignerService. It signs 32-byte digests with
// CKM_ECDSA, which hashes nothing. Tokens draw a random nonce, so two
// signatures over one digest differ. It is safe for concurrent use.
type Secp256k1Key struct {
	k   *Key
	pub *dsecp.PublicKey
}

// OpenSecp256k1 loads the module, finds the token and the key, reads its
// public key and checks a self-test signature against it, like Open does
// for an Ed25519 key.
func OpenSecp256k1(ctx context.Context, cfg Config) (*Secp256k1Key, error) {
	k, err := newKey(cfg)
	if err != nil {
		return nil, err
	}
	e := &Secp256k1Key{k: k}
	if err := e.init(ctx); err != nil {
		_ = k.Close()
		return nil, fmt.Errorf("keys/pkcs11: %s: %w", k.desc, err)
	}
	return e, nil
}

func (e *Secp256k1Key) init(ctx context.Context) error {
	err := e.k.do(ctx, "open", func(c *pkcs11.Ctx, s *session) error {
		pub, err := e.readPublicKey(c, s)
		e.pub = pub
		return err
	})
	if err != nil {
		return err
	}
	digest := sha256.Sum256(selfTestMsg)
	raw, err := e.SignDigest(ctx, digest[:])
	if err != nil {
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)) {
			return fmt.Errorf("self-test signature: the token does not offer CKM_ECDSA: %w", err)
		}
		return fmt.Errorf("self-test signature: %w", err)
	}
	if _, _, err := secp256k1.Normalize(e.pub, digest[:], raw); err != nil {
		return fmt.Errorf("self-test signature does not verify against the public key %X: the public key object found for %s belongs to another key pair (%w)",
			e.pub.SerializeCompressed(), e.k.keyDesc(), err)
	}
	return nil
}

// readPublicKey checks the key is CKK_EC on secp256k1 and reads its point
// from the public key object (or, lacking one, the private key).
func (e *Secp256k1Key) readPublicKey(c *pkcs11.Ctx, s *session) (*dsecp.PublicKey, error) {
	attrs, err := c.GetAttributeValue(s.h, s.key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return nil, fmt.Errorf("read the key type of %s: %w", e.k.keyDesc(), err)
	}
	if t, ok := ulong(attrs[0].Value); !ok || t != pkcs11.CKK_EC {
		return nil, fmt.Errorf("%s is not an EC key (CKA_KEY_TYPE 0x%X, want CKK_EC 0x%X): secp256k1 keys are CKK_EC on curve secp256k1",
			e.k.keyDesc(), attrs[0].Value, pkcs11.CKK_EC)
	}
	objs, err := findObjects(c, s.h, template(pkcs11.CKO_PUBLIC_KEY, e.k.keyLabel, e.k.keyID))
	if err != nil {
		return nil, err
	}
	obj := s.key
	switch len(objs) {
	case 0:
	case 1:
		obj = objs[0]
	default:
		return nil, fmt.Errorf("several public keys match %s; set key_id (or both) to choose one", e.k.keyDesc())
	}
	attrs, err = c.GetAttributeValue(s.h, obj, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, nil), pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		return nil, fmt.Errorf("read CKA_EC_PARAMS and CKA_EC_POINT of %s (store the public key on the token): %w", e.k.keyDesc(), err)
	}
	if !bytes.Equal(attrs[0].Value, secp256k1Params) {
		return nil, fmt.Errorf("%s is not on curve secp256k1 (CKA_EC_PARAMS %X, want %X)", e.k.keyDesc(), attrs[0].Value, secp256k1Params)
	}
	point := attrs[1].Value
	var raw []byte
	if rest, err := asn1.Unmarshal(point, &raw); err == nil && len(rest) == 0 {
		point = raw
	}
	pub, err := dsecp.ParsePubKey(point)
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT of %s is not a secp256k1 point: %w", e.k.keyDesc(), err)
	}
	return pub, nil
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
