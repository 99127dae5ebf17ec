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
// into the canonical form the SignerService answers: s moved to the lower
// half of the group order, and the recovery id v (0 or 1) found by
// recovering pub. A signature that does not verify against pub is
// ErrBadSignature: a faulty backend must not get a wrong signature out.
func Normalize(pub *dsecp.PublicKey, digest, rs []byte) (low []byte, v byte, err error) {
	if len(digest) != DigestSize {
		return nil, 0, fmt.Errorf("keys/secp256k1: digest is %d bytes, want %d", len(digest), DigestSize)
	}
	if len(rs) != 64 {
		return nil, 0, fmt.Errorf("%w: r||s is %d bytes, want 64", ErrBadSignature, len(rs))
	}
	var r, s dsecp.ModNScalar
	if r.SetByteSlice(rs[:32]) || s.SetByteSlice(rs[32:]) || r.IsZero() || s.IsZero() {
		return nil, 0, fmt.Errorf("%w: r or s is zero or not below the group order", ErrBadSignature)
	}
	if s.IsOverHalfOrder() {
		s.Negate()
	}
	if !ecdsa.NewSignature(&r, &s).Verify(digest, pub) {
		return nil, 0, ErrBadSignature
	}
	rb, sb := r.Bytes(), s.Bytes()
	compact := make([]byte, 65)
	copy(compact[1:33], rb[:])
	copy(compact[33:], sb[:])
	for id := byte(0); id <= 1; id++ {
		compact[0] = 27 + id
		got, _, err := ecdsa.RecoverCompact(compact, digest)
		if err == nil && got.IsEqual(pub) {
			return compact[1:], id, nil
		}
	}
	// Recovery ids 2 and 3 (r overflowed the group order; odds about
	// 2^-127) cannot be carried by v in {0, 1}.
	return nil, 0, errors.New("keys/secp256k1: the signature's recovery id is 2 or 3, which r||s||v cannot carry")
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
