//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// A secp256k1 key generated on the token (beside the token's Ed25519
// validator key) signs digests that verify once normalised; the token
// draws a random nonce, so two signatures differ.
func TestSecp256k1KeySignsDigests(t *testing.T) {
	tk := newToken(t, "secp256k1")
	pub := pkcs11test.GenerateSecp256k1(t, tk.module, tk.label, goodPin, "eth", []byte{0x0e})
	cfg := tk.config(t)
	cfg.KeyLabel = "eth"
	k, err := OpenSecp256k1(context.Background(), cfg)
	assertNoPin(t, err)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })
	if !k.PubKey().IsEqual(pub) {
		t.Fatalf("public key %x, want %x", k.PubKey().SerializeCompressed(), pub.SerializeCompressed())
	}
	digest := sha256.Sum256([]byte("tx"))
	first, err := k.SignDigest(context.Background(), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := secp256k1.Normalize(pub, digest[:], first); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	second, err := k.SignDigest(context.Background(), digest[:])
	if err != nil || bytes.Equal(first, second) {
		t.Errorf("second signature: %v (equal to the first: %v); CKM_ECDSA on SoftHSM draws a random nonce", err, bytes.Equal(first, second))
	}
	if _, err := k.SignDigest(context.Background(), digest[:31]); err == nil {
		t.Error("a 31-byte digest was signed")
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := k.SignDigest(context.Background(), digest[:]); !errors.Is(err, errClosed) {
		t.Errorf("after Close: err = %v", err)
	}
}

// The wrong key type is refused at open, both ways round, with the key
// named.
func TestSecp256k1KeyTypeChecked(t *testing.T) {
	tk := newToken(t, "secp256k1-type")
	pkcs11test.GenerateSecp256k1(t, tk.module, tk.label, goodPin, "eth", nil)
	_, err := OpenSecp256k1(context.Background(), tk.config(t))
	if err == nil || !strings.Contains(err.Error(), `key_label "validator" is not a secp256k1 key (CKK_EC`) {
		t.Errorf("secp256k1 open of the Ed25519 key: %v", err)
	}
	cfg := tk.config(t)
	cfg.KeyLabel = "eth"
	_, err = Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), `key_label "eth" is not an Ed25519 key`) {
		t.Errorf("Ed25519 open of the secp256k1 key: %v", err)
	}
	pkcs11test.GenerateP256(t, tk.module, tk.label, goodPin, "p256", nil)
	cfg.KeyLabel = "p256"
	_, err = OpenSecp256k1(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), `key_label "p256": the EC key is not on secp256k1`) {
		t.Errorf("secp256k1 open of a P-256 key: %v", err)
	}
}
