//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"

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
