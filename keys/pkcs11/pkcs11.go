//go:build cgo

// Package pkcs11 is the PKCS#11 key backend: a consensus key that lives on
// a hardware token or HSM (SoftHSM2 in tests) and signs there, Ed25519 with
// CKM_EDDSA, secp256k1 and secp256k1eth with CKM_ECDSA (algo.go). The
// private key never leaves the token.
//
// A validator cannot wait for a wedged HSM, and an HSM that restarts or
// fails over must not need a kms-ha restart. So every Sign is bounded by a
// timeout even though a C call cannot be interrupted, and a session or
// login the token has dropped is reopened transparently, once per call.
//
// Where things are: pkcs11.go is the Key (Open, the self-test, Sign,
// Close); config.go the kms.yaml fields, their validation and the PIN
// sources; session.go the session pool and the bounded, retried-once token
// calls; token.go finding the slot, the key objects and the public key;
// module.go loading and sharing the PKCS#11 library; ecdsa.go the
// SignerService's secp256k1 keys (CKM_ECDSA), on the same sessions.
package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/miekg/pkcs11"

	"github.com/kms-ha/kms-ha/keys"
)

// PKCS#11 3.0 identifiers that miekg/pkcs11 v1.1.2 predates.
const (
	ckkECEdwards = 0x00000040 // CKK_EC_EDWARDS
	ckmEdDSA     = 0x00001057 // CKM_EDDSA
)

// DefaultSignTimeout bounds a Sign when Config.SignTimeout is zero. It sits
// under the validator's 5 s privval deadline only together with the
// caller's own context; kms-ha passes a tighter one on the sign path.
const DefaultSignTimeout = 5 * time.Second

// selfTestMsg is signed at Open to prove the key, its public half and the
// mechanism agree. Its first byte is a zero length prefix followed by more
// bytes, so it can never equal CometBFT sign bytes (a length-delimited
// protobuf): the self-test signature is useless to anyone who sees it.
var selfTestMsg = []byte("\x00kms-ha keys/pkcs11 self-test")

var _ keys.Signer = (*Key)(nil)

// Key is a consensus key on a PKCS#11 token. It is safe for concurrent use.
type Key struct {
	mod        *module
	desc       string // token "x" or slot n, for errors
	tokenLabel string
	fixedSlot  *uint
	keyLabel   string
	keyID      []byte
	// A closure rather than a string field so that printing a Key with
	// %+v, or a debugger's struct dump, shows no PIN.
	pin     func() string
	timeout time.Duration
	log     *slog.Logger
	algo    *algo
	pub     crypto.PubKey

	sem  chan struct{} // one token per C call in flight
	hook atomic.Pointer[callHook]

	mu        sync.Mutex
	slot      uint
	slotKnown bool
	pinErr    error // latched: see openSession
	idle      []*session
	inflight  int
	closed    bool
	release   sync.Once
}

// Open loads the module, finds the token and key, reads the public key and
// checks a self-test signature against it. ctx bounds the token calls
// (each also by SignTimeout); loading the library itself cannot be
// bounded.
func Open(ctx context.Context, cfg Config) (*Key, error) {
	k, err := newKey(cfg)
	if err != nil {
		return nil, err
	}
	if err := k.init(ctx); err != nil {
		_ = k.Close()
		return nil, fmt.Errorf("keys/pkcs11: %s: %w", k.desc, err)
	}
	return k, nil
}

