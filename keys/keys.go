// Package keys defines the one interface every consensus key backend
// implements. Backends live in sub-packages (keys/file, later pkcs11 and
// awskms) so that a node links only what it configures.
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
