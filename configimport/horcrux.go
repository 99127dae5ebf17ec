package configimport

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"

	"gopkg.in/yaml.v3"
)

// horcruxConfig is horcrux v3's config.yaml (signer/config.go).
type horcruxConfig struct {
	KeyDir        string `yaml:"keyDir"`
	SignMode      string `yaml:"signMode"`
	ThresholdMode *struct {
		Threshold int `yaml:"threshold"`
		Cosigners []struct {
			ShardID int    `yaml:"shardID"`
			P2PAddr string `yaml:"p2pAddr"`
		} `yaml:"cosigners"`
		GRPCTimeout string `yaml:"grpcTimeout"`
		RaftTimeout string `yaml:"raftTimeout"`
	} `yaml:"thresholdMode"`
	ChainNodes []struct {
		PrivValAddr string `yaml:"privValAddr"`
	} `yaml:"chainNodes"`
	DebugAddr   string `yaml:"debugAddr"`
	GRPCAddr    string `yaml:"grpcAddr"`
	MaxReadSize int    `yaml:"maxReadSize"`
}

// HorcruxOptions are what horcrux's config.yaml does not say.
type HorcruxOptions struct {
	Options
	// ChainID is the chain the chainNodes run: horcrux learns it from the
	// validator's requests and its config does not name it. Required.
	ChainID string
	// KeyFile is the whole consensus key, a priv_validator_key.json. In
	// threshold mode no file of horcrux's holds it; in single mode it
	// defaults to horcrux's own <keyDir>/<chain>_priv_validator_key.json.
	KeyFile string
	// Home is horcrux's home (the directory of config.yaml): where its key
	// files and state/ live.
	Home string
}

var horcruxKnown = map[string]bool{"keyDir": true, "signMode": true, "thresholdMode": true, "chainNodes": true,
	"debugAddr": true, "grpcAddr": true, "maxReadSize": true}

// Horcrux translates a horcrux config.yaml for one chain.
func Horcrux(data []byte, source string, opts HorcruxOptions) (*Result, error) {
	if opts.ChainID == "" {
		return nil, fmt.Errorf("configimport: horcrux's config.yaml does not name its chain: give the chain id")
	}
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil {
		return nil, fmt.Errorf("configimport: %s is not YAML: %w", source, err)
	}
	var c horcruxConfig
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&c); err != nil {
		return nil, fmt.Errorf("configimport: %s is not a horcrux config.yaml: %w", source, err)
	}
	if c.SignMode == "" && len(c.ChainNodes) == 0 {
		return nil, fmt.Errorf("configimport: %s has neither signMode nor chainNodes: not a horcrux v3 config.yaml", source)
	}
	r := &Result{From: "horcrux", Source: source}
	for _, k := range sortedKeys(top) {
		if !horcruxKnown[k] {
			r.refuse(k, "not a horcrux v3 config.yaml field this import knows; nothing of it was translated")
		}
	}
	r.File.Chains = []Chain{{ID: opts.ChainID}}
	horcruxNodes(r, &c, opts)
	horcruxKey(r, &c, opts)
	horcruxRest(r, &c)
	return r, nil
}

func horcruxNodes(r *Result, c *horcruxConfig, opts HorcruxOptions) {
	if len(c.ChainNodes) == 0 {
		r.refuse("chainNodes", "empty: list the validators' priv_validator_laddr under validators by hand")
	}
	for i, n := range c.ChainNodes {
		where := fmt.Sprintf("chainNodes[%d].privValAddr", i)
		addr := n.PrivValAddr
		if addr == "" {
			r.refuse(where, "empty")
			continue
		}
		if !strings.Contains(addr, "://") {
			addr = "tcp://" + addr
			r.note(where, "%s has no scheme; horcrux dials it over tcp, so it became %s", n.PrivValAddr, addr)
		}
		v := Validator{ChainID: opts.ChainID, Addr: addr}
		if !strings.HasPrefix(strings.ToLower(addr), "unix://") {
			v.IdentityKey = opts.identityKey()
		}
		r.File.Validators = append(r.File.Validators, v)
	}
	if len(r.File.Validators) > 1 {
		r.note("chainNodes", "all %d nodes were given chain %s: horcrux's config does not say which chain a node "+
			"runs; remove the nodes of other chains", len(r.File.Validators), opts.ChainID)
	}
}

