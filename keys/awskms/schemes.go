package awskms

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/cometbft/cometbft/crypto"
	cmted25519 "github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/internal/ecdsasig"
	ksecp "github.com/kms-ha/kms-ha/keys/secp256k1"
)

// scheme is how one consensus key algorithm maps onto AWS KMS: the key
// spec and signing algorithm to ask for, what is sent (the message or a
// digest of it), and how KMS's answer becomes the signature CometBFT
// verifies for that key type.
type scheme struct {
	algorithm   string
	spec        types.KeySpec
	signing     types.SigningAlgorithmSpec
	messageType types.MessageType
	// deterministic: whether KMS returns the same signature for the same
	// bytes. Only Ed25519 is deterministic by construction; AWS does not
	// document its ECDSA nonces (and they differ per call) nor whether its
	// ML-DSA signs hedged, so both are treated as not deterministic.
	deterministic bool
	// payload is what Sign sends for msg.
	payload func(msg []byte) ([]byte, error)
	// parsePub reads the SubjectPublicKeyInfo GetPublicKey returns.
	parsePub func(der []byte) (crypto.PubKey, error)
	// finish turns KMS's signature into CometBFT's format for pub.
	finish func(pub crypto.PubKey, digest, sig []byte) ([]byte, error)
}

func (s *scheme) createHint() string {
	return fmt.Sprintf("aws kms create-key --key-spec %s --key-usage SIGN_VERIFY", s.spec)
}

var schemes = map[string]*scheme{
	keys.Ed25519: {
		algorithm: keys.Ed25519, spec: types.KeySpecEccNistEdwards25519, signing: types.SigningAlgorithmSpecEd25519Sha512,
		messageType: types.MessageTypeRaw, deterministic: true, payload: rawMessage,
		parsePub: func(der []byte) (crypto.PubKey, error) {
			parsed, err := x509.ParsePKIXPublicKey(der)
			if err != nil {
				return nil, err
			}
			pub, ok := parsed.(ed25519.PublicKey)
			if !ok || len(pub) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("a %T public key, not Ed25519", parsed)
			}
			return cmted25519.PubKey(pub), nil
		},
		finish: func(_ crypto.PubKey, _, sig []byte) ([]byte, error) { return sig, nil },
	},
	// CometBFT's secp256k1 signs SHA-256 of the sign bytes: KMS's
	// ECDSA_SHA_256 over the digest, sent as DIGEST so that no message size
	// limit applies.
	keys.Secp256k1: {
		algorithm: keys.Secp256k1, spec: types.KeySpecEccSecgP256k1, signing: types.SigningAlgorithmSpecEcdsaSha256,
		messageType: types.MessageTypeDigest,
		payload: func(msg []byte) ([]byte, error) {
			d := sha256.Sum256(msg)
			return d[:], nil
		},
		parsePub: func(der []byte) (crypto.PubKey, error) {
			p, err := ksecp.ParseSPKI(der)
			if err != nil {
				return nil, err
			}
			return secp256k1.PubKey(p.SerializeCompressed()), nil
		},
		finish: func(_ crypto.PubKey, _, sig []byte) ([]byte, error) { return ecdsasig.FromDER(sig) },
	},
	// secp256k1eth signs the Keccak-256 of the sign bytes, which KMS takes
	// as a pre-hashed DIGEST; the recovery id v is found by recovering the
	// key from r||s.
	keys.Secp256k1Eth: {
		algorithm: keys.Secp256k1Eth, spec: types.KeySpecEccSecgP256k1, signing: types.SigningAlgorithmSpecEcdsaSha256,
		messageType: types.MessageTypeDigest,
		payload:     func(msg []byte) ([]byte, error) { return ecdsasig.Keccak256(msg), nil },
		parsePub: func(der []byte) (crypto.PubKey, error) {
			p, err := ksecp.ParseSPKI(der)
			if err != nil {
				return nil, err
			}
			return secp256k1eth.PubKey(p.SerializeCompressed()), nil
		},
		finish: func(pub crypto.PubKey, digest, sig []byte) ([]byte, error) {
			rs, err := ecdsasig.FromDER(sig)
			if err != nil {
				return nil, err
			}
			return ecdsasig.WithRecoveryID(pub.Bytes(), digest, rs)
		},
	},
	keys.MLDSA65: {
		algorithm: keys.MLDSA65, spec: types.KeySpecMlDsa65, signing: types.SigningAlgorithmSpecMlDsaShake256,
		messageType: types.MessageTypeRaw, payload: rawMessage,
		parsePub: func(der []byte) (crypto.PubKey, error) {
			raw, err := spkiKey(der, oidMLDSA65)
			if err != nil {
				return nil, err
			}
			return mldsa65.NewPubKeyFromBytes(raw)
		},
		finish: func(_ crypto.PubKey, _, sig []byte) ([]byte, error) { return sig, nil },
	},
}

func rawMessage(msg []byte) ([]byte, error) {
	if len(msg) == 0 || len(msg) > MaxMessageSize {
		return nil, fmt.Errorf("cannot sign a %d-byte message: AWS KMS signs 1 to %d bytes as RAW", len(msg), MaxMessageSize)
	}
	return msg, nil
}

// oidMLDSA65 is id-ml-dsa-65 (FIPS 204, RFC 9881): the SPKI has no
// parameters.
var oidMLDSA65 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 18}

// spkiKey returns the key bits of a SubjectPublicKeyInfo whose algorithm
// is alg. Go's x509 does not know ML-DSA.
func spkiKey(der []byte, alg asn1.ObjectIdentifier) ([]byte, error) {
	var spki struct {
		Algorithm struct {
			Algorithm  asn1.ObjectIdentifier
			Parameters asn1.RawValue `asn1:"optional"`
		}
		PublicKey asn1.BitString
	}
	rest, err := asn1.Unmarshal(der, &spki)
	if err != nil || len(rest) > 0 {
		return nil, errors.New("not a valid SubjectPublicKeyInfo")
	}
	if !spki.Algorithm.Algorithm.Equal(alg) {
		return nil, fmt.Errorf("a public key of algorithm %v, want %v", spki.Algorithm.Algorithm, alg)
	}
	return spki.PublicKey.RightAlign(), nil
}
