package config

import (
	"strings"
	"testing"
)

// TestBackendRulesReportedOnceEach: the pkcs11, awskms and SignerService
// rules come from those packages' own validators; config reports every
// problem they find, each once, under the field's kms.yaml name.
func TestBackendRulesReportedOnceEach(t *testing.T) {
	cases := []struct {
		name, yaml string
		want       []string
	}{
		{"pkcs11 empty", strings.Replace(singleChain, "backend: file", "backend: pkcs11", 1), []string{
			"keys[0].module: is required for backend pkcs11",
			"keys[0].token_label: set exactly one of token_label and slot",
			"keys[0].key_label: set key_label, key_id (hex), or both",
			"keys[0].pin: set exactly one of pin, pin_env and pin_file",
		}},
		{"awskms", strings.Replace(singleChain, "backend: file", "backend: awskms\n    endpoint: kms.example", 1), []string{
			"keys[0].key_id: is required for backend awskms",
			`keys[0].endpoint: "kms.example" must be a URL`,
		}},
		{"grpc", singleChain + "grpc:\n  listen: '0.0.0.0:0'\n  tls_cert: c\n  keys: [{id: a}, {id: a, key_file: b}]\n", []string{
			`grpc.listen: "0.0.0.0:0" has no valid port; the SignerService address`,
			"grpc.tls_cert: tls_cert and tls_key go together",
			"grpc.client_ca: is required when grpc.listen",
			"grpc.keys[0].key_file: is required",
			`grpc.keys[1].id: "a" is used twice`,
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), homeWithIdentity(t))
			if err == nil {
				t.Fatal("accepted")
			}
			lines := strings.Split(err.Error(), "\n")
			if len(lines) != len(tc.want) {
				t.Errorf("%d problems, want %d:\n%v", len(lines), len(tc.want), err)
			}
			for _, w := range tc.want {
				if strings.Count(err.Error(), w) != 1 {
					t.Errorf("want %q once in:\n%v", w, err)
				}
			}
		})
	}
}