func horcruxKey(r *Result, c *horcruxConfig, opts HorcruxOptions) {
	chains := []string{opts.ChainID}
	keyDir := c.KeyDir
	if keyDir == "" {
		keyDir = opts.Home
	}
	stateDir := filepath.Join(opts.Home, "state")
	switch {
	case opts.KeyFile != "":
		r.addKey(opts.Options, "keys", Key{ChainIDs: chains, Backend: "file", KeyFile: opts.KeyFile})
	case c.SignMode == "single":
		path := filepath.Join(keyDir, opts.ChainID+"_priv_validator_key.json")
		r.addKey(opts.Options, "keys", Key{ChainIDs: chains, Backend: "file", KeyFile: path})
	default:
		r.refuseChains("keys", chains, fmt.Sprintf("signMode %s: every cosigner holds %s_shard.json, one shard of "+
			"the key, and no shard can sign alone (threshold Ed25519: the key is never assembled). kms-ha needs "+
			"the whole key on every node: give the priv_validator_key.json the shards were made from "+
			"(--key-file), or rotate to a new consensus key (docs/migration.md)", orThreshold(c.SignMode), opts.ChainID))
	}
	state := filepath.Join(stateDir, opts.ChainID+"_priv_validator_state.json")
	cmd := fmt.Sprintf("kms-ha state import --home ~/.kms-ha --chain %s --format horcrux %s", opts.ChainID, state)
	if c.SignMode == "single" {
		r.Next = append(r.Next, cmd)
		return
	}
	r.Next = append(r.Next, cmd+"   # on every cosigner: the cluster keeps the highest")
}

func orThreshold(mode string) string {
	if mode == "" {
		return "threshold"
	}
	return mode
}

func horcruxRest(r *Result, c *horcruxConfig) {
	if t := c.ThresholdMode; t != nil {
		if n := len(t.Cosigners); n > 0 {
			r.note("thresholdMode.cosigners", "%d cosigners: run a kms-ha node on each host (3 or 5 in all), each with "+
				"the whole key, its own cluster block (kms-ha init) and certificates (kms-ha certs); the cosigners' "+
				"p2pAddr are not kms-ha raft addresses", n)
		}
		if t.RaftTimeout != "" {
			r.note("thresholdMode.raftTimeout", "%s: kms-ha's raft timings are cluster.heartbeat_timeout, "+
				"election_timeout and leader_lease_timeout (LAN defaults 500ms/500ms/250ms; raise them together "+
				"across regions)", t.RaftTimeout)
		}
		if t.GRPCTimeout != "" {
			r.note("thresholdMode.grpcTimeout", "%s: kms-ha has no cosigner RPC; cluster.apply_timeout (2s) bounds "+
				"how long a signature waits for its commit", t.GRPCTimeout)
		}
	}
	if c.DebugAddr != "" {
		r.File.Metrics = &Metrics{Listen: c.DebugAddr}
		r.note("debugAddr", "%s became metrics.listen (/metrics, /healthz, /readyz); the metric names are "+
			"kms-ha's (kmsha_*), so dashboards and alerts need new queries", c.DebugAddr)
	}
	if c.GRPCAddr != "" {
		r.note("grpcAddr", "%s: horcrux's remote-signer gRPC has no counterpart (kms-ha's grpc block is cosmos/kms's "+
			"SignerService, another API)", c.GRPCAddr)
	}
	if c.MaxReadSize != 0 {
		r.note("maxReadSize", "%d: kms-ha bounds privval frames itself", c.MaxReadSize)
	}
}
