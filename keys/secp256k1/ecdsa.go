package secp256k1

import (
	"context"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
)

// DigestSize is the length of the digest an ECDSA key signs.
const DigestSize = 32

// ErrBadSignature: a backend (token, KMS) answered an ECDSA signature that
// is malformed or does not verify against the key's public key. It is never
// passed on.
var ErrBadSignature = errors.New("the key backend returned a signature that does not verify against the key's public key")

// PubKey is the parsed public key.
func (k *Key) PubKey() *dsecp.PublicKey { return k.priv.PubKey() }

// SignDigest signs a 32-byte digest as it is and returns r||s (32 bytes
// each, low-S). The nonce is RFC 6979's, so the same digest always gives
// the same signature.
func (k *Key) SignDigest(ctx context.Context, digest []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(digest) != DigestSize {
		return nil, fmt.Errorf("keys/secp256k1: digest is %d bytes, want %d", len(digest), DigestSize)
	}
	// SignCompact is code || R || S; ecdsa.Sign would return R and S only
	// through DER.
	compact := ecdsa.SignCompact(k.priv, digest, false)
	return compact[1:], nil
}

// Normalize turns a raw r||s over digest, as a token or KMS produced it,
// into the canonical recoverable form: s moved to the lower half of the
// group order, and the recovery id v (0 or 1). A signature that does not
// verify against pub is ErrBadSignature, so a faulty backend never gets a
// wrong signature out.
func Normalize(pub *dsecp.PublicKey, digest, rs []byte) (low []byte, v byte, err error) {
	r, s, err := lowS(digest, rs)
	if err != nil {
		return nil, 0, err
	}
	v, err = verify(pub, digest, &r, &s)
	if err != nil {
		return nil, 0, err
	}
	rb, sb := r.Bytes(), s.Bytes()
	return append(rb[:], sb[:]...), v, nil
}

// NormalizeLowS is Normalize for a caller that needs no recovery id.
func NormalizeLowS(pub *dsecp.PublicKey, digest, rs []byte) ([]byte, error) {
	low, _, err := Normalize(pub, digest, rs)
	return low, err
}

// verify is ECDSA verification that also yields the recovery id: the
// point R = (e/s)G + (r/s)Q must have x = r, and the parity of its y is
// the v that recovers Q from (r, s). One verification's work, where
// finding v by trial recovery would cost one to two more.
func verify(pub *dsecp.PublicKey, digest []byte, r, s *dsecp.ModNScalar) (byte, error) {
	var e dsecp.ModNScalar
	e.SetByteSlice(digest)
	w := new(dsecp.ModNScalar).InverseValNonConst(s)
	u1 := new(dsecp.ModNScalar).Mul2(&e, w)
	u2 := new(dsecp.ModNScalar).Mul2(r, w)
	var q, u1G, u2Q, R dsecp.JacobianPoint
	pub.AsJacobian(&q)
	dsecp.ScalarBaseMultNonConst(u1, &u1G)
	dsecp.ScalarMultNonConst(u2, &q, &u2Q)
	dsecp.AddNonConst(&u1G, &u2Q, &R)
	if (R.X.IsZero() && R.Y.IsZero()) || R.Z.IsZero() {
		return 0, ErrBadSignature
	}
	R.ToAffine()
	xb := R.X.Bytes()
	var x dsecp.ModNScalar
	if overflow := x.SetBytes(xb); !x.Equals(r) {
		return 0, ErrBadSignature
	} else if overflow != 0 {
		// R.x is at least the group order (odds about 2^-127): recovery
		// ids 2 and 3, which v in {0, 1} cannot carry.
		return 0, fmt.Errorf("%w: its recovery id is 2 or 3, which r||s||v cannot carry", ErrBadSignature)
	}
	if R.Y.IsOdd() {
		return 1, nil
	}
	return 0, nil
}

func lowS(digest, rs []byte) (r, s dsecp.ModNScalar, err error) {
	if len(digest) != DigestSize {
		return r, s, fmt.Errorf("keys/secp256k1: digest is %d bytes, want %d", len(digest), DigestSize)
	}
	if len(rs) != 64 {
		return r, s, fmt.Errorf("%w: r||s is %d bytes, want 64", ErrBadSignature, len(rs))
	}
	if r.SetByteSlice(rs[:32]) || s.SetByteSlice(rs[32:]) || r.IsZero() || s.IsZero() {
		return r, s, fmt.Errorf("%w: r or s is zero or not below the group order", ErrBadSignature)
	}
	if s.IsOverHalfOrder() {
		s.Negate()
	}
	return r, s, nil
}

// ParseDER decodes an ASN.1 DER ECDSA-Sig-Value (what AWS KMS and many
// tokens answer) into r||s, 32 bytes each, s as it came.
func ParseDER(der []byte) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 {
		return nil, fmt.Errorf("%w: not a DER ECDSA signature", ErrBadSignature)
	}
	if sig.R.Sign() <= 0 || sig.S.Sign() <= 0 || sig.R.BitLen() > 256 || sig.S.BitLen() > 256 {
		return nil, fmt.Errorf("%w: r or s out of range", ErrBadSignature)
	}
	out := make([]byte, 64)
	sig.R.FillBytes(out[:32])
	sig.S.FillBytes(out[32:])
	return out, nil
}

// oidSecp256k1 is the named curve secp256k1 (SEC 2), in an EC public key's
// algorithm parameters.
var oidSecp256k1 = asn1.ObjectIdentifier{1, 3, 132, 0, 10}

// ParseSPKI decodes a DER SubjectPublicKeyInfo holding a secp256k1 point
// (what AWS KMS GetPublicKey answers for ECC_SECG_P256K1). crypto/x509 does
// not know the curve, so the structure is read here.
func ParseSPKI(der []byte) (*dsecp.PublicKey, error) {
	var spki struct {
		Algorithm struct {
			Algorithm  asn1.ObjectIdentifier
			Parameters asn1.ObjectIdentifier
		}
		PublicKey asn1.BitString
	}
	rest, err := asn1.Unmarshal(der, &spki)
	if err != nil || len(rest) != 0 {
		return nil, errors.New("not a DER SubjectPublicKeyInfo of an EC key")
	}
	if !spki.Algorithm.Parameters.Equal(oidSecp256k1) {
		return nil, fmt.Errorf("the EC key's curve is %v, not secp256k1 (%v)", spki.Algorithm.Parameters, oidSecp256k1)
	}
	return dsecp.ParsePubKey(spki.PublicKey.Bytes)
}

// MarshalSPKI encodes pub as a DER SubjectPublicKeyInfo (id-ecPublicKey,
// secp256k1, uncompressed point): what ParseSPKI reads.
func MarshalSPKI(pub *dsecp.PublicKey) []byte {
	type alg struct {
		Algorithm  asn1.ObjectIdentifier
		Parameters asn1.ObjectIdentifier
	}
	der, err := asn1.Marshal(struct {
		Algorithm alg
		PublicKey asn1.BitString
	}{
		Algorithm: alg{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}, Parameters: oidSecp256k1},
		PublicKey: asn1.BitString{Bytes: pub.SerializeUncompressed(), BitLength: 65 * 8},
	})
	if err != nil {
		panic(fmt.Sprintf("keys/secp256k1: marshal SubjectPublicKeyInfo: %v", err)) // fixed shapes: cannot fail
	}
	return der
}

// Close overwrites the private key; the server calls it once it stopped
// serving.
func (k *Key) Close() error {
	k.Zero()
	return nil
}