// newKey loads the module for cfg; no token call yet.
func newKey(cfg Config) (*Key, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pin, err := cfg.resolvePin()
	if err != nil {
		return nil, err
	}
	keyID, _ := decodeKeyID(cfg.KeyID)
	timeout := cfg.SignTimeout
	if timeout == 0 {
		timeout = DefaultSignTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	mod, err := loadModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	k := &Key{
		mod:        mod,
		desc:       tokenDesc(cfg),
		tokenLabel: cfg.TokenLabel,
		keyLabel:   cfg.KeyLabel,
		keyID:      keyID,
		pin:        func() string { return pin },
		timeout:    timeout,
		log:        log.With(tokenAttrs(cfg)...),
		sem:        make(chan struct{}, poolSize),
		algo:       algoFor(cfg.Algorithm),
	}
	if cfg.Slot != nil {
		slot := *cfg.Slot
		k.fixedSlot = &slot
	}
	return k, nil
}

func (k *Key) init(ctx context.Context) error {
	var pub crypto.PubKey
	err := k.do(ctx, "open", func(c *pkcs11.Ctx, s *session) error {
		if err := k.checkKeyType(c, s); err != nil {
			return err
		}
		p, err := k.readPublicKey(c, s)
		pub = p
		return err
	})
	if err != nil {
		return err
	}
	k.pub = pub
	sig, err := k.sign(ctx, "self-test", selfTestMsg)
	if err != nil {
		if errors.Is(err, pkcs11.Error(pkcs11.CKR_MECHANISM_INVALID)) {
			return fmt.Errorf("self-test signature: the token does not offer the mechanism for %s (CKM_EDDSA or CKM_ECDSA): %w", k.algo.name, err)
		}
		return fmt.Errorf("self-test signature: %w", err)
	}
	if !pub.VerifySignature(selfTestMsg, sig) {
		return fmt.Errorf("self-test signature does not verify against the public key %X: the public key object found for %s belongs to another key pair",
			pub.Bytes(), k.keyDesc())
	}
	return nil
}

// PubKey implements keys.Signer.
func (k *Key) PubKey() crypto.PubKey { return k.pub }

// Sign implements keys.Signer. It returns within the earlier of ctx's
// deadline and SignTimeout even if the token does not answer.
func (k *Key) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	sig, err := k.sign(ctx, "sign", msg)
	if err != nil {
		return nil, fmt.Errorf("keys/pkcs11: sign: %w", err)
	}
	// A token that answers a wrong signature must not get it to the
	// validator, nor, for a key that is not deterministic, into the
	// replicated state, where it would be returned on every retry.
	if !k.pub.VerifySignature(msg, sig) {
		return nil, fmt.Errorf("keys/pkcs11: sign: %w", ErrBadSignature)
	}
	return sig, nil
}

// ErrBadSignature: the token answered a signature that does not verify
// against the key's public key. It is never passed on.
var ErrBadSignature = errors.New("the token returned a signature that does not verify against the key's public key; refusing it")

func (k *Key) sign(ctx context.Context, op string, msg []byte) ([]byte, error) {
	// The C call may outlive this function (timeout); it signs a private
	// copy so a caller reusing its buffer cannot change the bytes under it.
	m := k.algo.payload(bytes.Clone(msg))
	var sig []byte
	err := k.do(ctx, op, func(c *pkcs11.Ctx, s *session) error {
		if err := c.SignInit(s.h, k.algo.mech, s.key); err != nil {
			return err
		}
		out, err := c.Sign(s.h, m)
		if err != nil {
			return err
		}
		sig = out
		return nil
	})
	if err != nil {
		return nil, err
	}
	return k.algo.finish(k.pub, m, sig)
}

// Deterministic implements keys.Signer: CKM_EDDSA is Ed25519 (RFC 8032),
// deterministic by construction; CKM_ECDSA is not.
func (k *Key) Deterministic() bool { return k.algo.deterministic }

// Close implements keys.Signer. Calls still stuck in the token finish in
// the background; the module is released after the last of them.
func (k *Key) Close() error {
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		return nil
	}
	k.closed = true
	idle := k.idle
	k.idle = nil
	last := k.inflight == 0
	k.mu.Unlock()
	for _, s := range idle {
		_ = k.mod.ctx.CloseSession(s.h)
	}
	if last {
		k.releaseModule()
	}
	return nil
}

func (k *Key) releaseModule() { k.release.Do(k.mod.release) }

var errClosed = errors.New("the key is closed")
