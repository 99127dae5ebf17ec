// Package pkcs11 is the PKCS#11 key backend: an Ed25519 consensus key that
// lives on a hardware token or HSM (SoftHSM2 in tests) and signs there with
// CKM_EDDSA. The private key never leaves the token.
//
// A validator cannot wait for a wedged HSM, and an HSM that restarts or
// fails over must not need a kms-ha restart. So every Sign is bounded by a
// timeout even though a C call cannot be interrupted, and a session or
// login the token has dropped is reopened transparently, once per call.
package pkcs11

import (
	"bytes"
	"context"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
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

// poolSize bounds the sessions a Key keeps open and, more importantly, the
// C calls it has in flight: a call that hangs keeps its slot until the
// token answers, so a wedged HSM strands at most poolSize goroutines (and
// OS threads) instead of one per request.
const poolSize = 4

// selfTestMsg is signed at Open to prove the key, its public half and the
// mechanism agree. Its first byte is a zero length prefix followed by more
// bytes, so it can never equal CometBFT sign bytes (a length-delimited
// protobuf): the self-test signature is useless to anyone who sees it.
var selfTestMsg = []byte("\x00kms-ha keys/pkcs11 self-test")

var _ keys.Signer = (*Key)(nil)

// Config selects a key on a token. Field comments give the kms.yaml name,
// which validation errors use. Relative paths are used as given; the config
// package resolves them against --home.
type Config struct {
	Module     string // module: path of the PKCS#11 library
	TokenLabel string // token_label: exactly one of token_label and slot
	Slot       *uint  // slot
	KeyLabel   string // key_label: key_label, key_id or both
	KeyID      string // key_id: hex CKA_ID
	Pin        string // pin: exactly one of pin, pin_env and pin_file
	PinEnv     string // pin_env: name of an environment variable
	PinFile    string // pin_file: trailing whitespace is trimmed
	// SignTimeout bounds each Sign together with the caller's context
	// (whichever ends first); zero means DefaultSignTimeout.
	SignTimeout time.Duration
	Logger      *slog.Logger // nil means slog.Default()
}

// String keeps the PIN out of %v and %+v.
func (c Config) String() string {
	slot := "<nil>"
	if c.Slot != nil {
		slot = fmt.Sprint(*c.Slot)
	}
	return fmt.Sprintf("{Module:%s TokenLabel:%q Slot:%s KeyLabel:%q KeyID:%q Pin:%s PinEnv:%q PinFile:%q SignTimeout:%v}",
		c.Module, c.TokenLabel, slot, c.KeyLabel, c.KeyID, redacted(c.Pin), c.PinEnv, c.PinFile, c.SignTimeout)
}

// LogValue keeps the PIN out of structured logs.
func (c Config) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("module", c.Module)}
	if c.TokenLabel != "" {
		attrs = append(attrs, slog.String("token_label", c.TokenLabel))
	}
	if c.Slot != nil {
		attrs = append(attrs, slog.Uint64("slot", uint64(*c.Slot)))
	}
	if c.KeyLabel != "" {
		attrs = append(attrs, slog.String("key_label", c.KeyLabel))
	}
	if c.KeyID != "" {
		attrs = append(attrs, slog.String("key_id", c.KeyID))
	}
	if c.Pin != "" {
		attrs = append(attrs, slog.String("pin", redacted(c.Pin)))
	}
	if c.PinEnv != "" {
		attrs = append(attrs, slog.String("pin_env", c.PinEnv))
	}
	if c.PinFile != "" {
		attrs = append(attrs, slog.String("pin_file", c.PinFile))
	}
	return slog.GroupValue(attrs...)
}

func redacted(s string) string {
	if s == "" {
		return `""`
	}
	return "[redacted]"
}

