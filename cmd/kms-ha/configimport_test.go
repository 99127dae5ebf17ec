package main

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/privval"

	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/keys/file"
)

const importTMKMS = `[[chain]]
id = "cosmoshub-4"
key_format = { type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }
state_file = "/var/lib/tmkms/state/cosmoshub-4-consensus.json"

[[providers.softsign]]
chain_ids = ["cosmoshub-4"]
key_type = "consensus"
path = "KEY"

[[validator]]
chain_id = "cosmoshub-4"
addr = "tcp://10.0.1.5:26658"
secret_key = "/var/lib/tmkms/secrets/kms-identity.key"
protocol_version = "v0.34"
reconnect = true
`

const horcruxConfigYAML = `signMode: threshold
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
debugAddr: 0.0.0.0:6001
`

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// loadsAsNode: the output plus a cluster block loads as a kms.yaml, and
// its key file loads as the key it came from.
func loadsAsNode(t *testing.T, yaml string, want ed25519.PubKey) {
	t.Helper()
	home := t.TempDir()
	if err := (&p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}).SaveAs(filepath.Join(home, IdentityFile)); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse([]byte(yaml+"cluster:\n  node_id: node1\n  raft_addr: 10.0.0.11:7001\n  api_addr: 10.0.0.11:7101\n"), home)
	if err != nil {
		t.Fatalf("the output does not load with a cluster block: %v\n%s", err, yaml)
	}
	k, err := file.Open(cfg.Keys[0].KeyFile)
	if err != nil || !k.PubKey().Equals(want) {
		t.Fatalf("the key file does not load as the validator's key: %v", err)
	}
}

// A tmkms softsign setup, its key the base64 seed `tmkms softsign import`
// writes: the output loads and signs with the same key; --out never
// overwrites.
func TestConfigImportTMKMS(t *testing.T) {
	dir := t.TempDir()
	pv := privval.GenFilePV(filepath.Join(dir, "priv_validator_key.json"), filepath.Join(dir, "s.json"))
	key := writeFile(t, filepath.Join(dir, "consensus.key"), base64.StdEncoding.EncodeToString(pv.Key.PrivKey.Bytes()[:32]))
	toml := writeFile(t, filepath.Join(dir, "tmkms.toml"), strings.Replace(importTMKMS, "KEY", key, 1))

	stdout, stderr, code := run(t, "config", "import", "--from", "tmkms", toml)
	if code != 0 || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"key_file: " + key, "addr: tcp://10.0.1.5:26658",
		"#   kms-ha state import --home ~/.kms-ha --chain cosmoshub-4 --format tmkms /var/lib/tmkms/state/cosmoshub-4-consensus.json"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("stdout lacks %q:\n%s", want, stdout)
		}
	}
	loadsAsNode(t, stdout, pv.Key.PubKey.(ed25519.PubKey))

	out := filepath.Join(dir, "kms.yaml")
	if _, stderr, code = run(t, "config", "import", "--from", "tmkms", "--out", out, toml); code != 0 ||
		!strings.Contains(stderr, "wrote "+out+": 1 chains, 1 validators, 1 keys from tmkms.toml; 2 settings left out") {
		t.Fatalf("--out: exit %d, stderr %q", code, stderr)
	}
	written, _ := os.ReadFile(out)
	if string(written) != stdout {
		t.Error("--out wrote something else than stdout shows")
	}
	if _, stderr, code = run(t, "config", "import", "--from", "tmkms", "--out", out, toml); code != 1 ||
		!strings.Contains(stderr, out+" already exists; refusing to overwrite it") {
		t.Fatalf("second --out: exit %d, stderr %q", code, stderr)
	}
}

// horcrux threshold mode: without the whole key, or with a shard as the
// key, the key is refused with the reason and the exit status is 1; with
// the original priv_validator_key.json the output loads.
func TestConfigImportHorcrux(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "config.yaml"), horcruxConfigYAML)
	shard := writeFile(t, filepath.Join(dir, "cosmoshub-4_shard.json"),
		`{"pubKey":"CiCq","privateShard":"`+base64.StdEncoding.EncodeToString(make([]byte, 32))+`","id":1}`)
	pv := privval.GenFilePV(filepath.Join(dir, "priv_validator_key.json"), filepath.Join(dir, "s.json"))
	pv.Key.Save()

	stdout, stderr, code := run(t, "config", "import", "--from", "horcrux", "--chain-id", "cosmoshub-4", cfg)
	if code != 1 || !strings.Contains(stderr, "1 items of config.yaml not translated") ||
		!strings.Contains(stderr, "keys (cosmoshub-4): signMode threshold: every cosigner holds cosmoshub-4_shard.json, one shard of the key") ||
		!strings.Contains(stdout, "addr: tcp://10.0.1.5:1234") {
		t.Fatalf("no key: exit %d, stderr %q, stdout %q", code, stderr, stdout)
	}

	_, stderr, code = run(t, "config", "import", "--from", "horcrux", "--chain-id", "cosmoshub-4", "--key-file", shard, cfg)
	if code != 1 || !strings.Contains(stderr, "this is a horcrux key shard, not a key") {
		t.Fatalf("a shard as the key: exit %d, stderr %q", code, stderr)
	}

	stdout, stderr, code = run(t, "config", "import", "--from", "horcrux", "--chain-id", "cosmoshub-4",
		"--key-file", filepath.Join(dir, "priv_validator_key.json"), cfg)
	if code != 0 || stderr != "" {
		t.Fatalf("the whole key: exit %d, stderr %q", code, stderr)
	}
	if !strings.Contains(stdout, "--format horcrux "+filepath.Join(dir, "state", "cosmoshub-4_priv_validator_state.json")) {
		t.Errorf("the state import command does not point at horcrux's state dir:\n%s", stdout)
	}
	loadsAsNode(t, stdout, pv.Key.PubKey.(ed25519.PubKey))
}

func TestConfigImportUsage(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "config.yaml"), horcruxConfigYAML)
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"config", "import", cfg}, `--from must be tmkms or horcrux, not ""`},
		{[]string{"config", "import", "--from", "horcrux", cfg}, "--chain-id is required"},
		{[]string{"config", "import", "--from", "tmkms", "--chain-id", "x", cfg}, "--chain-id and --key-file are for --from horcrux"},
		{[]string{"config", "import", "--from", "tmkms", cfg}, "config.yaml is not a tmkms.toml"},
		{[]string{"config", "import", "--from", "tmkms"}, "give the FILE to translate"},
		{[]string{"config", "import", "--from", "tmkms", filepath.Join(dir, "missing.toml")}, "missing.toml"},
	}
	for _, c := range cases {
		stdout, stderr, code := run(t, c.args...)
		if code != 2 || stdout != "" || !strings.Contains(stderr, c.want) || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", c.args, code, stdout, stderr, c.want)
		}
	}
	if out, _, code := run(t, "config", "import", "--help"); code != 0 || !strings.Contains(out, "kms-ha config import") {
		t.Errorf("config import --help: exit %d, %q", code, out)
	}
}
