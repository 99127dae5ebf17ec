// Package keys defines Signer, the one interface every consensus key
// backend implements, and the names of the consensus key algorithms. The
// backends are its sub-packages: keys/file (a priv_validator_key.json in
// process memory), keys/pkcs11 (a key on a PKCS#11 token or HSM) and
// keys/awskms (a key in AWS KMS); each validates its own configuration.
// keys/secp256k1 is not a consensus key: it holds the SignerService's
// secp256k1 keys.
package keys

import (
	"context"
	"fmt"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
)

// Signer is a consensus key.
type Signer interface {
	// PubKey is the key's public half, as the validator knows it.
	PubKey() crypto.PubKey
	// Sign signs msg in the format CometBFT verifies for the key's type.
	// It must honour ctx so a hung backend cannot hold a chain's lock
	// forever.
	Sign(ctx context.Context, msg []byte) ([]byte, error)
	// Deterministic reports whether signing the same bytes twice always
	// yields the same signature. A new leader answers a repeated request
	// by signing the reserved bytes again; for a key that is not
	// deterministic the signer keeps the released signature in the
	// replicated state instead, so a failover never releases a second,
	// different signature for one vote.
	Deterministic() bool
	// Close releases the backend's resources.
	Close() error
}

// Consensus key algorithms, as keys[].algorithm names them (the names
// cosmos/kms uses).
const (
	Ed25519      = "ed25519"
	Secp256k1    = "secp256k1"
	Secp256k1Eth = "secp256k1eth"
	MLDSA65      = "mldsa65"
)

// Algorithms lists every consensus key algorithm, in the order errors
// quote them.
var Algorithms = []string{Ed25519, Secp256k1, Secp256k1Eth, MLDSA65}

// CometType returns the CometBFT key type name (types.ABCIPubKeyType*) of
// an algorithm, and whether the algorithm is known.
func CometType(algorithm string) (string, bool) {
	switch algorithm {
	case Ed25519:
		return ed25519.KeyType, true
	case Secp256k1:
		return secp256k1.KeyType, true
	case Secp256k1Eth:
		return secp256k1eth.KeyType, true
	case MLDSA65:
		return mldsa65.KeyType, true
	}
	return "", false
}

// AlgorithmOf names the algorithm of a CometBFT public key ("" when it is
// none of Algorithms).
func AlgorithmOf(pub crypto.PubKey) string {
	if pub == nil {
		return ""
	}
	for _, a := range Algorithms {
		if t, _ := CometType(a); t == pub.Type() {
			return a
		}
	}
	return ""
}

// CheckAlgorithm refuses a key whose type is not the configured algorithm:
// a validator expects the type its genesis names, and a mismatch is a
// kms.yaml or key-file mistake the operator must fix.
func CheckAlgorithm(algorithm string, pub crypto.PubKey) error {
	got := AlgorithmOf(pub)
	if got == algorithm {
		return nil
	}
	if got == "" {
		got = pub.Type()
	}
	return fmt.Errorf("the key is %s but keys[].algorithm is %s: set algorithm: %s, or point the entry at a %s key",
		got, algorithm, got, algorithm)
}