// resolvePin reads the PIN from its source. Errors name the source, never
// the value.
func (c Config) resolvePin() (string, error) {
	switch {
	case c.Pin != "":
		return c.Pin, nil
	case c.PinEnv != "":
		v, ok := os.LookupEnv(c.PinEnv)
		if !ok {
			return "", fmt.Errorf("keys/pkcs11: pin_env %q is not set in the environment", c.PinEnv)
		}
		if v == "" {
			return "", fmt.Errorf("keys/pkcs11: pin_env %q is set but empty", c.PinEnv)
		}
		return v, nil
	default:
		b, err := os.ReadFile(c.PinFile)
		if err != nil {
			return "", fmt.Errorf("keys/pkcs11: pin_file: %w", err)
		}
		// Editors and `echo` add a newline that is not part of the PIN.
		v := strings.TrimRightFunc(string(b), unicode.IsSpace)
		if v == "" {
			return "", fmt.Errorf("keys/pkcs11: pin_file %s is empty", c.PinFile)
		}
		return v, nil
	}
}

// Key is an Ed25519 key on a PKCS#11 token. It is safe for concurrent use.
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
	pub     ed25519.PubKey

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

// session is a logged-in PKCS#11 session with the key's handle in it.
// Only one goroutine uses a session at a time: it is either in Key.idle or
// owned by the one call that took it out.
type session struct {
	h   pkcs11.SessionHandle
	key pkcs11.ObjectHandle
}

// callHook is a test seam run before each operation on a session; it can
// block (a hung HSM) or fail (a dropped session).
type callHook func(op string, h pkcs11.SessionHandle) error

type opFunc func(c *pkcs11.Ctx, s *session) error

// Open loads the module, finds the token and key, reads the public key and
// checks a self-test signature against it. ctx bounds the token calls
// (each also by SignTimeout); loading the library itself cannot be
// bounded.
func Open(ctx context.Context, cfg Config) (*Key, error) {
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
	}
	if cfg.Slot != nil {
		slot := *cfg.Slot
		k.fixedSlot = &slot
	}
	if err := k.init(ctx); err != nil {
		_ = k.Close()
		return nil, fmt.Errorf("keys/pkcs11: %s: %w", k.desc, err)
	}
	return k, nil
}

func tokenAttrs(cfg Config) []any {
	if cfg.Slot != nil {
		return []any{"module", cfg.Module, "slot", *cfg.Slot}
	}
	return []any{"module", cfg.Module, "token_label", cfg.TokenLabel}
}

func tokenDesc(cfg Config) string {
	if cfg.TokenLabel != "" {
		return fmt.Sprintf("token %q", cfg.TokenLabel)
	}
	if cfg.Slot != nil {
		return fmt.Sprintf("slot %d", *cfg.Slot)
	}
	return "token"
}

func (k *Key) init(ctx context.Context) error {
	var pub ed25519.PubKey
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
			return fmt.Errorf("self-test signature: the token does not offer CKM_EDDSA: %w", err)
		}
		return fmt.Errorf("self-test signature: %w", err)
	}
	if !pub.VerifySignature(selfTestMsg, sig) {
		return fmt.Errorf("self-test signature does not verify against the public key %X: the public key object found for %s belongs to another key pair",
			[]byte(pub), k.keyDesc())
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
	return sig, nil
}

var eddsa = []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmEdDSA, nil)}

