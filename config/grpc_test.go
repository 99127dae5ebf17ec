package config

import (
	"strings"
	"testing"
)

func TestSignerServiceBeyondLoopbackNeedsClientCA(t *testing.T) {
	grpc := func(listen, extra string) string {
		return singleChain + "grpc:\n  listen: '" + listen + "'\n  tls_cert: c\n  tls_key: k\n" + extra +
			"  keys: [{id: a, key_file: a.hex}]\n"
	}
	for _, tc := range []struct{ yaml, want string }{
		{grpc("0.0.0.0:9090", ""), "grpc.client_ca: is required"},
		{grpc(":9090", ""), "grpc.client_ca: is required"},
		{grpc("10.0.0.5:9090", ""), "grpc.client_ca: is required"},
		{grpc("signer.internal:9090", ""), "grpc.client_ca: is required"},
		{grpc("0.0.0.0:9090", "  client_ca: ca.crt\n"), ""},
		{grpc("0.0.0.0:9090", "  allow_unauthenticated_clients: true\n"), ""},
		{grpc("127.0.0.1:9090", ""), ""},
		{grpc("[::1]:9090", ""), ""},
		{grpc("localhost:9090", ""), ""},
	} {
		_, err := Parse([]byte(tc.yaml), homeWithIdentity(t))
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.yaml[len(singleChain):], err)
			}
			continue
		}
		if err == nil {
			t.Fatalf("%s: accepted", tc.yaml[len(singleChain):])
		}
		for _, want := range []string{tc.want, "sign any message with every grpc key", "grpc.allow_unauthenticated_clients: true", "127.0.0.1"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q does not say %q", err, want)
			}
		}
	}
}
