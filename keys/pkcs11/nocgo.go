//go:build !cgo

package pkcs11

import (
	"context"
	"errors"
	"fmt"

	"github.com/cometbft/cometbft/crypto"

	"github.com/kms-ha/kms-ha/keys"
)

// Available reports whether this binary can use PKCS#11 tokens. The
// backend loads the token's library with dlopen through cgo, so a binary
// built with CGO_ENABLED=0 (the static one in the FROM scratch images of
// deploy/docker) has no PKCS#11 support at all.
const Available = false

// ErrNotBuilt is returned by Open in a binary built without cgo.
var ErrNotBuilt = errors.New("keys/pkcs11: this kms-ha binary was built without PKCS#11 support (CGO_ENABLED=0, e.g. the static FROM scratch image): " +
	"use a binary built with cgo (`CGO_ENABLED=1 go build ./cmd/kms-ha`, or the default target of deploy/docker/Dockerfile), or another key backend")

// Key is never returned by Open in a binary built without cgo.
type Key struct{}

var _ keys.Signer = (*Key)(nil)

// Open validates the configuration, so that a typo is still reported as
// such, and then fails with ErrNotBuilt.
func Open(_ context.Context, cfg Config) (*Key, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w (module %s)", ErrNotBuilt, cfg.Module)
}

// PubKey implements keys.Signer.
func (*Key) PubKey() crypto.PubKey { return nil }

// Sign implements keys.Signer.
func (*Key) Sign(context.Context, []byte) ([]byte, error) { return nil, ErrNotBuilt }

// Deterministic implements keys.Signer.
func (*Key) Deterministic() bool { return true }

// Close implements keys.Signer.
func (*Key) Close() error { return nil }
