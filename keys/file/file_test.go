package file

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/privval"
)

func TestOpenPrivValidatorKeyJSON(t *testing.T) {
	dir := t.TempDir()
	pv := privval.GenFilePV(filepath.Join(dir, "key.json"), filepath.Join(dir, "state.json"))
	pv.Key.Save()
	k, err := Open(filepath.Join(dir, "key.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !k.PubKey().Equals(pv.Key.PubKey) {
		t.Fatal("public key differs from the file's")
	}
	sig, err := k.Sign(context.Background(), []byte("msg"))
	if err != nil || !pv.Key.PubKey.VerifySignature([]byte("msg"), sig) {
		t.Fatal("signature does not verify")
	}
	again, _ := k.Sign(context.Background(), []byte("msg"))
	if string(again) != string(sig) {
		t.Fatal("Ed25519 signatures must be deterministic: the cluster relies on it")
	}
}

func TestOpenRawBase64(t *testing.T) {
	priv := ed25519.GenPrivKey()
	path := filepath.Join(t.TempDir(), "raw")
	os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(priv)+"\n"), 0o600)
	k, err := Open(path)
	if err != nil || !k.PubKey().Equals(priv.PubKey()) {
		t.Fatalf("raw key: %v", err)
	}
}

func TestBadFilesGetClearErrorsWithoutKeyMaterial(t *testing.T) {
	priv := ed25519.GenPrivKey()
	secret := base64.StdEncoding.EncodeToString(priv)
	mangled := secret[:len(secret)-8] + "AAAAAAA="
	cases := map[string]string{
		"garbage":       "hello",
		"short":         base64.StdEncoding.EncodeToString(priv[:40]),
		"inconsistent":  mangled,
		"bad json":      `{"priv_key": 5}`,
		"mismatch json": `{"pub_key":{"type":"tendermint/PubKeyEd25519","value":"` + base64.StdEncoding.EncodeToString(ed25519.GenPrivKey().PubKey().Bytes()) + `"},"priv_key":{"type":"tendermint/PrivKeyEd25519","value":"` + secret + `"}}`,
	}
	for name, content := range cases {
		path := filepath.Join(t.TempDir(), "k")
		os.WriteFile(path, []byte(content), 0o600)
		_, err := Open(path)
		if err == nil {
			t.Fatalf("%s: accepted", name)
		}
		if strings.Contains(err.Error(), secret[:16]) || strings.Contains(err.Error(), mangled[:16]) {
			t.Fatalf("%s: error leaks key material: %v", name, err)
		}
	}
	if _, err := Open(filepath.Join(t.TempDir(), "missing")); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("missing file: %v", err)
	}
}

// A tmkms softsign consensus key (`tmkms softsign import` or `keygen`) is
// the base64 of the 32-byte seed, with or without a trailing newline; it
// loads as the same key as the priv_validator_key.json it came from.
func TestOpenTmkmsSoftsignSeed(t *testing.T) {
	dir := t.TempDir()
	pv := privval.GenFilePV(filepath.Join(dir, "priv_validator_key.json"), filepath.Join(dir, "state.json"))
	pv.Key.Save()
	seed := pv.Key.PrivKey.Bytes()[:32]
	for name, text := range map[string]string{
		"no newline": base64.StdEncoding.EncodeToString(seed),
		"newline":    base64.StdEncoding.EncodeToString(seed) + "\n",
	} {
		path := filepath.Join(dir, "consensus.key")
		if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		k, err := Open(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !k.PubKey().Equals(pv.Key.PubKey) {
			t.Fatalf("%s: the seed loads as another key than the priv_validator_key.json it came from", name)
		}
		sig, err := k.Sign(context.Background(), []byte("vote"))
		if err != nil || !pv.Key.PubKey.VerifySignature([]byte("vote"), sig) {
			t.Fatalf("%s: signature does not verify: %v", name, err)
		}
	}
}

// Files that hold part of a key, or a form of it no Ed25519 seed can be
// recovered from, are refused with a message that says what they are and
// what to use instead.
func TestKeyFormsThatAreNotAKeySayWhatToDo(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString
	expanded := make([]byte, 64) // tmkms's expanded key: SHA-512 of a seed, not seed+public
	for i := range expanded {
		expanded[i] = byte(i + 1)
	}
	cases := map[string]struct{ content, want string }{
		"horcrux shard": {`{"pubKey":"CiD...","privateShard":"` + b64(make([]byte, 32)) + `","id":2}`, "horcrux key shard, not a key"},
		"old horcrux shard": {`{"pub_key":"x","privShare":"` + b64(make([]byte, 32)) + `","id":1}`,
			"use the original priv_validator_key.json the shards were made from, or rotate to a new key"},
		"tmkms expanded": {b64(expanded), "cannot be turned back into one: use the original priv_validator_key.json"},
		"yubihsm export": {b64(make([]byte, 96)), "YubiHSM"},
		"wrong length":   {b64(make([]byte, 33)), "decodes to 33 bytes, want 32 (a tmkms softsign seed) or 64"},
	}
	for name, c := range cases {
		path := filepath.Join(t.TempDir(), "k")
		if err := os.WriteFile(path, []byte(c.content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Open(path)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", name, err, c.want)
		}
	}
}

// A 64-byte key whose second half is not the public key of its first half
// is refused, in a priv_validator_key.json as in a raw base64 file.
func TestInconsistentKeyIsRefused(t *testing.T) {
	priv := ed25519.GenPrivKey()
	bad := append([]byte{}, priv...)
	bad[40] ^= 1
	b64 := base64.StdEncoding.EncodeToString(bad)
	for name, content := range map[string]string{
		"raw":  b64,
		"json": `{"priv_key":{"type":"tendermint/PrivKeyEd25519","value":"` + b64 + `"}}`,
	} {
		path := filepath.Join(t.TempDir(), "k")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(path); err == nil {
			t.Errorf("%s: a key whose public half was changed loads", name)
		}
	}
}
