package configimport

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/p2p"

	"github.com/kms-ha/kms-ha/config"
)

// tmkmsTOML is a tmkms.toml as `tmkms init` lays it out, for two chains
// sharing one softsign consensus key.
const tmkmsTOML = `# Tendermint KMS configuration file

## Chain Configuration

[[chain]]
id = "cosmoshub-4"
key_format = { type = "bech32", account_key_prefix = "cosmospub", consensus_key_prefix = "cosmosvalconspub" }
state_file = "/var/lib/tmkms/state/cosmoshub-4-consensus.json"

[[chain]]
id = "osmosis-1"
key_format = { type = "bech32", account_key_prefix = "osmopub", consensus_key_prefix = "osmovalconspub" }
state_file = "/var/lib/tmkms/state/osmosis-1-consensus.json"

## Signing Provider Configuration

[[providers.softsign]]
chain_ids = ["cosmoshub-4", "osmosis-1"]
key_type = "consensus"
path = "/var/lib/tmkms/secrets/consensus.key"

## Validator Configuration

[[validator]]
chain_id = "cosmoshub-4"
addr = "tcp://f88883b673fc69d7869cab098de3bafc2ff76eb8@10.0.1.5:26658"
secret_key = "/var/lib/tmkms/secrets/kms-identity.key"
protocol_version = "v0.34"
reconnect = true

[[validator]]
chain_id = "osmosis-1"
addr = "tcp://10.0.2.5:26658"
secret_key = "/var/lib/tmkms/secrets/kms-identity.key"
protocol_version = "v0.34"
reconnect = false
`

const yubihsmProvider = `
[[providers.yubihsm]]
adapter = { type = "usb" }
auth = { key = 1, password_file = "/var/lib/tmkms/secrets/yubihsm-password.txt" }
keys = [{ chain_ids = ["osmosis-1"], key = 1 }]
serial_number = "9876543210"
`

// clusterBlock is what an operator adds to the import's output.
const clusterBlock = `
cluster:
  node_id: node1
  raft_addr: 10.0.0.11:7001
  api_addr: 10.0.0.11:7101
`

// loadWithCluster parses an import's output plus a cluster block in a home
// holding the identity.json kms-ha init writes.
func loadWithCluster(t *testing.T, out []byte) (*config.Config, error) {
	t.Helper()
	home := t.TempDir()
	if err := (&p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}).SaveAs(filepath.Join(home, "identity.json")); err != nil {
		t.Fatal(err)
	}
	return config.Parse(append(out, clusterBlock...), home)
}

func mustTMKMS(t *testing.T, toml string, opts Options) (*Result, []byte) {
	t.Helper()
	r, err := TMKMS([]byte(toml), "tmkms.toml", opts)
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.YAML()
	if err != nil {
		t.Fatal(err)
	}
	return r, out
}

func TestTMKMSSoftsignTranslatesAndLoads(t *testing.T) {
	r, out := mustTMKMS(t, tmkmsTOML, Options{})
	if len(r.Refused) != 0 {
		t.Fatalf("refused %v", r.Refused)
	}
	c, err := loadWithCluster(t, out)
	if err != nil {
		t.Fatalf("the output does not load with a cluster block: %v\n%s", err, out)
	}
	if len(c.Chains) != 2 || len(c.Validators) != 2 || len(c.Keys) != 1 {
		t.Fatalf("chains %d, validators %d, keys %d; want 2, 2, 1\n%s", len(c.Chains), len(c.Validators), len(c.Keys), out)
	}
	v0, v1 := c.Validators[0], c.Validators[1]
	if v0.Addr != "tcp://f88883b673fc69d7869cab098de3bafc2ff76eb8@10.0.1.5:26658" || !v0.ShouldReconnect() {
		t.Errorf("validator 0: the pinned address and reconnect must carry over: %+v", v0)
	}
	if v1.ShouldReconnect() || filepath.Base(v1.IdentityKey) != "identity.json" {
		t.Errorf("validator 1: reconnect = false and kms-ha's identity.json: %+v", v1)
	}
	if k := c.Keys[0]; k.Backend != "file" || k.KeyFile != "/var/lib/tmkms/secrets/consensus.key" || strings.Join(k.ChainIDs, ",") != "cosmoshub-4,osmosis-1" {
		t.Errorf("key: %+v", k)
	}
	for _, want := range []string{
		"# kms.yaml sections translated from tmkms.toml (kms-ha config import --from tmkms).",
		"#   - validator[0].secret_key, validator[1].secret_key:\n#     /var/lib/tmkms/secrets/kms-identity.key is tmkms's",
		"#   - validator[0].protocol_version, validator[1].protocol_version: v0.34",
		"kms-ha state import --home ~/.kms-ha --chain cosmoshub-4 --format tmkms /var/lib/tmkms/state/cosmoshub-4-consensus.json",
		"kms-ha state import --home ~/.kms-ha --chain osmosis-1 --format tmkms /var/lib/tmkms/state/osmosis-1-consensus.json",
		"chain_ids: [cosmoshub-4, osmosis-1]",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "NOT TRANSLATED") {
		t.Errorf("nothing was refused, yet the header says so:\n%s", out)
	}
}

