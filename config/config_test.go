package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/p2p"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/transport"
)

const clusterBlock = `
cluster:
  node_id: node1
  raft_addr: 127.0.0.1:7001
  api_addr: 127.0.0.1:7101
`

// The examples of the cosmos/kms README, unchanged but for the cluster block.
const singleChain = `
chains:
  - id: cosmoshub-4
    # state_file defaults to <home>/state/cosmoshub-4.json when omitted
validators:
  - chain_id: cosmoshub-4
    addr: tcp://10.0.0.1:26659
    identity_key: identity.json # relative to --home
keys:
  - chain_ids: [cosmoshub-4]
    backend: file
    key_file: /secrets/priv_validator_key.json
` + clusterBlock

const multiChain = `
chains:
  - id: cosmoshub-4
  - id: osmosis-1
validators:
  - chain_id: cosmoshub-4
    addr: tcp://10.0.0.1:26659
    identity_key: identity.json
  - chain_id: osmosis-1
    addr: tcp://10.0.0.2:26659
    identity_key: identity.json
keys:
  - chain_ids: [cosmoshub-4]
    backend: file
    key_file: /secrets/cosmoshub_priv_validator_key.json
  - chain_ids: [osmosis-1]
    backend: file
    key_file: /secrets/osmosis_priv_validator_key.json
` + clusterBlock

// homeWithIdentity is a --home holding the identity.json `kms-ha init`
// writes, which validators entries over tcp:// and noise:// need.
func homeWithIdentity(t *testing.T) string {
	t.Helper()
	home := t.TempDir()
	if err := (&p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}).SaveAs(filepath.Join(home, "identity.json")); err != nil {
		t.Fatal(err)
	}
	return home
}

func TestCosmosKMSExamplesLoad(t *testing.T) {
	home := homeWithIdentity(t)
	c, err := Parse([]byte(singleChain), home)
	if err != nil {
		t.Fatalf("single-chain example: %v", err)
	}
	if c.Validators[0].IdentityKey != filepath.Join(home, "identity.json") {
		t.Fatalf("identity_key not resolved against home: %s", c.Validators[0].IdentityKey)
	}
	if !c.Validators[0].ShouldReconnect() || c.Keys[0].Algorithm != "ed25519" {
		t.Fatal("defaults: reconnect true, algorithm ed25519")
	}
	if c.Cluster.DataDir != filepath.Join(home, "raft") || c.Cluster.AdvertiseAddr != "127.0.0.1:7001" {
		t.Fatalf("cluster defaults: %+v", c.Cluster)
	}
	if c.Cluster.HeartbeatTimeout != cluster.DefaultHeartbeatTimeout || c.Cluster.ApplyTimeout != 2*time.Second {
		t.Fatal("raft timeouts do not default to the LAN values")
	}
	c, err = Parse([]byte(multiChain), home)
	if err != nil {
		t.Fatalf("multi-chain example: %v", err)
	}
	if len(c.Chains) != 2 || len(c.Keys) != 2 {
		t.Fatal("multi-chain example lost entries")
	}
}

func TestTemplateLoads(t *testing.T) {
	if _, err := Parse(Template(TemplateParams{NodeID: "n1", RaftAddr: "127.0.0.1:1", APIAddr: "127.0.0.1:2"}), t.TempDir()); err != nil {
		t.Fatalf("the init template does not load: %v", err)
	}
}

