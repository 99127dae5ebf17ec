package kmstest

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"fmt"
	"math/big"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// SpecSecp256k1 is AWS KMS's key spec for secp256k1 keys, signed with
// ECDSA_SHA_256.
const SpecSecp256k1 = "ECC_SECG_P256K1"

var (
	oidECPublicKey = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidSecp256k1   = asn1.ObjectIdentifier{1, 3, 132, 0, 10}
)

// AddSecp256k1ConsensusKey creates an enabled ECC_SECG_P256K1 SIGN_VERIFY
// key (optionally under alias) and returns its id and its 33-byte
// compressed public key. It signs with ECDSA_SHA_256: a RAW message is
// hashed with SHA-256, a DIGEST must be 32 bytes and is signed as given.
// Signatures are DER, with a random nonce and S not normalised, as AWS KMS
// returns them: a client must lower S itself.
func (s *Server) AddSecp256k1ConsensusKey(alias string) (keyID string, pub []byte) {
	dk, err := secp256k1.GeneratePrivateKey()
	if err != nil {
		s.t.Fatalf("kmstest: generate secp256k1 key: %v", err)
	}
	pk := dk.PubKey()
	priv := &ecdsa.PrivateKey{PublicKey: ecdsa.PublicKey{Curve: secp256k1.S256(), X: pk.X(), Y: pk.Y()}, D: new(big.Int).SetBytes(dk.Serialize())}
	point := pk.SerializeUncompressed()
	params, _ := asn1.Marshal(oidSecp256k1)
	der, err := asn1.Marshal(struct {
		Algorithm struct {
			Algorithm  asn1.ObjectIdentifier
			Parameters asn1.RawValue
		}
		PublicKey asn1.BitString
	}{
		Algorithm: struct {
			Algorithm  asn1.ObjectIdentifier
			Parameters asn1.RawValue
		}{oidECPublicKey, asn1.RawValue{FullBytes: params}},
		PublicKey: asn1.BitString{Bytes: point, BitLength: 8 * len(point)},
	})
	if err != nil {
		s.t.Fatalf("kmstest: marshal secp256k1 public key: %v", err)
	}
	sign := func(msg []byte, msgType, alg string) ([]byte, error) {
		digest := msg
		switch {
		case alg != "ECDSA_SHA_256":
			return nil, fmt.Errorf("algorithm %s is not valid for this key", alg)
		case msgType == "RAW":
			d := sha256.Sum256(msg)
			digest = d[:]
		case msgType == "DIGEST" && len(msg) == sha256.Size:
		default:
			return nil, fmt.Errorf("MessageType %s with a %d-byte message is not valid with ECDSA_SHA_256", msgType, len(msg))
		}
		return ecdsa.SignASN1(rand.Reader, priv, digest)
	}
	id := s.addKey(KeyOptions{Alias: alias, Spec: SpecSecp256k1}, nil, sign)
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[id]
	k.algs = []string{"ECDSA_SHA_256"}
	k.pubDER = der
	return id, pk.SerializeCompressed()
}
