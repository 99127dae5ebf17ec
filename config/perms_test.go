package config

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/p2p"
)

// Every secret file kms.yaml names is refused when another account could
// read it: the error names the field, the file and the chmod that fixes it.
func TestOpenSecretFilesAreRefused(t *testing.T) {
	// ALLOW marks where each case's allow_open_permissions line goes.
	keyFile := strings.Replace(singleChain, "key_file: /secrets/priv_validator_key.json",
		"key_file: secret.txt\nALLOW", 1)
	pinFile := strings.Replace(singleChain, "backend: file\n    key_file: /secrets/priv_validator_key.json",
		"backend: pkcs11\n    module: /lib/x.so\n    token_label: t\n    key_label: k\n    pin_file: secret.txt\nALLOW", 1)
	identity := strings.Replace(singleChain, "identity_key: identity.json # relative to --home",
		"identity_key: secret.txt\nALLOW", 1)
	grpcKey := singleChain + "grpc:\n  listen: 127.0.0.1:9090\n  tls_cert: c\n  tls_key: k\n" +
		"  keys:\n    - id: a\n      key_file: secret.txt\nALLOW\n"
	cases := []struct {
		field, yaml, allow string
	}{
		{"keys[0].key_file", keyFile, "    allow_open_permissions: true\n"},
		{"keys[0].pin_file", pinFile, "    allow_open_permissions: true\n"},
		{"validators[0].identity_key", identity, "    allow_open_permissions: true\n"},
		{"grpc.keys[0].key_file", grpcKey, "      allow_open_permissions: true\n"},
	}
	for _, tc := range cases {
		t.Run(tc.field, func(t *testing.T) {
			home := homeWithIdentity(t)
			// A throwaway identity: it is what identity_key must hold, and
			// the other fields' checks do not read their files.
			secret := filepath.Join(home, "secret.txt")
			if err := (&p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}).SaveAs(secret); err != nil {
				t.Fatal(err)
			}
			var saved struct {
				PrivKey struct{ Value string } `json:"priv_key"`
			}
			raw, _ := os.ReadFile(secret)
			if err := json.Unmarshal(raw, &saved); err != nil || saved.PrivKey.Value == "" {
				t.Fatalf("identity file: %v", err)
			}
			refused := []byte(strings.Replace(tc.yaml, "ALLOW\n", "", 1))
			allowed := []byte(strings.Replace(tc.yaml, "ALLOW\n", tc.allow, 1))
			if _, err := Parse(refused, home); err != nil {
				t.Fatalf("a 0600 file was refused: %v", err)
			}
			entry := tc.field[:strings.LastIndex(tc.field, ".")]
			for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o620} {
				if err := os.Chmod(secret, mode); err != nil {
					t.Fatal(err)
				}
				_, err := Parse(refused, home)
				if err == nil {
					t.Fatalf("mode %04o was accepted", mode)
				}
				msg := err.Error()
				for _, want := range []string{tc.field + ": " + secret, "chmod 600 " + secret, entry + ".allow_open_permissions: true"} {
					if !strings.Contains(msg, want) {
						t.Fatalf("mode %04o: %q does not say %q", mode, msg, want)
					}
				}
				if strings.Contains(msg, saved.PrivKey.Value) {
					t.Fatalf("the error shows the file's content: %q", msg)
				}
			}
			if _, err := Parse(allowed, home); err != nil {
				t.Fatalf("allow_open_permissions: true did not accept a 0620 file: %v", err)
			}
		})
	}
}

// A file that is not there yet is the backend's to report at start (as
// before); the permission check only judges files that exist.
func TestMissingSecretFileIsLeftToTheBackend(t *testing.T) {
	if _, err := Parse([]byte(singleChain), homeWithIdentity(t)); err != nil {
		t.Fatal(err)
	}
}