func TestValidationNamesTheField(t *testing.T) {
	pid, err := transport.PeerID(ed25519.GenPrivKey())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, yaml, want string
	}{
		{"no cluster", strings.Replace(singleChain, clusterBlock, "", 1), "cluster.node_id: is required"},
		{"bad node id", strings.Replace(singleChain, "node_id: node1", "node_id: 'a b'", 1), "cluster.node_id"},
		{"unspecified advertise", strings.Replace(singleChain, "raft_addr: 127.0.0.1:7001", "raft_addr: 0.0.0.0:7001", 1), "cluster.advertise_addr"},
		{"beyond loopback over mTLS", strings.Replace(singleChain, "api_addr: 127.0.0.1:7101", "api_addr: 10.0.0.5:7101", 1), ""},
		{"plaintext is gone", strings.Replace(singleChain, "api_addr: 127.0.0.1:7101", "api_addr: 10.0.0.5:7101\n  allow_plaintext_network: true", 1), "cluster.allow_plaintext_network: is no longer supported"},
		{"unknown chain", strings.Replace(singleChain, "- chain_id: cosmoshub-4", "- chain_id: nope", 1), "validators[0].chain_id: \"nope\" is not declared"},
		{"bad scheme", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "http://10.0.0.1:26659", 1), "validators[0].addr"},
		{"no port", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "tcp://10.0.0.1", 1), "validators[0].addr"},
		{"two keys", multiChain + "", ""},
		{"missing key", strings.Replace(singleChain, "chain_ids: [cosmoshub-4]", "chain_ids: []", 1), "chain \"cosmoshub-4\" has no key"},
		{"unknown backend", strings.Replace(singleChain, "backend: file", "backend: vault", 1), "keys[0].backend"},
		{"typo", strings.Replace(singleChain, "key_file:", "keyfile:", 1), "field keyfile not found"},
		{"apply timeout", singleChain + "  apply_timeout: 6s\n", "cluster.apply_timeout"},
		{"lease", singleChain + "  leader_lease_timeout: 2s\n", "cluster.leader_lease_timeout"},
		{"grpc without tls", singleChain + "grpc:\n  listen: 10.0.0.1:9090\n  client_ca: ca\n  keys: [{id: a, key_file: a.hex}]\n", "grpc.tls_cert: tls_cert and tls_key are required when grpc.listen"},
		{"grpc plaintext on loopback", singleChain + "grpc:\n  listen: 127.0.0.1:9090\n  keys: [{id: a, key_file: a.hex}]\n", ""},
		{"grpc unknown api", singleChain + "grpc:\n  listen: 127.0.0.1:9090\n  api: v1\n  keys: [{id: a, key_file: a.hex}]\n", `grpc.api: "v1" is unknown`},
		{"grpc file secp256k1", singleChain + "grpc:\n  listen: 127.0.0.1:9090\n  keys: [{id: a, algorithm: secp256k1, key_file: a.hex}]\n",
			`grpc.keys[0].algorithm: "secp256k1" is not offered by backend file`},
		{"grpc pkcs11 needs its fields", singleChain + "grpc:\n  listen: 127.0.0.1:9090\n  keys: [{id: a, backend: pkcs11}]\n", "grpc.keys[0].module: is required"},
		{"handover below the ping interval", singleChain + "  validator_handover_after: 3s\n", "cluster.validator_handover_after: 3s is too short: at least 4s, or 0 to turn the handover off"},
		{"handover negative", singleChain + "  validator_handover_after: -1s\n", "cluster.validator_handover_after"},
		{"handover off", singleChain + "  validator_handover_after: 0s\n", ""},
		{"handover ok", singleChain + "  validator_handover_after: 8s\n", ""},
		{"log store wal", singleChain + "  log_store: wal\n", ""},
		{"log store bolt", singleChain + "  log_store: bolt\n", ""},
		{"log store unknown", singleChain + "  log_store: badger\n", `cluster.log_store: "badger" is not a log store: "wal" (the default) or "bolt"`},
		{"grpc without keys", singleChain + "grpc:\n  listen: 127.0.0.1:9090\n  tls_cert: c\n  tls_key: k\n", "grpc.keys: is empty"},
		{"grpc ok", singleChain + "grpc:\n  listen: 127.0.0.1:9090\n  tls_cert: c\n  tls_key: k\n  client_ca: ca\n  keys: [{id: a, key_file: a.hex}]\n", ""},
		{"grpc only", "cluster:\n  node_id: n1\n  raft_addr: 127.0.0.1:7001\n  api_addr: 127.0.0.1:7101\n" +
			"grpc:\n  listen: 127.0.0.1:9090\n  tls_cert: c\n  tls_key: k\n  keys: [{id: a, key_file: a.hex}]\n", ""},
		{"pkcs11 two pins", strings.Replace(singleChain, "backend: file", "backend: pkcs11\n    module: /lib/x.so\n    token_label: t\n    key_label: k\n    pin: '1'\n    pin_env: P", 1), "keys[0].pin: set exactly one"},
		{"pkcs11 slot and label", strings.Replace(singleChain, "backend: file", "backend: pkcs11\n    module: /lib/x.so\n    token_label: t\n    slot: 0\n    key_label: k\n    pin_env: P", 1), "keys[0].token_label: set exactly one"},
		{"pkcs11 bad key id", strings.Replace(singleChain, "backend: file", "backend: pkcs11\n    module: /lib/x.so\n    token_label: t\n    key_id: zz\n    pin_env: P", 1), "keys[0].key_id"},
		{"pkcs11 ok", strings.Replace(singleChain, "backend: file", "backend: pkcs11\n    module: /lib/x.so\n    token_label: t\n    key_id: '01'\n    pin_file: pin.txt", 1), ""},
		{"awskms no key", strings.Replace(singleChain, "backend: file", "backend: awskms\n    region: us-east-1", 1), "keys[0].key_id: is required"},
		{"awskms ok", strings.Replace(singleChain, "backend: file", "backend: awskms\n    key_id: alias/validator\n    region: us-east-1", 1), ""},
		{"noise without peer id", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "noise://10.0.0.1:26659", 1), "validators[0].addr: transport: noise address \"noise://10.0.0.1:26659\": missing validator peer ID"},
		{"noise with hostname", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "noise://"+pid+"@validator:26659", 1), "must be an IP"},
		{"noise bad peer id", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "noise://12D3KooWx@10.0.0.1:26659", 1), "validators[0].addr: transport: noise address \"noise://12D3KooWx@10.0.0.1:26659\": \"12D3KooWx\" is not a libp2p peer ID"},
		{"noise ok", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "noise://"+pid+"@10.0.0.1:26659", 1), ""},
		{"unix relative", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "unix://run/pv.sock", 1), "validators[0].addr: transport: unix address \"unix://run/pv.sock\": socket path \"run/pv.sock\" is not absolute"},
		{"unix ok", strings.Replace(singleChain, "tcp://10.0.0.1:26659", "unix:///run/pv.sock", 1), ""},
		{"metrics", singleChain + "metrics:\n  listen: nope\n", "metrics.listen"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), homeWithIdentity(t))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
	dup := strings.Replace(multiChain, "chain_ids: [osmosis-1]", "chain_ids: [cosmoshub-4, osmosis-1]", 1)
	if _, err := Parse([]byte(dup), homeWithIdentity(t)); err == nil || !strings.Contains(err.Error(), "already has a key") {
		t.Fatalf("two keys for one chain: %v", err)
	}
}

