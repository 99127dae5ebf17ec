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
