package pkcs11

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/miekg/pkcs11"

	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
)

// PINs are long and distinctive so that a leak into an error or a log line
// cannot hide behind a coincidental substring.
const (
	goodPin  = "pin-Kx7q-correct-9931"
	wrongPin = "pin-Zr2w-wrong-4417"
)

// token is a SoftHSM token holding one Ed25519 key, labelled "validator"
// with CKA_ID 01.
type token struct {
	module string
	label  string
	pub    ed25519.PubKey
}

var keyID = []byte{0x01}

var tokenSeq atomic.Int32

// newToken gives each test its own token so that tests that drop sessions
// or log out cannot disturb one another. The suffix keeps labels unique
// under -count=N, since all tokens live in one SoftHSM per process.
func newToken(t testing.TB, name string) token {
	t.Helper()
	label := fmt.Sprintf("%s-%d", name, tokenSeq.Add(1))
	module, _ := pkcs11test.NewToken(t, label, goodPin)
	pub := pkcs11test.GenerateEd25519(t, module, label, goodPin, "validator", keyID)
	return token{module: module, label: label, pub: pub}
}

// logSink collects a Key's log lines and fails the test if one of them
// carries a PIN.
type logSink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.String()
}

func newLogger(t testing.TB) (*slog.Logger, *logSink) {
	sink := &logSink{}
	t.Cleanup(func() {
		out := sink.String()
		for _, pin := range []string{goodPin, wrongPin} {
			if strings.Contains(out, pin) {
				t.Errorf("a log line contains a PIN:\n%s", out)
			}
		}
	})
	return slog.New(slog.NewTextHandler(sink, &slog.HandlerOptions{Level: slog.LevelDebug})), sink
}

func assertNoPin(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, pin := range []string{goodPin, wrongPin} {
		if strings.Contains(err.Error(), pin) || strings.Contains(fmt.Sprintf("%+v", err), pin) {
			t.Fatalf("error contains a PIN: %v", err)
		}
	}
}

func (tk token) config(t testing.TB) Config {
	log, _ := newLogger(t)
	return Config{Module: tk.module, TokenLabel: tk.label, KeyLabel: "validator", Pin: goodPin, Logger: log}
}

func open(t testing.TB, cfg Config) *Key {
	t.Helper()
	k, err := Open(context.Background(), cfg)
	assertNoPin(t, err)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = k.Close() })
	return k
}

func mustSign(t testing.TB, k *Key, msg []byte) []byte {
	t.Helper()
	sig, err := k.Sign(context.Background(), msg)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if !k.PubKey().VerifySignature(msg, sig) {
		t.Fatalf("signature %X does not verify", sig)
	}
	return sig
}

func TestOpenSelectsKey(t *testing.T) {
	tk := newToken(t, "open-selects")
	// A second key on the same token, so that selecting by label or id
	// has something to tell apart.
	other := pkcs11test.GenerateEd25519(t, tk.module, tk.label, goodPin, "other", []byte{0x02})
	slot := pkcs11test.Slot(t, tk.module, tk.label)

	for _, tc := range []struct {
		name string
		edit func(*Config)
		want ed25519.PubKey
	}{
		{"token label, key label", func(c *Config) {}, tk.pub},
		{"slot, key label", func(c *Config) { c.TokenLabel, c.Slot = "", &slot }, tk.pub},
		{"key id", func(c *Config) { c.KeyLabel, c.KeyID = "", "01" }, tk.pub},
		{"key id with 0x", func(c *Config) { c.KeyLabel, c.KeyID = "", "0x01" }, tk.pub},
		{"key label and id", func(c *Config) { c.KeyID = "01" }, tk.pub},
		{"other key by id", func(c *Config) { c.KeyLabel, c.KeyID = "", "02" }, other},
		{"other key by label and slot", func(c *Config) { c.TokenLabel, c.Slot, c.KeyLabel = "", &slot, "other" }, other},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tk.config(t)
			tc.edit(&cfg)
			k := open(t, cfg)
			if !k.PubKey().Equals(tc.want) {
				t.Fatalf("PubKey = %X, want %X", k.PubKey().Bytes(), tc.want.Bytes())
			}
			mustSign(t, k, []byte("msg"))
		})
	}
}

