package kmstest

import (
	"crypto/rand"
	"encoding/asn1"
	"fmt"

	"github.com/cloudflare/circl/sign/mldsa/mldsa65"
)

// SpecMLDSA65 is AWS KMS's key spec for ML-DSA-65 keys, signed with
// ML_DSA_SHAKE_256.
const SpecMLDSA65 = "ML_DSA_65"

// oidMLDSA65 is id-ml-dsa-65 (FIPS 204), the SubjectPublicKeyInfo algorithm
// GetPublicKey names for such a key (no parameters).
var oidMLDSA65 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 3, 18}

// AddMLDSA65Key creates an enabled ML_DSA_65 SIGN_VERIFY key (optionally
// under alias) and returns its id and its raw 1952-byte public key. It signs
// RAW messages of up to 4096 bytes in FIPS 204's hedged mode, with an empty
// context: every signature over the same message differs, which is what a
// client must assume of AWS KMS, and each verifies as pure ML-DSA-65.
func (s *Server) AddMLDSA65Key(alias string) (keyID string, pub []byte) {
	pk, sk, err := mldsa65.GenerateKey(rand.Reader)
	if err != nil {
		s.t.Fatalf("kmstest: generate ML-DSA-65 key: %v", err)
	}
	pub = pk.Bytes()
	der, err := asn1.Marshal(struct {
		Algorithm struct{ Algorithm asn1.ObjectIdentifier }
		PublicKey asn1.BitString
	}{
		Algorithm: struct{ Algorithm asn1.ObjectIdentifier }{oidMLDSA65},
		PublicKey: asn1.BitString{Bytes: pub, BitLength: 8 * len(pub)},
	})
	if err != nil {
		s.t.Fatalf("kmstest: marshal ML-DSA-65 public key: %v", err)
	}
	sign := func(msg []byte, msgType, alg string) ([]byte, error) {
		if alg != "ML_DSA_SHAKE_256" || msgType != "RAW" {
			return nil, fmt.Errorf("MessageType %s is not valid with %s for this key (kmstest signs RAW only)", msgType, alg)
		}
		sig := make([]byte, mldsa65.SignatureSize)
		if err := mldsa65.SignTo(sk, msg, nil, true, sig); err != nil {
			return nil, err
		}
		return sig, nil
	}
	id := s.addKey(KeyOptions{Alias: alias, Spec: SpecMLDSA65}, nil, sign)
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[id]
	k.algs = []string{"ML_DSA_SHAKE_256"}
	k.pubDER = der
	return id, pub
}
