package configimport

import (
	"strings"
	"testing"
)

// horcruxYAML is a horcrux v3 config.yaml of one cosigner of three, as
// `horcrux config init` writes it.
const horcruxYAML = `signMode: threshold
thresholdMode:
  threshold: 2
  cosigners:
  - shardID: 1
    p2pAddr: tcp://10.0.0.11:2222
  - shardID: 2
    p2pAddr: tcp://10.0.0.12:2222
  - shardID: 3
    p2pAddr: tcp://10.0.0.13:2222
  grpcTimeout: 1000ms
  raftTimeout: 1000ms
chainNodes:
- privValAddr: tcp://10.0.1.5:1234
- privValAddr: tcp://10.0.1.6:1234
debugAddr: 0.0.0.0:6001
`

const horcruxSingle = `signMode: single
chainNodes:
- privValAddr: 10.0.1.5:1234
debugAddr: 127.0.0.1:6001
`

func mustHorcrux(t *testing.T, in string, opts HorcruxOptions) (*Result, []byte) {
	t.Helper()
	r, err := Horcrux([]byte(in), "config.yaml", opts)
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return r, out
}

// Threshold mode: no file of horcrux's holds the key, so without the
// operator's --key-file the key is refused and the output names why.
func TestHorcruxThresholdNeedsTheWholeKey(t *testing.T) {
	r, out := mustHorcrux(t, horcruxYAML, HorcruxOptions{ChainID: "cosmoshub-4", Home: "/home/horcrux/.horcrux"})
	if len(r.Refused) != 1 || r.Refused[0].Where != "keys (cosmoshub-4)" ||
		!strings.Contains(r.Refused[0].Reason, "cosmoshub-4_shard.json, one shard of the key, and no shard can sign alone") ||
		!strings.Contains(r.Refused[0].Reason, "or rotate to a new consensus key") {
		t.Fatalf("refused %v", r.Refused)
	}
	if _, err := loadWithCluster(t, out); err == nil {
		t.Fatal("an output without a key loads")
	}
	if !strings.Contains(string(out), "#   - keys (cosmoshub-4): signMode threshold: every cosigner holds") {
		t.Errorf("the header does not say why the key is missing:\n%s", out)
	}

	r, out = mustHorcrux(t, horcruxYAML, HorcruxOptions{ChainID: "cosmoshub-4", Home: "/home/horcrux/.horcrux",
		KeyFile: "/secrets/priv_validator_key.json"})
	if len(r.Refused) != 0 {
		t.Fatalf("refused %v", r.Refused)
	}
	c, err := loadWithCluster(t, out)
	if err != nil {
		t.Fatalf("the output does not load with a cluster block: %v\n%s", err, out)
	}
	if len(c.Validators) != 2 || c.Validators[1].Addr != "tcp://10.0.1.6:1234" || c.Validators[0].ChainID != "cosmoshub-4" {
		t.Errorf("validators: %+v", c.Validators)
	}
	if c.Keys[0].KeyFile != "/secrets/priv_validator_key.json" || c.Metrics.Listen != "0.0.0.0:6001" {
		t.Errorf("key %+v, metrics %+v", c.Keys[0], c.Metrics)
	}
	for _, want := range []string{"thresholdMode.cosigners: 3 cosigners", "thresholdMode.raftTimeout: 1000ms",
		"thresholdMode.grpcTimeout: 1000ms", "debugAddr: 0.0.0.0:6001 became metrics.listen", "chainNodes: all 2 nodes were given chain cosmoshub-4"} {
		if !contains(r.Notes, want) {
			t.Errorf("no note %q in %v", want, r.Notes)
		}
	}
	want := "kms-ha state import --home ~/.kms-ha --chain cosmoshub-4 --format horcrux " +
		"/home/horcrux/.horcrux/state/cosmoshub-4_priv_validator_state.json   # on every cosigner: the cluster keeps the highest"
	if len(r.Next) != 1 || r.Next[0] != want {
		t.Errorf("next %q, want %q", r.Next, want)
	}
}

// Single mode keeps the whole key in <keyDir>/<chain>_priv_validator_key.json.
func TestHorcruxSingleUsesItsKeyFile(t *testing.T) {
	cases := []struct{ in, want string }{
		{horcruxSingle, "/home/horcrux/.horcrux/cosmoshub-4_priv_validator_key.json"},
		{"keyDir: /secrets/horcrux\n" + horcruxSingle, "/secrets/horcrux/cosmoshub-4_priv_validator_key.json"},
	}
	for _, c := range cases {
		r, out := mustHorcrux(t, c.in, HorcruxOptions{ChainID: "cosmoshub-4", Home: "/home/horcrux/.horcrux"})
		if len(r.Refused) != 0 {
			t.Fatalf("refused %v", r.Refused)
		}
		cfg, err := loadWithCluster(t, out)
		if err != nil {
			t.Fatalf("does not load: %v\n%s", err, out)
		}
		if cfg.Keys[0].KeyFile != c.want {
			t.Errorf("key_file %s, want %s", cfg.Keys[0].KeyFile, c.want)
		}
		if cfg.Validators[0].Addr != "tcp://10.0.1.5:1234" || !contains(r.Notes, "10.0.1.5:1234 has no scheme") {
			t.Errorf("an address without a scheme: %s, notes %v", cfg.Validators[0].Addr, r.Notes)
		}
	}
}

func TestHorcruxRefusesAndErrors(t *testing.T) {
	if _, err := Horcrux([]byte(horcruxYAML), "config.yaml", HorcruxOptions{}); err == nil ||
		!strings.Contains(err.Error(), "does not name its chain") {
		t.Errorf("no chain id: %v", err)
	}
	for name, in := range map[string]string{"not yaml": "signMode: [", "tmkms toml": tmkmsTOML, "other yaml": "chains:\n- id: x\n"} {
		if _, err := Horcrux([]byte(in), "config.yaml", HorcruxOptions{ChainID: "c"}); err == nil || !strings.Contains(err.Error(), "config.yaml") {
			t.Errorf("%s: %v", name, err)
		}
	}
	r, _ := mustHorcrux(t, horcruxSingle+"futureField: 1\n", HorcruxOptions{ChainID: "c", Home: "/h"})
	if len(r.Refused) != 1 || r.Refused[0].Where != "futureField" {
		t.Errorf("an unknown field: refused %v", r.Refused)
	}
	r, _ = mustHorcrux(t, "signMode: single\n", HorcruxOptions{ChainID: "c", Home: "/h"})
	if len(r.Refused) != 1 || r.Refused[0].Where != "chainNodes" {
		t.Errorf("no chain nodes: refused %v", r.Refused)
	}
}