func TestSignIsDeterministic(t *testing.T) {
	tk := newToken(t, "deterministic")
	k := open(t, tk.config(t))
	msg := []byte("the same sign bytes")
	a := mustSign(t, k, msg)
	b := mustSign(t, k, msg)
	if !bytes.Equal(a, b) {
		t.Fatalf("two signatures over the same bytes differ:\n%X\n%X", a, b)
	}
	// A second Key on the same token (a new leader, in kms-ha terms) must
	// produce the same signature too.
	k2 := open(t, tk.config(t))
	if c := mustSign(t, k2, msg); !bytes.Equal(a, c) {
		t.Fatalf("another session signed the same bytes differently:\n%X\n%X", a, c)
	}
	if d := mustSign(t, k, []byte("other bytes")); bytes.Equal(a, d) {
		t.Fatal("different bytes gave the same signature")
	}
	mustSign(t, k, nil)
}

func TestWrongPin(t *testing.T) {
	tk := newToken(t, "wrong-pin")
	cfg := tk.config(t)
	cfg.Pin = wrongPin
	k, err := Open(context.Background(), cfg)
	if err == nil {
		_ = k.Close()
		t.Fatal("Open with a wrong PIN succeeded")
	}
	assertNoPin(t, err)
	if !errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)) {
		t.Fatalf("error does not wrap CKR_PIN_INCORRECT: %v", err)
	}
	want := fmt.Sprintf(`keys/pkcs11: token %q: login: the token rejected the PIN`, tk.label)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error = %q, want it to contain %q", err, want)
	}
}

// After the token refuses the PIN (changed behind our back), the Key must
// not keep offering it: real HSMs lock the PIN after a few wrong tries.
func TestPinChangedStopsLoginAttempts(t *testing.T) {
	tk := newToken(t, "pin-changed")
	cfg := tk.config(t)
	log, sink := newLogger(t)
	cfg.Logger = log
	k := open(t, cfg)
	const newPin = "pin-Qm4v-rotated-2288"
	withSession(t, tk, func(c *pkcs11.Ctx, h pkcs11.SessionHandle) {
		if err := c.SetPIN(h, goodPin, newPin); err != nil {
			t.Fatalf("C_SetPIN: %v", err)
		}
	})
	pkcs11test.DropSessions(t, tk.module, tk.label)

	_, err := k.Sign(context.Background(), []byte("msg"))
	if !errors.Is(err, pkcs11.Error(pkcs11.CKR_PIN_INCORRECT)) {
		t.Fatalf("Sign after a PIN change: %v", err)
	}
	assertNoPin(t, err)
	_, err = k.Sign(context.Background(), []byte("msg"))
	if err == nil || !strings.Contains(err.Error(), "not logging in again after the token refused the PIN") {
		t.Fatalf("second Sign: %v", err)
	}
	assertNoPin(t, err)
	if strings.Contains(err.Error(), newPin) || strings.Contains(sink.String(), newPin) {
		t.Fatal("the new PIN leaked")
	}
	if n := strings.Count(sink.String(), "no further login attempts"); n != 1 {
		t.Fatalf("%d refused-PIN log lines, want 1:\n%s", n, sink.String())
	}
}