func (k *Key) sign(ctx context.Context, op string, msg []byte) ([]byte, error) {
	// The C call may outlive this function (timeout); it signs a private
	// copy so a caller reusing its buffer cannot change the bytes under it.
	m := bytes.Clone(msg)
	var sig []byte
	err := k.do(ctx, op, func(c *pkcs11.Ctx, s *session) error {
		if err := c.SignInit(s.h, eddsa, s.key); err != nil {
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
	if len(sig) != ed25519.SignatureSize {
		return nil, fmt.Errorf("the token returned a %d-byte signature, want %d", len(sig), ed25519.SignatureSize)
	}
	return sig, nil
}

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

// do runs fn on a session in its own goroutine and waits for it at most
// until ctx (bounded by the sign timeout) ends. A call abandoned that way
// keeps its session and its semaphore slot until the token answers; its
// session is then closed rather than reused, since a token that hung once
// may have left it in any state.
func (k *Key) do(ctx context.Context, op string, fn opFunc) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	if err := ctx.Err(); err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	budget := deadline.Sub(start).Round(time.Millisecond)
	select {
	case k.sem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("all %d token sessions stayed busy for %v (is the HSM answering?): %w",
			poolSize, budget, ctx.Err())
	}
	k.mu.Lock()
	if k.closed {
		k.mu.Unlock()
		<-k.sem
		return errClosed
	}
	k.inflight++
	k.mu.Unlock()

	abandoned := new(atomic.Bool)
	done := make(chan error, 1)
	go func() {
		defer k.finish()
		done <- k.run(op, fn, abandoned, start)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		abandoned.Store(true)
		select {
		case err := <-done: // finished in the same instant: keep the result
			return err
		default:
		}
		return fmt.Errorf("the token did not answer within %v: %w", budget, ctx.Err())
	}
}

func (k *Key) finish() {
	k.mu.Lock()
	k.inflight--
	last := k.closed && k.inflight == 0
	k.mu.Unlock()
	<-k.sem
	if last {
		k.releaseModule()
	}
}

// run performs fn, reopening the session and retrying once when the token
// has dropped the session or the login. Retrying a signature is safe:
// Ed25519 gives the same bytes again.
func (k *Key) run(op string, fn opFunc, abandoned *atomic.Bool, start time.Time) error {
	var lostName string
	for attempt := 0; ; attempt++ {
		s, err := k.session(attempt > 0)
		if err == nil {
			err = k.call(op, fn, s)
			if err == nil {
				if attempt > 0 {
					k.log.Info("pkcs11 session reopened", "op", op, "lost", lostName)
				}
				k.put(s, op, abandoned, start)
				return nil
			}
			k.closeSession(s)
		}
		if attempt > 0 {
			k.log.Error("pkcs11 session could not be reopened", "op", op, "lost", lostName, "err", err)
			return fmt.Errorf("%s: after reopening the session (%s): %w", k.desc, lostName, err)
		}
		name, lost := lostCode(err)
		if !lost {
			return err
		}
		lostName = name
		k.log.Warn("pkcs11 session lost, reopening", "op", op, "code", name)
		// A token that dropped one session has usually dropped them all
		// (reset, failover, logout); reusing the others would only fail
		// the next callers the same way.
		k.flushIdle()
	}
}

func (k *Key) call(op string, fn opFunc, s *session) error {
	if h := k.hook.Load(); h != nil {
		if err := (*h)(op, s.h); err != nil {
			return err
		}
	}
	return fn(k.mod.ctx, s)
}

// session takes an idle session or opens one; fresh skips the idle ones
// and looks the token up again, for the retry after a loss.
func (k *Key) session(fresh bool) (*session, error) {
	if !fresh {
		k.mu.Lock()
		if n := len(k.idle); n > 0 {
			s := k.idle[n-1]
			k.idle = k.idle[:n-1]
			k.mu.Unlock()
			return s, nil
		}
		k.mu.Unlock()
	}
	return k.openSession(fresh)
}

func (k *Key) put(s *session, op string, abandoned *atomic.Bool, start time.Time) {
	if abandoned.Load() {
		k.log.Warn("pkcs11 call returned after its caller gave up; closing its session",
			"op", op, "after", time.Since(start).Round(time.Millisecond))
		k.closeSession(s)
		return
	}
	k.mu.Lock()
	if k.closed || len(k.idle) >= poolSize {
		k.mu.Unlock()
		k.closeSession(s)
		return
	}
	k.idle = append(k.idle, s)
	k.mu.Unlock()
}

func (k *Key) flushIdle() {
	k.mu.Lock()
	idle := k.idle
	k.idle = nil
	k.mu.Unlock()
	for _, s := range idle {
		k.closeSession(s)
	}
}

// closeSession ignores errors: the session is usually already gone, and
// there is nothing else to do with a session that will not close.
func (k *Key) closeSession(s *session) { _ = k.mod.ctx.CloseSession(s.h) }

func (k *Key) openSession(refreshSlot bool) (*session, error) {
	c := k.mod.ctx
	slot, err := k.resolveSlot(refreshSlot)
	if err != nil {
		return nil, err
	}
	// HSMs lock the user PIN after a few wrong tries, which would take
	// the key out of service for every node sharing it. Once the token
	// has refused the PIN, never offer it again.
	k.mu.Lock()
	pinErr := k.pinErr
	k.mu.Unlock()
	if pinErr != nil {
		return nil, fmt.Errorf("not logging in again after the token refused the PIN (fix the PIN and restart): %w", pinErr)
	}
	h, err := c.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		return nil, fmt.Errorf("open session on slot %d: %w", slot, err)
	}
	// Login state belongs to the token, not the session, so another
	// session of this process may already have logged in.
	if err := c.Login(h, pkcs11.CKU_USER, k.pin()); err != nil &&
		!errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		_ = c.CloseSession(h)
		lerr := loginError(err)
		if pinRefused(err) {
			k.mu.Lock()
			k.pinErr = lerr
			k.mu.Unlock()
			k.log.Error("pkcs11 token refused the PIN; no further login attempts", "code", ckrName(pkcs11Err(err)))
		}
		return nil, lerr
	}
	key, err := k.findPrivateKey(c, h)
	if err != nil {
		_ = c.CloseSession(h)
		return nil, err
	}
	return &session{h: h, key: key}, nil
}

