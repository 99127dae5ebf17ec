// Package keys defines Signer, the one interface every consensus key backend
// implements, so that the signer and node packages never depend on a
// backend. The backends are sub-packages: keys/file (a key file held in
// memory), keys/pkcs11 (a key on a PKCS#11 token or HSM) and keys/awskms
// (AWS KMS). keys/secp256k1 is the SignerService's key, not a consensus
// key, and does not implement Signer.
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
