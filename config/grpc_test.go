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

// A kms.yaml of an earlier kms-ha (keys with id and key_file only) loads
// unchanged, as file secp256k1eth keys served on the released contract;
// backend defaults per the release (pkcs11 and awskms: ed25519).
func TestGRPCKeyDefaults(t *testing.T) {
	c, err := Parse([]byte(singleChain+`grpc:
  listen: 127.0.0.1:9090
  keys:
    - id: old
      key_file: old.hex
    - id: hsm
      backend: pkcs11
      module: /usr/lib/softhsm/libsofthsm2.so
      token_label: t
      key_label: k
      pin_file: pin.txt
    - id: kms
      backend: awskms
      key_id: alias/x
`), homeWithIdentity(t))
	if err != nil {
		t.Fatal(err)
	}
	g := c.GRPC.SignerService()
	var got []string
	for _, k := range g.Keys {
		got = append(got, k.ID+":"+k.Backend+"/"+k.Algorithm)
	}
	if g.API != "released" || strings.Join(got, " ") != "old:file/secp256k1eth hsm:pkcs11/ed25519 kms:awskms/ed25519" {
		t.Errorf("api %q, keys %v", g.API, got)
	}
	if k := g.Keys[1].PKCS11; k.PinFile != c.Path("pin.txt") || k.KeyLabel != "k" || k.TokenLabel != "t" {
		t.Errorf("pkcs11 fields %+v", k)
	}
	if k := g.Keys[2].AWSKMS; k.KeyID != "alias/x" {
		t.Errorf("awskms fields %+v", k)
	}
}

// The grpc block `kms-ha init` writes, commented out, loads once
// uncommented.
func TestTemplateGRPCBlockLoads(t *testing.T) {
	tmpl := string(Template(TemplateParams{NodeID: "n1", RaftAddr: "127.0.0.1:1", APIAddr: "127.0.0.1:2"}))
	start := strings.Index(tmpl, "# grpc:")
	if start < 0 {
		t.Fatal("the template has no grpc block")
	}
	var block []string
	for _, line := range strings.Split(tmpl[start:], "\n") {
		if !strings.HasPrefix(line, "# ") {
			break
		}
		line = strings.TrimPrefix(line, "# ")
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			block = append(block, line)
		}
	}
	// The commented block stays where it is; the uncommented copy goes at
	// the end, where a top-level key is valid YAML.
	c, err := Parse([]byte(tmpl+"\n"+strings.Join(block, "\n")+"\n"), homeWithIdentity(t))
	if err != nil {
		t.Fatalf("the template's grpc block does not load: %v\n%s", err, strings.Join(block, "\n"))
	}
	if len(c.GRPC.Keys) != 2 || c.GRPC.API != "released" {
		t.Fatalf("grpc block %+v", c.GRPC)
	}
}
