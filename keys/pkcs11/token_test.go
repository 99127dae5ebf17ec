//go:build cgo

package pkcs11

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
	"github.com/miekg/pkcs11"
)

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
