// Package keys defines Signer, the one interface every consensus key
// backend implements. The backends are its sub-packages: keys/file (a
// priv_validator_key.json in process memory), keys/pkcs11 (a key on a
// PKCS#11 token or HSM) and keys/awskms (a key in AWS KMS); each validates
// its own configuration. keys/secp256k1 is not a consensus key: it holds
// the SignerService's secp256k1 keys.
package keys

import (
	"context"

	"github.com/cometbft/cometbft/crypto"
)

// Signer is a consensus key. Sign must be deterministic for Ed25519 (RFC
// 8032): the cluster stores sign bytes, not signatures, and relies on a new
// leader producing the same signature for the same bytes.
type Signer interface {
	// PubKey is the key's public half, as the validator knows it.
	PubKey() crypto.PubKey
	// Sign signs msg. It must honour ctx so a hung backend cannot hold a
	// chain's lock forever.
	Sign(ctx context.Context, msg []byte) ([]byte, error)
	// Close releases the backend's resources.
	Close() error
}