func pinRefused(err error) bool {
	for _, code := range []uint{pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_LOCKED, pkcs11.CKR_PIN_EXPIRED,
		pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE} {
		if errors.Is(err, pkcs11.Error(code)) {
			return true
		}
	}
	return false
}

func pkcs11Err(err error) pkcs11.Error {
	var pe pkcs11.Error
	errors.As(err, &pe)
	return pe
}

func loginError(err error) error {
	var why string
	switch {
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)):
		why = "the token rejected the PIN"
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_LOCKED)):
		why = "the user PIN is locked; unlock it with the token's SO tools"
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_EXPIRED)):
		why = "the user PIN has expired; set a new one with the token's tools"
	case errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_PIN_NOT_INITIALIZED)):
		why = "the token has no user PIN yet; initialise it with the token's SO tools"
	default:
		return fmt.Errorf("login: %w", err)
	}
	return fmt.Errorf("login: %s: %w", why, err)
}

// resolveSlot finds the token on first use, and again by label on
// recovery: re-plugged tokens and restarted HSMs may come back in another
// slot. A configured slot is checked once, for a clear error at Open.
func (k *Key) resolveSlot(refresh bool) (uint, error) {
	k.mu.Lock()
	slot, known := k.slot, k.slotKnown
	k.mu.Unlock()
	if known && (!refresh || k.tokenLabel == "") {
		return slot, nil
	}
	tokens, err := k.listTokens()
	if err != nil {
		return 0, err
	}
	var found []uint
	for _, t := range tokens {
		if (k.tokenLabel == "" && t.slot == *k.fixedSlot) || (k.tokenLabel != "" && t.label == k.tokenLabel) {
			found = append(found, t.slot)
		}
	}
	switch {
	case len(found) == 1:
	case k.tokenLabel == "":
		return 0, fmt.Errorf("no initialised token in this slot (slot); %s", present(tokens))
	case len(found) == 0:
		return 0, fmt.Errorf("no token has this label (token_label); %s", present(tokens))
	default:
		return 0, fmt.Errorf("%d tokens have this label (slots %v); use slot instead of token_label", len(found), found)
	}
	k.mu.Lock()
	k.slot, k.slotKnown = found[0], true
	k.mu.Unlock()
	return found[0], nil
}

type tokenAt struct {
	slot  uint
	label string
}

func (k *Key) listTokens() ([]tokenAt, error) {
	c := k.mod.ctx
	slots, err := c.GetSlotList(true)
	if err != nil {
		return nil, fmt.Errorf("list slots: %w", err)
	}
	var tokens []tokenAt
	for _, s := range slots {
		ti, err := c.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			continue
		}
		tokens = append(tokens, tokenAt{slot: s, label: ti.Label})
	}
	return tokens, nil
}

func present(tokens []tokenAt) string {
	if len(tokens) == 0 {
		return "the module shows no initialised token"
	}
	parts := make([]string, len(tokens))
	for i, t := range tokens {
		parts[i] = fmt.Sprintf("%q (slot %d)", t.label, t.slot)
	}
	return "tokens present: " + strings.Join(parts, ", ")
}