func TestKeyNotFound(t *testing.T) {
	tk := newToken(t, "not-found")
	pkcs11test.GenerateEd25519(t, tk.module, tk.label, goodPin, "other", []byte{0x02})
	noSuchSlot := uint(424242)
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"key label", func(c *Config) { c.KeyLabel = "nope" },
			`no private key with key_label "nope"`},
		{"key id", func(c *Config) { c.KeyLabel, c.KeyID = "", "ff" },
			`no private key with key_id "ff"`},
		{"label and id of different keys", func(c *Config) { c.KeyID = "02" },
			`key_label "validator" and key_id "02" name different private keys`},
		{"token label", func(c *Config) { c.TokenLabel = "no-such-token" },
			`keys/pkcs11: token "no-such-token": no token has this label (token_label); tokens present: "`},
		{"slot", func(c *Config) { c.TokenLabel, c.Slot = "", &noSuchSlot },
			`keys/pkcs11: slot 424242: no initialised token in this slot (slot); tokens present: `},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tk.config(t)
			tc.edit(&cfg)
			k, err := Open(context.Background(), cfg)
			if err == nil {
				_ = k.Close()
				t.Fatal("Open succeeded")
			}
			assertNoPin(t, err)
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %q, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestPinSources(t *testing.T) {
	tk := newToken(t, "pin-sources")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Setenv("KMSHA_TEST_PIN", goodPin)
	t.Setenv("KMSHA_TEST_EMPTY_PIN", "")
	withNewline := write("pin", goodPin+"\n")
	withSpaces := write("pin-spaces", goodPin+" \r\n\t")
	empty := write("empty", " \n")
	missing := filepath.Join(dir, "missing")

	for _, tc := range []struct {
		name    string
		edit    func(*Config)
		wantErr string
	}{
		{"pin_file with newline", func(c *Config) { c.PinFile = withNewline }, ""},
		{"pin_file with trailing whitespace", func(c *Config) { c.PinFile = withSpaces }, ""},
		{"pin_env", func(c *Config) { c.PinEnv = "KMSHA_TEST_PIN" }, ""},
		{"pin_env unset", func(c *Config) { c.PinEnv = "KMSHA_TEST_UNSET_PIN" },
			`keys/pkcs11: pin_env "KMSHA_TEST_UNSET_PIN" is not set in the environment`},
		{"pin_env empty", func(c *Config) { c.PinEnv = "KMSHA_TEST_EMPTY_PIN" },
			`keys/pkcs11: pin_env "KMSHA_TEST_EMPTY_PIN" is set but empty`},
		{"pin_file empty", func(c *Config) { c.PinFile = empty },
			"keys/pkcs11: pin_file " + empty + " is empty"},
		{"pin_file missing", func(c *Config) { c.PinFile = missing },
			"keys/pkcs11: pin_file: open " + missing + ": no such file or directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tk.config(t)
			cfg.Pin = ""
			tc.edit(&cfg)
			k, err := Open(context.Background(), cfg)
			assertNoPin(t, err)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				defer k.Close()
				mustSign(t, k, []byte("msg"))
				return
			}
			if err == nil {
				_ = k.Close()
				t.Fatal("Open succeeded")
			}
			if err.Error() != tc.wantErr {
				t.Fatalf("error = %q\nwant      %q", err, tc.wantErr)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	slot := uint(0)
	ok := Config{Module: "/lib/p11.so", TokenLabel: "t", KeyLabel: "k", PinEnv: "PIN"}
	if err := ok.Validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		edit func(*Config)
		want string
	}{
		{func(c *Config) { c.Module = "" }, "keys/pkcs11: module: is required"},
		{func(c *Config) { c.Slot = &slot }, "keys/pkcs11: token_label: set exactly one of token_label and slot"},
		{func(c *Config) { c.TokenLabel = "" }, "keys/pkcs11: token_label: set exactly one of token_label and slot"},
		{func(c *Config) { c.KeyLabel = "" }, "keys/pkcs11: key_label: set key_label, key_id (hex), or both"},
		{func(c *Config) { c.KeyID = "zz" }, `keys/pkcs11: key_id: "zz" is not hex`},
		{func(c *Config) { c.PinEnv = "" }, "keys/pkcs11: pin: set exactly one of pin, pin_env and pin_file"},
		{func(c *Config) { c.Pin = goodPin }, "keys/pkcs11: pin: set exactly one of pin, pin_env and pin_file"},
		{func(c *Config) { c.PinFile = "/pin" }, "keys/pkcs11: pin: set exactly one of pin, pin_env and pin_file"},
		{func(c *Config) { c.SignTimeout = -time.Second }, "keys/pkcs11: sign timeout -1s is negative"},
	} {
		cfg := ok
		tc.edit(&cfg)
		err := cfg.Validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Validate(%v) = %v, want %q", cfg, err, tc.want)
		}
		assertNoPin(t, err)
		if _, err := Open(context.Background(), cfg); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("Open(%v) = %v, want %q", cfg, err, tc.want)
		}
	}
}

func TestModuleErrors(t *testing.T) {
	cfg := Config{Module: filepath.Join(t.TempDir(), "missing.so"), TokenLabel: "t", KeyLabel: "k", Pin: goodPin}
	_, err := Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "keys/pkcs11: module: stat ") {
		t.Fatalf("missing module: %v", err)
	}
	notLib := filepath.Join(t.TempDir(), "not-a-lib.so")
	if err := os.WriteFile(notLib, []byte("no"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.Module = notLib
	_, err = Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "cannot be loaded") {
		t.Fatalf("not a library: %v", err)
	}
}

func TestSecretsStayOutOfFormatting(t *testing.T) {
	tk := newToken(t, "formatting")
	cfg := tk.config(t)
	k := open(t, cfg)
	waitIdle(t, k) // printing k reads fields its last call's goroutine may still be writing
	var js bytes.Buffer
	slog.New(slog.NewJSONHandler(&js, nil)).Info("config", "key", cfg)
	for _, s := range []string{
		fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%+v", k), fmt.Sprintf("%#v", k), js.String(),
	} {
		if strings.Contains(s, goodPin) {
			t.Fatalf("PIN printed: %s", s)
		}
	}
	if !strings.Contains(js.String(), `"pin":"[redacted]"`) {
		t.Fatalf("slog output does not show the redacted pin: %s", js.String())
	}
}

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

func TestCanceledContext(t *testing.T) {
	tk := newToken(t, "canceled")
	k := open(t, tk.config(t))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := k.Sign(ctx, []byte("msg")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sign with a canceled ctx: %v", err)
	}
}

