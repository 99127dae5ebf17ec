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
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
	"github.com/miekg/pkcs11"
)

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
