//go:build cgo

package pkcs11

import (
	"bytes"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/miekg/pkcs11"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/internal/ecdsasig"
)

// oidSecp256k1 is the curve a secp256k1 key's CKA_EC_PARAMS must name.
var oidSecp256k1 = asn1.ObjectIdentifier{1, 3, 132, 0, 10}

// algo is how one consensus key algorithm maps onto PKCS#11: the key type
// the object must have, the mechanism, what is signed (the message, or the
// digest CKM_ECDSA expects), and how the token's answer becomes the
// signature CometBFT verifies.
type algo struct {
	name    string
	keyType uint
	mech    []*pkcs11.Mechanism
	// deterministic: CKM_EDDSA is RFC 8032; a token's CKM_ECDSA draws its
	// own nonce (SoftHSM2 a random one), so the same bytes sign differently.
	deterministic bool
	payload       func(msg []byte) []byte
	parsePub      func(ecParams, ecPoint []byte) (crypto.PubKey, error)
	finish        func(pub crypto.PubKey, digest, sig []byte) ([]byte, error)
}

var algos = map[string]*algo{
	keys.Ed25519: {
		name: keys.Ed25519, keyType: ckkECEdwards, mech: []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)},
		deterministic: true,
		payload:       func(msg []byte) []byte { return msg },
		parsePub: func(_, point []byte) (crypto.PubKey, error) {
			return parseECPoint(point)
		},
		finish: func(_ crypto.PubKey, _, sig []byte) ([]byte, error) {
			if len(sig) != ed25519.SignatureSize {
				return nil, fmt.Errorf("the token returned a %d-byte signature, want %d", len(sig), ed25519.SignatureSize)
			}
			return sig, nil
		},
	},
	// CometBFT's secp256k1 signs the SHA-256 of the sign bytes; CKM_ECDSA
	// signs a digest given to it and answers r||s.
	keys.Secp256k1: {
		name: keys.Secp256k1, keyType: pkcs11.CKK_EC, mech: []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)},
		payload: func(msg []byte) []byte {
			d := sha256.Sum256(msg)
			return d[:]
		},
		parsePub: func(params, point []byte) (crypto.PubKey, error) {
			p, err := parseSecp256k1Point(params, point)
			if err != nil {
				return nil, err
			}
			return secp256k1.PubKey(p), nil
		},
		finish: func(_ crypto.PubKey, _, sig []byte) ([]byte, error) { return ecdsasig.LowS(sig) },
	},
	// secp256k1eth signs the Keccak-256 of the sign bytes and answers
	// r||s||v.
	keys.Secp256k1Eth: {
		name: keys.Secp256k1Eth, keyType: pkcs11.CKK_EC, mech: []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDSA, nil)},
		payload: ecdsasig.Keccak256,
		parsePub: func(params, point []byte) (crypto.PubKey, error) {
			p, err := parseSecp256k1Point(params, point)
			if err != nil {
				return nil, err
			}
			return secp256k1eth.PubKey(p), nil
		},
		finish: func(pub crypto.PubKey, digest, sig []byte) ([]byte, error) {
			return ecdsasig.WithRecoveryID(pub.Bytes(), digest, sig)
		},
	},
}

func algoFor(name string) *algo {
	if name == "" {
		return algos[keys.Ed25519]
	}
	return algos[name]
}

// parseSecp256k1Point checks that CKA_EC_PARAMS names secp256k1 and returns
// the compressed form of CKA_EC_POINT (a DER OCTET STRING holding the SEC1
// point, or the bare point some tokens return).
func parseSecp256k1Point(params, point []byte) ([]byte, error) {
	var curve asn1.ObjectIdentifier
	if rest, err := asn1.Unmarshal(params, &curve); err != nil || len(rest) > 0 || !curve.Equal(oidSecp256k1) {
		return nil, fmt.Errorf("the EC key is not on secp256k1 (CKA_EC_PARAMS %X, want the OID %v)", params, oidSecp256k1)
	}
	raw := point
	var inner []byte
	if rest, err := asn1.Unmarshal(point, &inner); err == nil && len(rest) == 0 {
		raw = inner
	}
	p, err := dsecp.ParsePubKey(bytes.Clone(raw))
	if err != nil {
		return nil, fmt.Errorf("CKA_EC_POINT is not a secp256k1 point: %w", err)
	}
	return p.SerializeCompressed(), nil
}
