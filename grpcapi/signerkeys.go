package grpcapi

import (
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// DigestSigner is a secp256k1 key on any backend: it signs a 32-byte digest
// as it is and answers r||s, 32 bytes each (s possibly high: the service
// normalises and verifies every signature with secp256k1.Normalize).
type DigestSigner interface {
	PubKey() *dsecp.PublicKey
	SignDigest(ctx context.Context, digest []byte) ([]byte, error)
	Close() error
}

// openTimeout bounds opening one backend key (token login, KMS calls).
const openTimeout = 30 * time.Second

// openedKey is a SignerKey opened with its backend: exactly one of ecdsa
// (secp256k1, secp256k1eth) and ed (ed25519) is set.
type openedKey struct {
	id        string
	algorithm string
	ecdsa     DigestSigner
	ed        keys.Signer
	// maxPayload bounds what ed signs (0: no bound): AWS KMS signs 1 to
	// 4096 bytes with Ed25519, and a longer payload is the client's
	// mistake, not a backend failure.
	maxPayload int
}

// SignerKeys are the opened keys of a SignerService, by id.
type SignerKeys struct {
	byID map[string]*openedKey
	ids  []string // sorted
}

// OpenSignerKeys opens every configured key with its backend. On error
// the keys opened so far are closed. Errors never include key material.
func OpenSignerKeys(cfg []SignerKey, log *slog.Logger) (*SignerKeys, error) {
	ks := &SignerKeys{byID: make(map[string]*openedKey, len(cfg))}
	for _, k := range cfg {
		if _, dup := ks.byID[k.ID]; dup {
			ks.Close()
			return nil, fmt.Errorf("signer service: key id %q is configured twice", k.ID)
		}
		ok, err := openSignerKey(k, log)
		if err != nil {
			ks.Close()
			return nil, fmt.Errorf("signer service: key %q (%s %s): %w", k.ID, k.Backend, k.Algorithm, err)
		}
		ks.byID[k.ID] = ok
		ks.ids = append(ks.ids, k.ID)
	}
	sort.Strings(ks.ids)
	return ks, nil
}

func openSignerKey(k SignerKey, log *slog.Logger) (*openedKey, error) {
	ctx, cancel := context.WithTimeout(context.Background(), openTimeout)
	defer cancel()
	o := &openedKey{id: k.ID, algorithm: k.Algorithm}
	ed := k.Algorithm == AlgoEd25519
	var err error
	switch k.Backend {
	case BackendFile:
		if ed {
			o.ed, err = file.Open(k.KeyFile)
		} else {
			o.ecdsa, err = secp256k1.Load(k.KeyFile)
		}
	case BackendPKCS11:
		c := k.PKCS11
		c.Logger = log.With("component", "pkcs11", "grpc_key", k.ID)
		if ed {
			o.ed, err = pkcs11.Open(ctx, c)
		} else {
			o.ecdsa, err = pkcs11.OpenSecp256k1(ctx, c)
		}
	case BackendAWSKMS:
		c := k.AWSKMS
		c.Logger = log.With("component", "awskms", "grpc_key", k.ID)
		if ed {
			o.ed, err = awskms.Open(ctx, c)
			o.maxPayload = awskms.MaxMessageSize
		} else {
			o.ecdsa, err = awskms.OpenSecp256k1(ctx, c)
		}
	default:
		err = fmt.Errorf("backend %q is unknown", k.Backend)
	}
	if err != nil {
		return nil, err
	}
	// A file holds whatever key type it holds: an Ed25519 entry reading a
	// secp256k1 or ML-DSA file would answer with the wrong scheme.
	if o.ed != nil {
		if got := keys.AlgorithmOf(o.ed.PubKey()); got != keys.Ed25519 {
			o.ed.Close()
			return nil, fmt.Errorf("the key is %s but grpc.keys[].algorithm is ed25519: point the entry at an Ed25519 key", cmp.Or(got, o.ed.PubKey().Type()))
		}
	}
	return o, nil
}

// ErrConsensusKey: a SignerService key is also a consensus key of this node.
var ErrConsensusKey = errors.New("a SignerService key must not be a validator's consensus key")

// refuseConsensusKeys fails if any opened key has the public key of one of
// consensus (raw bytes). The comparison is on public keys, not on paths,
// labels or ARNs, so the same key reached through another file, alias or
// token object is caught too.
func (ks *SignerKeys) refuseConsensusKeys(consensus [][]byte) error {
	for _, id := range ks.ids {
		pub := ks.byID[id].pubKey()
		for _, c := range consensus {
			if bytes.Equal(pub, c) {
				return fmt.Errorf("signer service: key %q: %w: the SignerService signs any payload its clients send, "+
					"with no double-sign protection, so it could sign conflicting votes and get the validator tombstoned; "+
					"give the SignerService a key of its own", id, ErrConsensusKey)
			}
		}
	}
	return nil
}

// get is the key named id, or nil.
func (ks *SignerKeys) get(id string) *openedKey { return ks.byID[id] }

// Close closes every key, reporting nothing: it runs while stopping.
func (ks *SignerKeys) Close() {
	for _, k := range ks.byID {
		if k.ecdsa != nil {
			_ = k.ecdsa.Close()
		}
		if k.ed != nil {
			_ = k.ed.Close()
		}
	}
}

// pubKey is the key's public key as the SignerService answers it: 33-byte
// compressed for secp256k1, 32 bytes for Ed25519.
func (k *openedKey) pubKey() []byte {
	if k.ecdsa != nil {
		return k.ecdsa.PubKey().SerializeCompressed()
	}
	return k.ed.PubKey().Bytes()
}

// errPayload marks a payload the key's scheme cannot sign (InvalidArgument).
var errPayload = errors.New("invalid payload")

// signPayload signs as cosmos/kms v0.1.0 does for the key's scheme.
func (k *openedKey) signPayload(ctx context.Context, payload []byte) ([]byte, error) {
	switch k.algorithm {
	case AlgoEd25519:
		if k.maxPayload > 0 && (len(payload) == 0 || len(payload) > k.maxPayload) {
			return nil, fmt.Errorf("%w: this ED25519 key is in AWS KMS, which signs payloads of 1 to %d bytes, got %d",
				errPayload, k.maxPayload, len(payload))
		}
		return k.ed.Sign(ctx, payload)
	case AlgoSecp256k1:
		digest := sha256.Sum256(payload)
		raw, err := k.ecdsa.SignDigest(ctx, digest[:])
		if err != nil {
			return nil, err
		}
		return secp256k1.NormalizeLowS(k.ecdsa.PubKey(), digest[:], raw)
	case AlgoSecp256k1Eth:
		if len(payload) != secp256k1.DigestSize {
			return nil, fmt.Errorf("%w: ECDSA_SECP256K1ETH signs a 32-byte digest (e.g. the Keccak-256 of the message), got %d bytes",
				errPayload, len(payload))
		}
		low, v, err := k.signDigest(ctx, payload)
		if err != nil {
			return nil, err
		}
		return append(low, v), nil
	}
	return nil, fmt.Errorf("algorithm %q has no signing rule", k.algorithm)
}

// signDigest signs digest with the ECDSA key and answers the verified,
// low-S r||s and its recovery id.
func (k *openedKey) signDigest(ctx context.Context, digest []byte) (rs []byte, v byte, err error) {
	raw, err := k.ecdsa.SignDigest(ctx, digest)
	if err != nil {
		return nil, 0, err
	}
	return secp256k1.Normalize(k.ecdsa.PubKey(), digest, raw)
}