// TestHandoverAfter: a missing line is the default, an explicit 0 turns
// the handover off, and both survive Parse.
func TestHandoverAfter(t *testing.T) {
	for _, tc := range []struct {
		line string
		want time.Duration
	}{
		{"", DefaultValidatorHandoverAfter},
		{"  validator_handover_after: 0s\n", 0},
		{"  validator_handover_after: 12s\n", 12 * time.Second},
	} {
		c, err := Parse([]byte(singleChain+tc.line), homeWithIdentity(t))
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Cluster.HandoverAfter(); got != tc.want {
			t.Errorf("%q: handover after %s, want %s", tc.line, got, tc.want)
		}
	}
	if got := (Cluster{}).HandoverAfter(); got != DefaultValidatorHandoverAfter {
		t.Errorf("a Cluster built without Parse hands over after %s, want the default %s", got, DefaultValidatorHandoverAfter)
	}
}

func TestLoadMissingFileSaysWhatToDo(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "nope"))
	if err == nil || !strings.Contains(err.Error(), "kms-ha init") {
		t.Fatalf("got %v", err)
	}
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, FileName), []byte("chains: [\n"), 0o600)
	if _, err := Load(home); err == nil || !strings.Contains(err.Error(), "kms.yaml") {
		t.Fatalf("corrupt file: %v", err)
	}
}

