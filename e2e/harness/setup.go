package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Config describes a kms-ha cluster and the chains it signs for: one
// single-validator chain (Comet), several (Chains), or the remote validator
// of a multi-validator testnet (Testnet). Set at most one of the three.
type Config struct {
	// Dir holds every home directory and log; created if missing.
	Dir   string
	Bin   Binaries
	Nodes int // default 3
	// Comet shapes the one chain of a single-chain cluster.
	Comet CometOptions
	// Chains, if set, replaces Comet: one single-validator chain per entry,
	// each with its own key, all signed for by the same kms-ha cluster.
	// Chain ids must differ; Name defaults to "cometbft-<chain id>".
	Chains []CometOptions
	// Testnet, if set, replaces Comet: a multi-validator chain whose remote
	// validator kms-ha signs for, on every node that runs it (see
	// Cluster.Testnet).
	Testnet *TestnetOptions
	Raft    RaftTimings
	// Logf receives progress messages; nil discards them.
	Logf func(format string, args ...any)
	// Metrics gives every node a /metrics, /healthz and /readyz address.
	Metrics bool
	// Setup, if set, adjusts each node (Proc.Env, ...) and its chain
	// entries (transport addresses, key backend) before its kms.yaml is
	// written.
	Setup func(n *KMSNode, chains []ChainConfig) []ChainConfig
	// NodeHost, if set, gives each kms-ha node (by id: node1, node2, ...)
	// the IP address of a host of its own: Raft on port 7000, the cluster
	// API on 7001, metrics on 7002. Default 127.0.0.1 with free ports.
	NodeHost func(id string) string
}

// Cluster is N kms-ha nodes plus the cometbft validators they sign for, one
// per chain.
type Cluster struct {
	Dir    string
	LogDir string
	Bin    Binaries
	Nodes  []*KMSNode
	// Comets are the validators that wait for kms-ha: one per chain, in
	// Config order, or the testnet's remote validator nodes (active first).
	Comets []*CometNode
	// Comet is Comets[0]: the chain of a single-chain cluster, and the one
	// whose blocks time a failover's headline figures.
	Comet *CometNode
	// Testnet is the multi-validator chain of Config.Testnet, nil without
	// one. Its local validators are the test's to start (StartLocal); Close
	// stops them after the signers.
	Testnet *Testnet

	logf func(format string, args ...any)
}

// New prepares every home directory (cometbft init, kms-ha init, kms.yaml)
// without starting anything.
func New(ctx context.Context, cfg Config) (*Cluster, error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, LogDir: filepath.Join(dir, "logs"), Bin: cfg.Bin, logf: cfg.Logf}
	if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
		return nil, err
	}
	var chains []ChainConfig
	if cfg.Testnet != nil {
		if cfg.Comet != (CometOptions{}) || len(cfg.Chains) > 0 {
			return nil, errors.New("harness: set one of Config.Comet, Config.Chains and Config.Testnet")
		}
		chains, err = c.newTestnet(ctx, *cfg.Testnet)
	} else {
		chains, err = c.newChains(ctx, cfg)
	}
	if err != nil {
		return nil, err
	}
	c.Comet = c.Comets[0]
	if err := c.newSigners(ctx, cfg, chains); err != nil {
		return nil, err
	}
	return c, nil
}

// newChains prepares one single-validator chain per Config.Chains entry (or
// Config.Comet) and returns the kms.yaml entries that sign for them.
func (c *Cluster) newChains(ctx context.Context, cfg Config) ([]ChainConfig, error) {
	chainOpts := []CometOptions{cfg.Comet}
	if len(cfg.Chains) > 0 {
		if cfg.Comet != (CometOptions{}) {
			return nil, errors.New("harness: set Config.Comet or Config.Chains, not both")
		}
		chainOpts = append([]CometOptions(nil), cfg.Chains...)
		for i := range chainOpts {
			if chainOpts[i].Name == "" && len(chainOpts) > 1 {
				chainOpts[i].Name = "cometbft-" + chainOpts[i].ChainID
			}
		}
	}
	seenID, seenName := map[string]bool{}, map[string]bool{}
	var chains []ChainConfig
	for _, o := range chainOpts {
		o.defaults()
		if seenID[o.ChainID] || seenName[o.Name] {
			return nil, fmt.Errorf("harness: two chains with chain id %q or name %q", o.ChainID, o.Name)
		}
		seenID[o.ChainID], seenName[o.Name] = true, true
		bin := cfg.Bin.CometBFT
		if o.Bin != "" {
			bin = o.Bin
		}
		n, err := NewComet(ctx, bin, c.Dir, o)
		if err != nil {
			return nil, err
		}
		c.logf("%s: validator home %s, chain %q, waits for its signer on %s, RPC on %s",
			n.Name, n.Home, n.ChainID, n.PrivvalAddr, n.RPCAddr)
		c.Comets = append(c.Comets, n)
		chains = append(chains, n.ChainConfig())
	}
	return chains, nil
}

// newTestnet prepares a testnet and returns the one chain entry that signs
// for its remote validator: one key, and one validators entry per node of
// the remote validator, so the leader serves the active node and every
// standby at once. Comets become the remote validator's nodes: the nodes
// that wait for kms-ha and that StartChain and KillLeader handle.
func (c *Cluster) newTestnet(ctx context.Context, opts TestnetOptions) ([]ChainConfig, error) {
	tn, err := NewTestnet(ctx, c.Bin.CometBFT, c.Dir, opts)
	if err != nil {
		return nil, err
	}
	c.Testnet = tn
	for _, n := range tn.Nodes {
		what := "signs with its own key"
		if n.KeyFile == tn.RemoteKeyFile {
			what = "waits for its signer on " + n.PrivvalAddr
		}
		c.logf("%s: home %s, chain %q, %s, RPC on %s, P2P on %s", n.Name, n.Home, n.ChainID, what, n.RPCAddr, n.P2PAddr)
	}
	c.Comets = tn.Remote
	chain := tn.Remote[0].ChainConfig()
	for _, n := range tn.Remote {
		chain.Addrs = append(chain.Addrs, "tcp://"+n.PrivvalAddr)
	}
	return []ChainConfig{chain}, nil
}

// newSigners prepares the kms-ha homes (kms-ha init, kms.yaml).
func (c *Cluster) newSigners(ctx context.Context, cfg Config, chains []ChainConfig) error {
	ports, err := FreePorts(3 * cfg.Nodes)
	if err != nil {
		return err
	}
	for i := 0; i < cfg.Nodes; i++ {
		id := fmt.Sprintf("node%d", i+1)
		n := newKMSNode(cfg.Bin.KMSHA, id, filepath.Join(c.Dir, id), filepath.Join(c.LogDir, id+".log"),
			ports[3*i], ports[3*i+1])
		if cfg.Metrics {
			n.MetricsAddr = loopback(ports[3*i+2])
		}
		if cfg.NodeHost != nil {
			h := cfg.NodeHost(id)
			n.RaftAddr, n.APIAddr = h+":7000", h+":7001"
			if cfg.Metrics {
				n.MetricsAddr = h + ":7002"
			}
		}
		if err := n.Init(ctx); err != nil {
			return err
		}
		nodeChains := append([]ChainConfig(nil), chains...)
		if cfg.Setup != nil {
			nodeChains = cfg.Setup(n, nodeChains)
		}
		if err := n.WriteConfig(nodeChains, cfg.Raft); err != nil {
			return err
		}
		c.logf("%s: home %s, Raft on %s, cluster API on %s", id, n.Home, n.RaftAddr, n.APIAddr)
		c.Nodes = append(c.Nodes, n)
	}
	return nil
}