// Each tmkms.toml item the import cannot translate is refused with its
// name, the chains it served and a reason; the rest still translates.
func TestTMKMSRefusesWhatItCannotTranslate(t *testing.T) {
	oneChainSoftsign := strings.Replace(tmkmsTOML, `chain_ids = ["cosmoshub-4", "osmosis-1"]`, `chain_ids = ["cosmoshub-4"]`, 1)
	cases := []struct {
		name, toml, where, reason string
	}{
		{"yubihsm", oneChainSoftsign + yubihsmProvider, "providers.yubihsm[0] (osmosis-1)", "inside a YubiHSM 2"},
		{"ledger", oneChainSoftsign + "\n[[providers.ledgertm]]\nchain_ids = [\"osmosis-1\"]\n",
			"providers.ledgertm[0] (osmosis-1)", "Ledger device"},
		{"hashicorp", oneChainSoftsign + "\n[[providers.hashicorp]]\napi_endpoint = \"https://vault:8200\"\nkeys = [{ chain_id = \"osmosis-1\", key = \"osmo\" }]\n",
			"providers.hashicorp[0] (osmosis-1)", "HashiCorp Vault"},
		{"account key", oneChainSoftsign + "\n[[providers.softsign]]\nchain_ids = [\"osmosis-1\"]\nkey_type = \"account\"\npath = \"/k\"\n",
			"providers.softsign[1] (osmosis-1)", "account key (secp256k1)"},
		{"chain without key", oneChainSoftsign, "chain[1]", "chain osmosis-1 has no consensus key"},
		{"tx signer", tmkmsTOML + "\n[[tx_signer]]\nchain_id = \"osmosis-1\"\n", "tx_signer", "never transactions"},
		{"validator of another chain", tmkmsTOML + "\n[[validator]]\nchain_id = \"juno-1\"\naddr = \"tcp://10.0.3.5:26658\"\n",
			"validator[2]", `chain_id "juno-1" is not a [[chain]] id`},
	}
	for _, c := range cases {
		r, out := mustTMKMS(t, c.toml, Options{})
		found := false
		for _, it := range r.Refused {
			if it.Where == c.where && strings.Contains(it.Reason, c.reason) {
				found = true
			}
		}
		if !found || len(r.Refused) != 1 {
			t.Errorf("%s: refused %v; want exactly %s: ...%s...", c.name, r.Refused, c.where, c.reason)
			continue
		}
		if !strings.Contains(string(out), "# NOT TRANSLATED") || !strings.Contains(string(out), "#   - "+c.where+":") {
			t.Errorf("%s: the output's header does not list the refusal:\n%s", c.name, out)
		}
		if !r.hasKey("cosmoshub-4") {
			t.Errorf("%s: the softsign key of cosmoshub-4 was lost", c.name)
		}
	}
}

func TestTMKMSNotesWhatItLeavesOut(t *testing.T) {
	toml := strings.Replace(tmkmsTOML, `path = "/var/lib/tmkms/secrets/consensus.key"`, `path = "secrets/consensus.key"`, 1)
	toml = strings.Replace(toml, `reconnect = false`, "reconnect = false\ntimeout = 5\nmax_height = 19000000", 1)
	toml = strings.Replace(toml, `state_file = "/var/lib/tmkms/state/osmosis-1-consensus.json"`,
		`state_hook = { cmd = ["/usr/local/bin/height", "osmosis-1"] }`, 1)
	r, out := mustTMKMS(t, toml, Options{})
	if len(r.Refused) != 0 {
		t.Fatalf("refused %v", r.Refused)
	}
	for _, want := range []string{
		"providers.softsign[0].path: secrets/consensus.key is relative",
		"validator[1].timeout: 5 s",
		"validator[1].max_height: 19000000: kms-ha has no height at which it stops signing",
		"chain[1].state_file: not set",
		"chain[1].state_hook: kms-ha runs no hook",
	} {
		if !contains(r.Notes, want) {
			t.Errorf("no note %q in %v", want, r.Notes)
		}
	}
	if _, err := loadWithCluster(t, out); err != nil {
		t.Fatalf("the output does not load: %v\n%s", err, out)
	}
}

// A key file that exists on this host and is not a key (a tmkms expanded
// key, a shard) is refused with the backend's own reason.
func TestTMKMSKeyThatDoesNotLoadIsRefused(t *testing.T) {
	check := func(path string) error {
		return errors.New("base64 key of 64 bytes is not an Ed25519 seed followed by its public key")
	}
	r, _ := mustTMKMS(t, tmkmsTOML, Options{CheckKey: check})
	if len(r.Refused) != 1 || r.Refused[0].Where != "providers.softsign[0] (cosmoshub-4, osmosis-1)" ||
		!strings.Contains(r.Refused[0].Reason, "/var/lib/tmkms/secrets/consensus.key cannot be used as key_file: base64 key of 64 bytes") {
		t.Fatalf("refused %v", r.Refused)
	}
}

func TestTMKMSNotATMKMSFile(t *testing.T) {
	for name, in := range map[string]string{
		"not toml":      "[[chain]\nid = ",
		"no sections":   "title = \"x\"\n",
		"wrong types":   "[[chain]]\nid = 5\n",
		"horcrux yaml":  "signMode: threshold\nchainNodes:\n- privValAddr: tcp://x:1\n",
		"empty":         "",
		"kms.yaml text": "chains:\n  - id: x\n",
	} {
		if _, err := TMKMS([]byte(in), "tmkms.toml", Options{}); err == nil || !strings.Contains(err.Error(), "tmkms.toml") {
			t.Errorf("%s: got %v, want an error naming the file", name, err)
		}
	}
}

func contains(items []Item, s string) bool {
	for _, it := range items {
		if strings.Contains(it.String(), s) {
			return true
		}
	}
	return false
}