func (k *Key) keyDesc() string {
	var parts []string
	if k.keyLabel != "" {
		parts = append(parts, fmt.Sprintf("key_label %q", k.keyLabel))
	}
	if len(k.keyID) > 0 {
		parts = append(parts, fmt.Sprintf("key_id %q", hex.EncodeToString(k.keyID)))
	}
	return strings.Join(parts, " and ")
}

func template(class uint, label string, id []byte) []*pkcs11.Attribute {
	t := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class)}
	if label != "" {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	if len(id) > 0 {
		t = append(t, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	return t
}

func findObjects(c *pkcs11.Ctx, h pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := c.FindObjectsInit(h, tmpl); err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	// Two is enough to tell "exactly one" from "ambiguous".
	objs, _, err := c.FindObjects(h, 2)
	if ferr := c.FindObjectsFinal(h); err == nil && ferr != nil {
		err = ferr
	}
	if err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	return objs, nil
}

func (k *Key) findPrivateKey(c *pkcs11.Ctx, h pkcs11.SessionHandle) (pkcs11.ObjectHandle, error) {
	objs, err := findObjects(c, h, template(pkcs11.CKO_PRIVATE_KEY, k.keyLabel, k.keyID))
	if err != nil {
		return 0, err
	}
	switch len(objs) {
	case 1:
		return objs[0], nil
	case 0:
		if k.keyLabel != "" && len(k.keyID) > 0 {
			byLabel, _ := findObjects(c, h, template(pkcs11.CKO_PRIVATE_KEY, k.keyLabel, nil))
			byID, _ := findObjects(c, h, template(pkcs11.CKO_PRIVATE_KEY, "", k.keyID))
			if len(byLabel) > 0 && len(byID) > 0 {
				return 0, fmt.Errorf("key_label %q and key_id %q name different private keys; they must name the same key",
					k.keyLabel, hex.EncodeToString(k.keyID))
			}
		}
		return 0, fmt.Errorf("no private key with %s on the token (or the PIN's user cannot see it)", k.keyDesc())
	default:
		return 0, fmt.Errorf("several private keys match %s; set key_id (or both) to choose one", k.keyDesc())
	}
}

func (k *Key) checkKeyType(c *pkcs11.Ctx, s *session) error {
	attrs, err := c.GetAttributeValue(s.h, s.key, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, nil)})
	if err != nil {
		return fmt.Errorf("read the key type of %s: %w", k.keyDesc(), err)
	}
	if t, ok := ulong(attrs[0].Value); !ok || t != ckkECEdwards {
		return fmt.Errorf("%s is not an Ed25519 key (CKA_KEY_TYPE 0x%X, want CKK_EC_EDWARDS 0x%X)",
			k.keyDesc(), attrs[0].Value, ckkECEdwards)
	}
	return nil
}

// readPublicKey reads CKA_EC_POINT from the public key object that goes
// with the private key (same label/id). A few HSMs store no public object
// but expose the point on the private key, so that is the fallback.
func (k *Key) readPublicKey(c *pkcs11.Ctx, s *session) (ed25519.PubKey, error) {
	objs, err := findObjects(c, s.h, template(pkcs11.CKO_PUBLIC_KEY, k.keyLabel, k.keyID))
	if err != nil {
		return nil, err
	}
	var obj pkcs11.ObjectHandle
	switch len(objs) {
	case 1:
		obj = objs[0]
	case 0:
		obj = s.key
	default:
		return nil, fmt.Errorf("several public keys match %s; set key_id (or both) to choose one", k.keyDesc())
	}
	attrs, err := c.GetAttributeValue(s.h, obj, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		if len(objs) == 0 {
			return nil, fmt.Errorf("no public key object with %s on the token, and the private key does not expose CKA_EC_POINT (%v); store the public key on the token", k.keyDesc(), err)
		}
		return nil, fmt.Errorf("read CKA_EC_POINT of %s: %w", k.keyDesc(), err)
	}
	return parseECPoint(attrs[0].Value)
}

