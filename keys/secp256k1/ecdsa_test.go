package secp256k1

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	decdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

func newKey(t *testing.T) *Key {
	t.Helper()
	k, err := Load(writeKeyFile(t, randomKeyHex(t)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// highS returns r||(n-s): the other, equally valid signature a token or
// KMS may answer.
func highS(rs []byte) []byte {
	var s dsecp.ModNScalar
	s.SetByteSlice(rs[32:])
	s.Negate()
	sb := s.Bytes()
	return append(bytes.Clone(rs[:32]), sb[:]...)
}

// Normalize turns either half of s into the low one, finds the v that
// recovers the key, and refuses what does not verify.
func TestNormalize(t *testing.T) {
	k := newKey(t)
	for i := range 16 {
		digest := sha256.Sum256([]byte{byte(i)})
		raw, err := k.SignDigest(context.Background(), digest[:])
		if err != nil {
			t.Fatal(err)
		}
		for _, in := range [][]byte{raw, highS(raw)} {
			low, v, err := Normalize(k.PubKey(), digest[:], in)
			if err != nil || !bytes.Equal(low, raw) {
				t.Fatalf("Normalize = %x, %v; want the low-S %x", low, err, raw)
			}
			compact := append([]byte{27 + v}, low...)
			if got := recoverPubCompact(t, compact, digest[:]); !got.IsEqual(k.PubKey()) {
				t.Fatalf("v=%d does not recover the key", v)
			}
		}
	}
	digest := sha256.Sum256([]byte("m"))
	raw, _ := k.SignDigest(context.Background(), digest[:])
	other := newKey(t)
	bad := map[string]struct {
		pub    *dsecp.PublicKey
		digest []byte
		rs     []byte
	}{
		"another key's public key": {other.PubKey(), digest[:], raw},
		"another digest":           {k.PubKey(), make([]byte, 32), raw},
		"zero r":                   {k.PubKey(), digest[:], append(make([]byte, 32), raw[32:]...)},
		"s not below n":            {k.PubKey(), digest[:], append(bytes.Clone(raw[:32]), bytes.Repeat([]byte{0xff}, 32)...)},
		"short":                    {k.PubKey(), digest[:], raw[:63]},
	}
	for name, tc := range bad {
		if _, _, err := Normalize(tc.pub, tc.digest, tc.rs); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: err = %v, want ErrBadSignature", name, err)
		}
	}
	if _, _, err := Normalize(k.PubKey(), digest[:31], raw); err == nil || errors.Is(err, ErrBadSignature) {
		t.Errorf("31-byte digest: err = %v, want a digest length error", err)
	}
}

func recoverPubCompact(t *testing.T, compact, digest []byte) *dsecp.PublicKey {
	t.Helper()
	pub, _, err := decdsa.RecoverCompact(compact, digest)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestSignDigestRefusesOtherLengths(t *testing.T) {
	k := newKey(t)
	for _, n := range []int{0, 31, 33} {
		if _, err := k.SignDigest(context.Background(), make([]byte, n)); err == nil {
			t.Errorf("%d-byte digest signed", n)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.SignDigest(ctx, make([]byte, 32)); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled context: err = %v", err)
	}
}

func TestParseDER(t *testing.T) {
	r, s := big.NewInt(5), new(big.Int).Lsh(big.NewInt(1), 255)
	der, _ := asn1.Marshal(struct{ R, S *big.Int }{r, s})
	rs, err := ParseDER(der)
	if err != nil || new(big.Int).SetBytes(rs[:32]).Cmp(r) != 0 || new(big.Int).SetBytes(rs[32:]).Cmp(s) != 0 {
		t.Fatalf("ParseDER = %x, %v", rs, err)
	}
	neg, _ := asn1.Marshal(struct{ R, S *big.Int }{big.NewInt(-1), s})
	long, _ := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).Lsh(big.NewInt(1), 256), s})
	for name, b := range map[string][]byte{"trailing bytes": append(bytes.Clone(der), 0), "negative r": neg,
		"r of 257 bits": long, "not DER": []byte("sig")} {
		if _, err := ParseDER(b); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: err = %v, want ErrBadSignature", name, err)
		}
	}
}

func TestSPKIRoundTripAndOtherCurvesRefused(t *testing.T) {
	k := newKey(t)
	pub, err := ParseSPKI(MarshalSPKI(k.PubKey()))
	if err != nil || !pub.IsEqual(k.PubKey()) {
		t.Fatalf("round trip: %v", err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKIXPublicKey(&p256.PublicKey)
	if _, err := ParseSPKI(der); err == nil || !strings.Contains(err.Error(), "not secp256k1") {
		t.Errorf("a P-256 key: err = %v, want a curve error", err)
	}
}

func TestNormalizeLowS(t *testing.T) {
	k := newKey(t)
	digest := sha256.Sum256([]byte("m"))
	raw, _ := k.SignDigest(context.Background(), digest[:])
	if low, err := NormalizeLowS(k.PubKey(), digest[:], highS(raw)); err != nil || !bytes.Equal(low, raw) {
		t.Fatalf("NormalizeLowS = %x, %v; want %x", low, err, raw)
	}
	if _, err := NormalizeLowS(newKey(t).PubKey(), digest[:], raw); !errors.Is(err, ErrBadSignature) {
		t.Errorf("another key: err = %v", err)
	}
}
