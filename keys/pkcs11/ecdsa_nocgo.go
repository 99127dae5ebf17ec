//go:build !cgo

package pkcs11

import (
	"context"
	"fmt"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
)

// Secp256k1Key is never returned by OpenSecp256k1 in a binary built
// without cgo.
type Secp256k1Key struct{}

// OpenSecp256k1 validates the configuration and fails with ErrNotBuilt.
func OpenSecp256k1(_ context.Context, cfg Config) (*Secp256k1Key, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w (module %s)", ErrNotBuilt, cfg.Module)
}

// PubKey is nil.
func (*Secp256k1Key) PubKey() *dsecp.PublicKey { return nil }

// SignDigest fails with ErrNotBuilt.
func (*Secp256k1Key) SignDigest(context.Context, []byte) ([]byte, error) { return nil, ErrNotBuilt }

// Close does nothing.
func (*Secp256k1Key) Close() error { return nil }