// parseECPoint accepts CKA_EC_POINT both as the DER OCTET STRING that
// PKCS#11 3.0 specifies (SoftHSM: 04 20 || point) and as the raw 32 bytes
// some tokens return.
func parseECPoint(v []byte) (ed25519.PubKey, error) {
	if len(v) == ed25519.PubKeySize {
		return ed25519.PubKey(bytes.Clone(v)), nil
	}
	var raw []byte
	if rest, err := asn1.Unmarshal(v, &raw); err == nil && len(rest) == 0 && len(raw) == ed25519.PubKeySize {
		return ed25519.PubKey(raw), nil
	}
	return nil, fmt.Errorf("CKA_EC_POINT (%d bytes) is not a 32-byte Ed25519 public key, raw or DER-wrapped", len(v))
}

// ulong decodes a CK_ULONG attribute, whose size and byte order are the
// platform's.
func ulong(b []byte) (uint64, bool) {
	switch len(b) {
	case 8:
		return binary.NativeEndian.Uint64(b), true
	case 4:
		return uint64(binary.NativeEndian.Uint32(b)), true
	}
	return 0, false
}

// lostCodes are the errors after which a fresh session (and login, and key
// handle) may succeed. SoftHSM, for one, invalidates private object handles
// when the login ends, hence the handle codes.
var lostCodes = map[pkcs11.Error]bool{
	pkcs11.CKR_SESSION_HANDLE_INVALID: true,
	pkcs11.CKR_SESSION_CLOSED:         true,
	pkcs11.CKR_USER_NOT_LOGGED_IN:     true,
	pkcs11.CKR_DEVICE_REMOVED:         true,
	pkcs11.CKR_DEVICE_ERROR:           true,
	pkcs11.CKR_TOKEN_NOT_PRESENT:      true,
	pkcs11.CKR_TOKEN_NOT_RECOGNIZED:   true,
	pkcs11.CKR_SLOT_ID_INVALID:        true,
	pkcs11.CKR_OBJECT_HANDLE_INVALID:  true,
	pkcs11.CKR_KEY_HANDLE_INVALID:     true,
	pkcs11.CKR_OPERATION_ACTIVE:       true,
	pkcs11.CKR_GENERAL_ERROR:          true, // what network HSMs report for a dropped link
}

func lostCode(err error) (string, bool) {
	var pe pkcs11.Error
	if !errors.As(err, &pe) || !lostCodes[pe] {
		return "", false
	}
	return ckrName(pe), true
}

// ckrName is the CKR_ name of a PKCS#11 error, for logs.
func ckrName(e pkcs11.Error) string {
	msg := e.Error() // "pkcs11: 0xB3: CKR_SESSION_HANDLE_INVALID"
	if i := strings.LastIndex(msg, ": "); i >= 0 && strings.HasPrefix(msg[i+2:], "CKR_") {
		return msg[i+2:]
	}
	return fmt.Sprintf("0x%X", uint(e))
}

// module is a loaded PKCS#11 library. C_Initialize may run only once per
// process, so Keys on the same library share one.
type module struct {
	path  string
	ctx   *pkcs11.Ctx
	refs  int
	owned bool // we initialised it, so we finalise it
}

var modules = struct {
	sync.Mutex
	m map[string]*module
}{m: map[string]*module{}}

func loadModule(path string) (*module, error) {
	key := path
	if strings.ContainsRune(path, filepath.Separator) {
		key = filepath.Clean(path)
		if _, err := os.Stat(key); err != nil {
			return nil, fmt.Errorf("keys/pkcs11: module: %w", err)
		}
	}
	modules.Lock()
	defer modules.Unlock()
	if m := modules.m[key]; m != nil {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(key)
	if ctx == nil {
		return nil, fmt.Errorf("keys/pkcs11: module %s cannot be loaded: not a PKCS#11 library, or one of its dependencies is missing", path)
	}
	m := &module{path: key, ctx: ctx, refs: 1, owned: true}
	if err := ctx.Initialize(); err != nil {
		// Another user in this process (a test helper, another library)
		// initialised it; share it and leave finalising to them.
		if !errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
			ctx.Destroy()
			return nil, fmt.Errorf("keys/pkcs11: module %s: C_Initialize: %w", path, err)
		}
		m.owned = false
	}
	modules.m[key] = m
	return m, nil
}

func (m *module) release() {
	modules.Lock()
	defer modules.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(modules.m, m.path)
	if m.owned {
		_ = m.ctx.Finalize()
	}
	m.ctx.Destroy()
}