func TestClose(t *testing.T) {
	tk := newToken(t, "close")
	a := open(t, tk.config(t))
	b := open(t, tk.config(t))
	if a.mod != b.mod {
		t.Fatal("two keys on one module loaded it twice")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := a.Sign(context.Background(), []byte("msg")); err == nil || err.Error() != "keys/pkcs11: sign: the key is closed" {
		t.Fatalf("Sign after Close: %v", err)
	}
	// The other key shares the module and must be unaffected.
	mustSign(t, b, []byte("msg"))
}

func TestRejectsWrongKeyType(t *testing.T) {
	tk := newToken(t, "key-type")
	generateP256(t, tk, "p256")
	cfg := tk.config(t)
	cfg.KeyLabel = "p256"
	_, err := Open(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), `key_label "p256" is not an Ed25519 key`) {
		t.Fatalf("Open on a P-256 key: %v", err)
	}
}

func TestSelfTestCatchesMismatchedPublicKey(t *testing.T) {
	tk := newToken(t, "mismatch")
	// A second pair whose public half is then relabelled to pose as the
	// public half of "validator".
	pkcs11test.GenerateEd25519(t, tk.module, tk.label, goodPin, "impostor", []byte{0x09})
	withSession(t, tk, func(c *pkcs11.Ctx, h pkcs11.SessionHandle) {
		relabel := func(label string, id []byte, newLabel string, newID []byte) {
			objs, err := findObjects(c, h, template(pkcs11.CKO_PUBLIC_KEY, label, id))
			if err != nil || len(objs) != 1 {
				t.Fatalf("find public key %q: %v %v", label, objs, err)
			}
			if err := c.SetAttributeValue(h, objs[0], []*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, newLabel),
				pkcs11.NewAttribute(pkcs11.CKA_ID, newID),
			}); err != nil {
				t.Fatalf("relabel: %v", err)
			}
		}
		relabel("validator", keyID, "parked", []byte{0x0a})
		relabel("impostor", []byte{0x09}, "validator", keyID)
	})
	_, err := Open(context.Background(), tk.config(t))
	if err == nil || !strings.Contains(err.Error(), "self-test signature does not verify against the public key") {
		t.Fatalf("Open with a mismatched public key: %v", err)
	}
}

// withSession runs f on a logged-in read-write session of tk, through this
// process's shared module.
func withSession(t *testing.T, tk token, f func(*pkcs11.Ctx, pkcs11.SessionHandle)) {
	t.Helper()
	m, err := loadModule(tk.module)
	if err != nil {
		t.Fatal(err)
	}
	defer m.release()
	h, err := m.ctx.OpenSession(pkcs11test.Slot(t, tk.module, tk.label), pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = m.ctx.CloseSession(h) }()
	if err := m.ctx.Login(h, pkcs11.CKU_USER, goodPin); err != nil && !errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		t.Fatal(err)
	}
	f(m.ctx, h)
}

func generateP256(t *testing.T, tk token, label string) {
	t.Helper()
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	withSession(t, tk, func(c *pkcs11.Ctx, h pkcs11.SessionHandle) {
		_, _, err := c.GenerateKeyPair(h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			},
			[]*pkcs11.Attribute{
				pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
				pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
				pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
			})
		if err != nil {
			t.Fatalf("generate P-256: %v", err)
		}
	})
}

func TestParseECPoint(t *testing.T) {
	raw := bytes.Repeat([]byte{0xab}, 32)
	wrapped := append([]byte{0x04, 0x20}, raw...)
	for _, v := range [][]byte{raw, wrapped} {
		got, err := parseECPoint(v)
		if err != nil || !bytes.Equal(got, raw) {
			t.Errorf("parseECPoint(%s) = %X, %v", hex.EncodeToString(v), []byte(got), err)
		}
	}
	for _, v := range [][]byte{
		nil,
		raw[:31],
		append([]byte{0x04, 0x21}, append(raw, 0)...), // 33-byte point
		append(wrapped, 0x00),                         // trailing data
		append([]byte{0x03, 0x20}, raw...),            // BIT STRING, not OCTET STRING
	} {
		if _, err := parseECPoint(v); err == nil {
			t.Errorf("parseECPoint(%s) accepted", hex.EncodeToString(v))
		}
	}
}

func BenchmarkSign(b *testing.B) {
	tk := newToken(b, "bench")
	k := open(b, tk.config(b))
	msg := bytes.Repeat([]byte{0x42}, 120) // about the size of vote sign bytes
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.Sign(ctx, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := k.Sign(ctx, msg); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
