package awskms

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

func (e *env) openSecp(t *testing.T, keyID string) (*Secp256k1Key, error) {
	t.Helper()
	cfg := e.cfg
	cfg.KeyID = keyID
	k, err := OpenSecp256k1(context.Background(), cfg)
	if err == nil {
		t.Cleanup(func() { k.Close() })
	}
	return k, err
}

// An ECC_SECG_P256K1 key through the real SDK: its public key, and digests
// signed as they are, whose DER answer verifies once normalised.
func TestSecp256k1KeySignsDigests(t *testing.T) {
	e := newEnv(t)
	id, pub := e.srv.AddSecp256k1Key("eth")
	k, err := e.openSecp(t, "alias/eth")
	if err != nil {
		t.Fatal(err)
	}
	if !k.PubKey().IsEqual(pub) {
		t.Fatalf("public key %x, want %x", k.PubKey().SerializeCompressed(), pub.SerializeCompressed())
	}
	if k.k.ARN() != e.srv.ARN(id) {
		t.Errorf("key addressed as %s, want its ARN %s", k.k.ARN(), e.srv.ARN(id))
	}
	digest := sha256.Sum256([]byte("tx"))
	first, err := k.SignDigest(context.Background(), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := secp256k1.Normalize(pub, digest[:], first); err != nil {
		t.Fatalf("signature does not verify: %v", err)
	}
	second, _ := k.SignDigest(context.Background(), digest[:])
	if bytes.Equal(first, second) {
		t.Error("two KMS signatures over one digest are equal; AWS KMS draws a random nonce")
	}
	if _, err := k.SignDigest(context.Background(), digest[:31]); err == nil {
		t.Error("a 31-byte digest was sent to KMS")
	}
}

// KMS may answer s in the upper half: it comes out low, and still
// verifies. A corrupt or malformed answer never comes out.
func TestSecp256k1KeyAnswersNormalisedOrRefused(t *testing.T) {
	e := newEnv(t)
	_, pub := e.srv.AddSecp256k1Key("eth")
	k, err := e.openSecp(t, "alias/eth")
	if err != nil {
		t.Fatal(err)
	}
	digest := sha256.Sum256([]byte("tx"))
	e.srv.MangleSignatures(1, func(der []byte) []byte {
		rs, _ := secp256k1.ParseDER(der)
		var s dsecp.ModNScalar
		s.SetByteSlice(rs[32:])
		if !s.IsOverHalfOrder() {
			s.Negate()
		}
		sb := s.Bytes()
		out, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(rs[:32]), new(big.Int).SetBytes(sb[:])})
		return out
	})
	raw, err := k.SignDigest(context.Background(), digest[:])
	if err != nil {
		t.Fatal(err)
	}
	var s dsecp.ModNScalar
	s.SetByteSlice(raw[32:])
	if !s.IsOverHalfOrder() {
		t.Fatal("the mangled answer did not carry a high s")
	}
	low, _, err := secp256k1.Normalize(pub, digest[:], raw)
	s.SetByteSlice(low[32:])
	if err != nil || s.IsOverHalfOrder() {
		t.Fatalf("Normalize: %v (high s %v)", err, s.IsOverHalfOrder())
	}

	e.srv.CorruptSignatures(1)
	raw, err = k.SignDigest(context.Background(), digest[:])
	if err == nil {
		_, _, err = secp256k1.Normalize(pub, digest[:], raw)
	}
	if !errors.Is(err, secp256k1.ErrBadSignature) {
		t.Errorf("corrupt signature: err = %v, want ErrBadSignature", err)
	}
	e.srv.MangleSignatures(1, func([]byte) []byte { return []byte("not DER") })
	if _, err := k.SignDigest(context.Background(), digest[:]); !errors.Is(err, ErrBadSignature) {
		t.Errorf("malformed signature: err = %v, want ErrBadSignature", err)
	}
}

// A key of the wrong spec is refused at Open with what to create instead,
// both ways round.
func TestSecp256k1KeySpecChecked(t *testing.T) {
	e := newEnv(t)
	e.srv.AddEd25519Key("ed")
	e.srv.AddSecp256k1Key("secp")
	_, err := e.openSecp(t, "alias/ed")
	if !errors.Is(err, ErrUnsuitableKey) || !strings.Contains(err.Error(), "--key-spec ECC_SECG_P256K1") {
		t.Errorf("secp256k1 open of an Ed25519 key: %v", err)
	}
	if err := e.openErr(t, "alias/secp"); !errors.Is(err, ErrUnsuitableKey) || !strings.Contains(err.Error(), "ECC_NIST_EDWARDS25519") {
		t.Errorf("Ed25519 open of a secp256k1 key: %v", err)
	}
	e.srv.CorruptSignatures(1)
	if _, err := e.openSecp(t, "alias/secp"); !errors.Is(err, secp256k1.ErrBadSignature) || !strings.Contains(err.Error(), "self-test") {
		t.Errorf("open with a corrupt self-test signature: %v", err)
	}
}
