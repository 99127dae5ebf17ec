package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
)

// OpenKey opens a kms.yaml key with its backend and checks that it is of
// the entry's algorithm.
func OpenKey(ctx context.Context, k config.Key, log *slog.Logger) (keys.Signer, error) {
	s, err := openBackend(ctx, k, log)
	if err != nil {
		return nil, err
	}
	algo := k.Algorithm
	if algo == "" {
		algo = keys.Ed25519
	}
	if err := keys.CheckAlgorithm(algo, s.PubKey()); err != nil {
		_ = s.Close()
		return nil, fmt.Errorf("%s key: %w", k.Backend, err)
	}
	return s, nil
}

func openBackend(ctx context.Context, k config.Key, log *slog.Logger) (keys.Signer, error) {
	switch k.Backend {
	case config.BackendFile:
		return file.Open(k.KeyFile)
	case config.BackendPKCS11:
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c := k.PKCS11()
		c.Logger = log.With("component", "pkcs11")
		return pkcs11.Open(ctx, c)
	case config.BackendAWSKMS:
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		c := k.AWSKMS()
		c.Logger = log.With("component", "awskms")
		return awskms.Open(ctx, c)
	}
	return nil, fmt.Errorf("backend %q is unknown", k.Backend)
}

// closeKeys closes each opened key once (several chains may share one),
// reporting failures only in the log: it runs while stopping.
func (n *Node) closeKeys() {
	seen := map[keys.Signer]bool{}
	var errs []error
	for _, k := range n.keys {
		if !seen[k] {
			seen[k] = true
			errs = append(errs, k.Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		n.log.Warn("closing keys", "err", err)
	}
}
