package kmstest

import (
	"crypto/sha256"
	"fmt"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// spkiDER is a public key already encoded as a SubjectPublicKeyInfo, for
// curves crypto/x509 cannot marshal.
type spkiDER []byte

// AddSecp256k1Key adds an enabled ECC_SECG_P256K1 SIGN_VERIFY key, as `aws
// kms create-key --key-spec ECC_SECG_P256K1 --key-usage SIGN_VERIFY` makes,
// and returns its key id and public key. It signs as AWS KMS does with
// ECDSA_SHA_256: a random nonce (two signatures over one message differ),
// a DER signature, and s left in whichever half of the group order it
// fell (no low-S normalisation).
func (s *Server) AddSecp256k1Key(alias string) (keyID string, pub *dsecp.PublicKey) {
	return s.addSecp256k1Key(KeyOptions{Alias: alias, Spec: SpecSecp256k1})
}

func (s *Server) addSecp256k1Key(opts KeyOptions) (string, *dsecp.PublicKey) {
	priv, err := dsecp.GeneratePrivateKey()
	if err != nil {
		s.t.Fatalf("kmstest: generate secp256k1 key: %v", err)
	}
	pub := priv.PubKey()
	return s.addKey(opts, spkiDER(secp256k1.MarshalSPKI(pub)), secp256k1Signer(priv)), pub
}

func secp256k1Signer(priv *dsecp.PrivateKey) func([]byte, string, string) ([]byte, error) {
	return func(msg []byte, msgType, _ string) ([]byte, error) {
		digest := msg
		switch msgType {
		case "RAW":
			d := sha256.Sum256(msg)
			digest = d[:]
		case "DIGEST":
			if len(msg) != sha256.Size {
				return nil, fmt.Errorf("digest has %d bytes, want %d", len(msg), sha256.Size)
			}
		default:
			return nil, fmt.Errorf("MessageType %s is not valid with ECDSA_SHA_256", msgType)
		}
		return signRandomNonce(priv, digest)
	}
}

// signRandomNonce is textbook ECDSA with a fresh random nonce: r = (kG).x
// mod n, s = k^-1 (e + r d) mod n, DER-encoded.
func signRandomNonce(priv *dsecp.PrivateKey, digest []byte) ([]byte, error) {
	var e dsecp.ModNScalar
	e.SetByteSlice(digest)
	for {
		nonce, err := dsecp.GeneratePrivateKey()
		if err != nil {
			return nil, err
		}
		k := nonce.Key
		var R dsecp.JacobianPoint
		dsecp.ScalarBaseMultNonConst(&k, &R)
		R.ToAffine()
		var r dsecp.ModNScalar
		xb := R.X.Bytes()
		r.SetByteSlice(xb[:])
		if r.IsZero() {
			continue
		}
		var s dsecp.ModNScalar
		s.Mul2(&r, &priv.Key).Add(&e)
		kinv := new(dsecp.ModNScalar).InverseValNonConst(&k)
		s.Mul(kinv)
		if s.IsZero() {
			continue
		}
		return derSignature(&r, &s), nil
	}
}

func derSignature(r, s *dsecp.ModNScalar) []byte {
	rb, sb := r.Bytes(), s.Bytes()
	enc := func(b []byte) []byte {
		for len(b) > 1 && b[0] == 0 && b[1] < 0x80 {
			b = b[1:]
		}
		if b[0] >= 0x80 {
			b = append([]byte{0}, b...)
		}
		return append([]byte{0x02, byte(len(b))}, b...)
	}
	body := append(enc(rb[:]), enc(sb[:])...)
	return append([]byte{0x30, byte(len(body))}, body...)
}
