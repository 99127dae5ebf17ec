//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
	"github.com/miekg/pkcs11"
)

func TestConcurrentSign(t *testing.T) {
	tk := newToken(t, "concurrent")
	k := open(t, tk.config(t))
	const workers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				msg := fmt.Appendf(nil, "worker %d msg %d", w, i)
				sig, err := k.Sign(context.Background(), msg)
				if err != nil {
					errs <- err
					return
				}
				if !tk.pub.VerifySignature(msg, sig) {
					errs <- fmt.Errorf("bad signature for %q", msg)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	k.mu.Lock()
	idle := len(k.idle)
	k.mu.Unlock()
	if idle == 0 || idle > poolSize {
		t.Fatalf("%d idle sessions after the run, want 1..%d", idle, poolSize)
	}
}

// warmPool makes the Key hold several idle sessions, so that recovery has
// to cope with more than the one session it happens to pick.
func warmPool(t *testing.T, k *Key) {
	t.Helper()
	var wg sync.WaitGroup
	for range poolSize * 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = k.Sign(context.Background(), []byte("warm"))
		}()
	}
	wg.Wait()
}

func TestRecoversFromDroppedSessions(t *testing.T) {
	tk := newToken(t, "dropped")
	cfg := tk.config(t)
	log, sink := newLogger(t)
	cfg.Logger = log
	k := open(t, cfg)
	warmPool(t, k)
	want := mustSign(t, k, []byte("before"))

	for round := range 3 {
		pkcs11test.DropSessions(t, tk.module, tk.label)
		if got := mustSign(t, k, []byte("before")); !bytes.Equal(got, want) {
			t.Fatalf("round %d: signature changed across recovery", round)
		}
		// The pool was flushed; the next calls must not trip on the
		// other dead sessions.
		for range poolSize {
			mustSign(t, k, []byte("after"))
		}
	}
	out := sink.String()
	if n := strings.Count(out, "pkcs11 session lost, reopening"); n != 3 {
		t.Fatalf("%d recovery log lines, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "code=CKR_SESSION_HANDLE_INVALID") {
		t.Fatalf("log does not name the error code:\n%s", out)
	}
}

func TestRecoversFromLogout(t *testing.T) {
	tk := newToken(t, "logout")
	cfg := tk.config(t)
	log, sink := newLogger(t)
	cfg.Logger = log
	k := open(t, cfg)
	warmPool(t, k)
	pkcs11test.Logout(t, tk.module, tk.label)
	mustSign(t, k, []byte("after logout"))
	// SoftHSM drops private object handles at logout, so the code is
	// CKR_OBJECT_HANDLE_INVALID there; other tokens say
	// CKR_USER_NOT_LOGGED_IN. Either must lead to a new login.
	out := sink.String()
	if !strings.Contains(out, `msg="pkcs11 session lost, reopening"`) ||
		!strings.Contains(out, `msg="pkcs11 session reopened"`) {
		t.Fatalf("no recovery logged:\n%s", out)
	}
	if !strings.Contains(out, "code=CKR_OBJECT_HANDLE_INVALID") && !strings.Contains(out, "code=CKR_USER_NOT_LOGGED_IN") {
		t.Fatalf("recovery log does not name the code:\n%s", out)
	}
}

func setHook(k *Key, h callHook) { k.hook.Store(&h) }

func TestRetriesOnlyOnce(t *testing.T) {
	tk := newToken(t, "retry-once")
	k := open(t, tk.config(t))
	var calls atomic.Int32
	setHook(k, func(op string, _ pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_DEVICE_ERROR)
	})
	_, err := k.Sign(context.Background(), []byte("msg"))
	if err == nil {
		t.Fatal("Sign succeeded on a token that always fails")
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d attempts, want 2 (one retry)", n)
	}
	want := fmt.Sprintf("keys/pkcs11: sign: token %q: after reopening the session (CKR_DEVICE_ERROR): pkcs11: 0x30: CKR_DEVICE_ERROR", tk.label)
	if err.Error() != want {
		t.Fatalf("error = %q\nwant      %q", err, want)
	}

	// An error that a new session cannot fix is not retried.
	calls.Store(0)
	setHook(k, func(string, pkcs11.SessionHandle) error {
		calls.Add(1)
		return pkcs11.Error(pkcs11.CKR_DATA_LEN_RANGE)
	})
	if _, err := k.Sign(context.Background(), []byte("msg")); !errors.Is(err, pkcs11.Error(pkcs11.CKR_DATA_LEN_RANGE)) {
		t.Fatalf("Sign: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d attempts for a non-recoverable error, want 1", n)
	}

	k.hook.Store(nil)
	mustSign(t, k, []byte("healthy again"))
}

