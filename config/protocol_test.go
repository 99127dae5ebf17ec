package config

import (
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"

	"github.com/kms-ha/kms-ha/transport"
)

// validators[].protocol: every line's value loads, the default is v0.38,
// an unknown value and noise:// with a line that has no noise listener are
// refused at load with the reason.
func TestValidatorProtocol(t *testing.T) {
	pid, err := transport.PeerID(ed25519.GenPrivKey())
	if err != nil {
		t.Fatal(err)
	}
	withProtocol := func(addr, protocol string) string {
		s := strings.Replace(singleChain, "tcp://10.0.0.1:26659", addr, 1)
		if protocol != "" {
			s = strings.Replace(s, "    identity_key: identity.json", "    identity_key: identity.json\n    protocol: "+protocol, 1)
		}
		return s
	}
	noise := "noise://" + pid + "@10.0.0.1:26659"
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"default", withProtocol("tcp://10.0.0.1:26659", ""), ""},
		{"v0.34", withProtocol("tcp://10.0.0.1:26659", "v0.34"), ""},
		{"v0.37", withProtocol("tcp://10.0.0.1:26659", "v0.37"), ""},
		{"v0.38", withProtocol("tcp://10.0.0.1:26659", "v0.38"), ""},
		{"v1", withProtocol("tcp://10.0.0.1:26659", "v1"), ""},
		{"v1 unix", withProtocol("unix:///run/v1.sock", "v1"), ""},
		{"noise v0.38", withProtocol(noise, "v0.38"), ""},
		{"unknown", withProtocol("tcp://10.0.0.1:26659", "v0.39"),
			`validators[0].protocol: transport: unknown protocol "v0.39", want v0.34, v0.37, v0.38 (CometBFT v0.38, v0.39 and v0.40; the default) or v1`},
		{"noise v1", withProtocol(noise, "v1"),
			"validators[0].protocol: transport: protocol v1 cannot be used with a noise:// address: only CometBFT v0.40 nodes have noise:// privval listeners"},
		{"noise v0.37", withProtocol(noise, "v0.37"), "validators[0].protocol: transport: protocol v0.37 cannot be used with a noise:// address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.yaml), homeWithIdentity(t))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				p, perr := transport.ParseProtocol(c.Validators[0].Protocol)
				if perr != nil || (tc.name == "default" && p != transport.ProtocolV038) {
					t.Fatalf("protocol %q -> %q, %v", c.Validators[0].Protocol, p, perr)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
