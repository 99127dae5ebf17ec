package config

import (
	"strings"
	"testing"
)

// keys[].algorithm: each consensus key type CometBFT v0.40 accepts loads
// where its backend holds it; a backend without it, an unknown algorithm,
// and a line whose public key cannot carry it are refused with the reason.
func TestKeyAlgorithms(t *testing.T) {
	withKey := func(algo, backendLines, protocol string) string {
		s := strings.Replace(singleChain, "    backend: file\n    key_file: /secrets/priv_validator_key.json",
			backendLines+"\n    algorithm: "+algo, 1)
		if protocol != "" {
			s = strings.Replace(s, "    identity_key: identity.json", "    identity_key: identity.json\n    protocol: "+protocol, 1)
		}
		return s
	}
	const file = "    backend: file\n    key_file: /secrets/priv_validator_key.json"
	const pkcs = "    backend: pkcs11\n    module: /usr/lib/softhsm/libsofthsm2.so\n    token_label: kms\n    key_label: k\n    pin_env: PIN"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"file ed25519", withKey("ed25519", file, ""), ""},
		{"file secp256k1", withKey("secp256k1", file, ""), ""},
		{"file secp256k1eth", withKey("secp256k1eth", file, ""), ""},
		{"file mldsa65", withKey("mldsa65", file, ""), ""},
		{"file mldsa65 v0.38", withKey("mldsa65", file, "v0.38"), ""},
		{"file secp256k1 v0.34", withKey("secp256k1", file, "v0.34"), ""},
		{"unknown", withKey("rsa", file, ""), `keys[0].algorithm: "rsa" is not a consensus key algorithm; use one of ed25519, secp256k1, secp256k1eth, mldsa65`},
		{"pkcs11 mldsa65", withKey("mldsa65", pkcs, ""), "keys[0].algorithm: mldsa65 is not available on pkcs11: PKCS#11 v2.40 and v3.0 (SoftHSM2 2.6 included) define no ML-DSA mechanism"},
		{"mldsa65 v0.34", withKey("mldsa65", file, "v0.34"), "validators[0].protocol: privval protocol v0.34 cannot carry a mldsa65 key (keys[0].algorithm)"},
		{"secp256k1eth v0.37", withKey("secp256k1eth", file, "v0.37"), "validators[0].protocol: privval protocol v0.37 cannot carry a secp256k1eth key"},
		{"mldsa65 v1", withKey("mldsa65", file, "v1"), "validators[0].protocol: privval protocol v1 cannot carry a mldsa65 key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), homeWithIdentity(t))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
