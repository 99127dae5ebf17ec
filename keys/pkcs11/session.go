//go:build cgo

package pkcs11

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// poolSize bounds the sessions a Key keeps open and, more importantly, the
// C calls it has in flight: a call that hangs keeps its slot until the
// token answers, so a wedged HSM strands at most poolSize goroutines (and
// OS threads) instead of one per request.
const poolSize = 4

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