// TestValidatorEntriesUseTheTransportParser: an entry the configuration
// accepts is one the transport dials, and one it cannot dial is refused at
// load time, naming the field, instead of when the node first leads.
func TestValidatorEntriesUseTheTransportParser(t *testing.T) {
	nodeID := strings.Repeat("0f", 20)
	withAddr := func(addr string) string { return strings.Replace(singleChain, "tcp://10.0.0.1:26659", addr, 1) }
	cases := []struct{ name, yaml, want string }{
		// The scheme is case-insensitive, as for the transport.
		{"upper-case scheme", withAddr("TCP://10.0.0.1:26659"), ""},
		{"pinned node id", withAddr("tcp://" + nodeID + "@10.0.0.1:26659"), ""},
		// The old check took "user@10.0.0.1" for a host; the transport
		// never dialled it.
		{"not a node id", withAddr("tcp://user@10.0.0.1:26659"),
			`validators[0].addr: transport: tcp address "tcp://user@10.0.0.1:26659": "user" is not a node id`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml), homeWithIdentity(t))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestIdentityKeyMustLoad: a tcp:// or noise:// entry whose identity file
// is missing, unreadable or of the wrong type fails Load with the field and
// the fix; a unix:// entry needs none.
func TestIdentityKeyMustLoad(t *testing.T) {
	write := func(t *testing.T, home, yaml string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(home, FileName), []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	const fix = "`kms-ha init` writes one as identity.json"

	home := t.TempDir()
	write(t, home, singleChain)
	_, err := Load(home)
	if err == nil || !strings.Contains(err.Error(), "validators[0].identity_key: transport: load identity "+filepath.Join(home, "identity.json")) ||
		!strings.Contains(err.Error(), "no such file") || !strings.Contains(err.Error(), fix) {
		t.Fatalf("missing identity file: %v", err)
	}

	home = t.TempDir()
	write(t, home, singleChain)
	os.WriteFile(filepath.Join(home, "identity.json"), []byte(`{"priv_key":`), 0o600)
	if _, err := Load(home); err == nil || !strings.Contains(err.Error(), "validators[0].identity_key: transport: load identity") {
		t.Fatalf("corrupt identity file: %v", err)
	}

	// SecretConnection needs ed25519; a secp256k1 node key would fail every
	// handshake.
	home = t.TempDir()
	write(t, home, singleChain)
	(&p2p.NodeKey{PrivKey: secp256k1.GenPrivKey()}).SaveAs(filepath.Join(home, "identity.json"))
	if _, err := Load(home); err == nil || !strings.Contains(err.Error(), "validators[0].identity_key: ") ||
		!strings.Contains(err.Error(), "needs an ed25519 identity, got secp256k1") {
		t.Fatalf("secp256k1 identity for tcp://: %v", err)
	}

	home = t.TempDir()
	write(t, home, strings.Replace(singleChain, "identity_key: identity.json # relative to --home", "", 1))
	if _, err := Load(home); err == nil || !strings.Contains(err.Error(), "validators[0].identity_key: is required for tcp:// addresses") ||
		!strings.Contains(err.Error(), fix) {
		t.Fatalf("no identity_key: %v", err)
	}

	// unix:// reads no identity, even one named but absent.
	home = t.TempDir()
	write(t, home, strings.Replace(singleChain, "addr: tcp://10.0.0.1:26659", "addr: unix:///run/pv.sock", 1))
	if _, err := Load(home); err != nil {
		t.Fatalf("unix:// with an absent identity file: %v", err)
	}
	write(t, home, strings.Replace(strings.Replace(singleChain, "addr: tcp://10.0.0.1:26659", "addr: unix:///run/pv.sock", 1),
		"identity_key: identity.json # relative to --home", "", 1))
	if _, err := Load(home); err != nil {
		t.Fatalf("unix:// without identity_key: %v", err)
	}
}

func TestChainFieldsNameWhereKmsYAMLSpellsAChain(t *testing.T) {
	c := &Config{Home: "/h", Chains: []Chain{{ID: "a"}, {ID: "b"}},
		Validators: []Validator{{ChainID: "b"}, {ChainID: "a"}, {ChainID: "b"}},
		Keys:       []Key{{ChainIDs: []string{"a", "b"}}}}
	got := c.ChainFields()
	if want := "validators[0].chain_id, validators[2].chain_id, chains[1].id, keys[0].chain_ids in /h/kms.yaml"; got["b"] != want {
		t.Fatalf("b: %q, want %q", got["b"], want)
	}
}