func TestSignTimeout(t *testing.T) {
	tk := newToken(t, "timeout")
	cfg := tk.config(t)
	log, sink := newLogger(t)
	cfg.Logger = log
	cfg.SignTimeout = 300 * time.Millisecond
	k := open(t, cfg)

	release := make(chan struct{})
	hung := make(chan pkcs11.SessionHandle, 1)
	var first atomic.Bool
	setHook(k, func(op string, h pkcs11.SessionHandle) error {
		if first.CompareAndSwap(false, true) {
			hung <- h
			<-release // the HSM "answers" only when the test says so
		}
		return nil
	})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	start := time.Now()
	_, err := k.Sign(context.Background(), []byte("msg"))
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sign on a hung token: %v, want a deadline error", err)
	}
	if !strings.HasPrefix(err.Error(), "keys/pkcs11: sign: the token did not answer within 300ms") {
		t.Fatalf("error = %q", err)
	}
	if took < 300*time.Millisecond || took > 2*time.Second {
		t.Fatalf("Sign returned after %v, want about 300ms", took)
	}
	hungSession := <-hung

	// The hung call still holds its session; the next caller must get
	// another one and succeed.
	mustSign(t, k, []byte("next"))

	// A deadline on ctx that is earlier than SignTimeout wins.
	setHook(k, func(string, pkcs11.SessionHandle) error { <-release; return nil })
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	if _, err := k.Sign(ctx, []byte("msg")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Sign with a short ctx: %v", err)
	}
	if took := time.Since(start); took > 250*time.Millisecond {
		t.Fatalf("Sign took %v despite a 50ms ctx deadline", took)
	}

	// Let the token answer: the abandoned calls must close their sessions
	// rather than hand them to the next caller.
	k.hook.Store(nil)
	close(release)
	waitIdle(t, k)
	if _, err := k.mod.ctx.GetSessionInfo(hungSession); !errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_HANDLE_INVALID)) {
		t.Fatalf("the timed-out call's session is still open (err %v)", err)
	}
	k.mu.Lock()
	for _, s := range k.idle {
		if s.h == hungSession {
			t.Error("the timed-out call's session went back to the pool")
		}
	}
	k.mu.Unlock()
	mustSign(t, k, []byte("after"))
	if out := sink.String(); !strings.Contains(out, "pkcs11 call returned after its caller gave up") {
		t.Fatalf("abandoned call not logged:\n%s", out)
	}
}

// waitIdle waits until no call of k is in flight.
func waitIdle(t *testing.T, k *Key) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		k.mu.Lock()
		n := k.inflight
		k.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls still in flight", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestWedgedTokenBoundsGoroutines(t *testing.T) {
	tk := newToken(t, "wedged")
	cfg := tk.config(t)
	cfg.SignTimeout = 100 * time.Millisecond
	k := open(t, cfg)
	release := make(chan struct{})
	var entered atomic.Int32
	setHook(k, func(string, pkcs11.SessionHandle) error {
		entered.Add(1)
		<-release
		return nil
	})
	for range poolSize {
		if _, err := k.Sign(context.Background(), []byte("msg")); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Sign: %v", err)
		}
	}
	_, err := k.Sign(context.Background(), []byte("msg"))
	if !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), fmt.Sprintf("all %d token sessions stayed busy", poolSize)) {
		t.Fatalf("Sign with every session stuck: %v", err)
	}
	if n := entered.Load(); n != poolSize {
		t.Fatalf("%d calls reached the token, want %d", n, poolSize)
	}
	k.hook.Store(nil)
	close(release)
	waitIdle(t, k)
	mustSign(t, k, []byte("recovered"))
}
