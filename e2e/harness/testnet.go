package harness

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cometbft/cometbft/p2p"
)

// TestnetOptions shape a multi-validator chain on loopback in which one
// validator's key is held by kms-ha and that validator may run on several
// cometbft nodes (an active node and hot standbys).
type TestnetOptions struct {
	ChainID string // default "e2e-testnet"
	// Powers has one entry per validator, in order; the validators are named
	// val1, val2, ... Default: four validators of power 10.
	Powers []int64
	// Remote is the number (1-based, as in the names) of the validator
	// whose key kms-ha holds; default the last one.
	Remote int
	// RemoteNodes is the number of cometbft nodes that run the remote
	// validator, all with a remote signer: the first is named valN, the
	// others valN-standby, valN-standby2, ... Default 1.
	RemoteNodes int
	// Consensus timeouts, as in CometOptions; defaults 100ms, 1s, 500ms.
	TimeoutCommit  time.Duration
	TimeoutPropose time.Duration
	TimeoutVote    time.Duration
	// Gossip is flush_throttle_timeout and peer_gossip_sleep_duration;
	// default 10ms, which makes a 4-validator net about 7 blocks/s.
	Gossip time.Duration
	// Host, if set, gives each node (by name: val1, val2, ...) the IP
	// address of a host of its own; see CometOptions.Host.
	Host func(name string) string
}

func (o *TestnetOptions) defaults() {
	if o.ChainID == "" {
		o.ChainID = "e2e-testnet"
	}
	if len(o.Powers) == 0 {
		o.Powers = []int64{10, 10, 10, 10}
	}
	if o.Remote == 0 {
		o.Remote = len(o.Powers)
	}
	if o.RemoteNodes == 0 {
		o.RemoteNodes = 1
	}
	if o.TimeoutCommit == 0 {
		o.TimeoutCommit = 100 * time.Millisecond
	}
	if o.TimeoutPropose == 0 {
		o.TimeoutPropose = time.Second
	}
	if o.TimeoutVote == 0 {
		o.TimeoutVote = 500 * time.Millisecond
	}
	if o.Gossip == 0 {
		o.Gossip = 10 * time.Millisecond
	}
}

// Testnet is a multi-validator chain whose nodes peer with each other on
// 127.0.0.1. The local validators sign with their own key files; the remote
// validator's nodes wait for kms-ha.
type Testnet struct {
	ChainID string
	// Nodes are every node: the validators in order, the remote validator's
	// standbys right after its active node.
	Nodes []*CometNode
	// Local are the validators that sign with their own key file.
	Local []*CometNode
	// Remote are the nodes of the remote validator, active node first.
	Remote []*CometNode
	// Validators are the genesis validators, in TestnetOptions.Powers order.
	Validators []ValidatorKey
	// RemoteKey is the remote validator's key; its private half is in
	// RemoteKeyFile, which only kms-ha reads.
	RemoteKey     ValidatorKey
	RemoteKeyFile string
}

// NewTestnet creates the homes of every node (cometbft init), one genesis
// with every validator, and full-mesh persistent peers. Nothing is started.
//
// It follows `cometbft testnet`'s steps in order (over 80 lines for that
// reason).
func NewTestnet(ctx context.Context, bin, dir string, opts TestnetOptions) (*Testnet, error) {
	opts.defaults()
	remote := opts.Remote - 1
	if remote < 0 || remote >= len(opts.Powers) {
		return nil, fmt.Errorf("testnet: remote validator %d out of range (%d validators)", opts.Remote, len(opts.Powers))
	}
	tn := &Testnet{ChainID: opts.ChainID}
	co := func(name string, local bool) CometOptions {
		o := CometOptions{ChainID: opts.ChainID, Name: name, LocalSigner: local,
			TimeoutCommit: opts.TimeoutCommit, TimeoutPropose: opts.TimeoutPropose, TimeoutVote: opts.TimeoutVote}
		if opts.Host != nil {
			o.Host = opts.Host(name)
		}
		return o
	}
	// primary[i] is the node whose init created validator i's key.
	var primary []*CometNode
	for i := range opts.Powers {
		name := fmt.Sprintf("val%d", i+1)
		if i != remote {
			n, err := NewComet(ctx, bin, dir, co(name, true))
			if err != nil {
				return nil, err
			}
			tn.Local = append(tn.Local, n)
			tn.Nodes = append(tn.Nodes, n)
			primary = append(primary, n)
			continue
		}
		for k := 0; k < opts.RemoteNodes; k++ {
			nm := name
			switch {
			case k == 1:
				nm = name + "-standby"
			case k > 1:
				nm = fmt.Sprintf("%s-standby%d", name, k)
			}
			n, err := NewComet(ctx, bin, dir, co(nm, false))
			if err != nil {
				return nil, err
			}
			tn.Remote = append(tn.Remote, n)
			tn.Nodes = append(tn.Nodes, n)
		}
		primary = append(primary, tn.Remote[0])
		// Every node of the remote validator signs with the same key,
		// through kms-ha; the key files their own init created are unused.
		tn.RemoteKeyFile = tn.Remote[0].KeyFile
		for _, n := range tn.Remote[1:] {
			n.KeyFile = tn.RemoteKeyFile
		}
	}

	// One genesis for all: the first node's, with every validator in it.
	var vals []any
	for i, n := range primary {
		k, err := LoadValidatorKey(n.KeyFile)
		if err != nil {
			return nil, err
		}
		tn.Validators = append(tn.Validators, k)
		entry, err := ownGenesisValidator(n.GenesisPath(), k)
		if err != nil {
			return nil, err
		}
		entry["power"] = fmt.Sprint(opts.Powers[i])
		entry["name"] = fmt.Sprintf("val%d", i+1)
		vals = append(vals, entry)
	}
	tn.RemoteKey = tn.Validators[remote]
	genesis := tn.Nodes[0].GenesisPath()
	if err := editGenesis(genesis, func(g map[string]any) error {
		g["validators"] = vals
		g["chain_id"] = opts.ChainID
		return nil
	}); err != nil {
		return nil, err
	}
	data, err := os.ReadFile(genesis)
	if err != nil {
		return nil, err
	}
	for _, n := range tn.Nodes[1:] {
		if err := os.WriteFile(n.GenesisPath(), data, 0o644); err != nil {
			return nil, err
		}
	}

	// Full mesh of persistent peers.
	addrs := make([]string, len(tn.Nodes))
	for i, n := range tn.Nodes {
		nk, err := p2p.LoadNodeKey(filepath.Join(n.Home, "config", "node_key.json"))
		if err != nil {
			return nil, err
		}
		addrs[i] = p2p.IDAddressString(nk.ID(), n.P2PAddr)
	}
	dur := func(d time.Duration) string { return tomlString(d.String()) }
	for i, n := range tn.Nodes {
		var peers []string
		for j, a := range addrs {
			if j != i {
				peers = append(peers, a)
			}
		}
		if err := n.editConfig([]tomlSetting{
			{"p2p", "persistent_peers", tomlString(strings.Join(peers, ","))},
			{"p2p", "flush_throttle_timeout", dur(opts.Gossip)},
			{"consensus", "peer_gossip_sleep_duration", dur(opts.Gossip)},
		}); err != nil {
			return nil, err
		}
	}
	return tn, nil
}

// ownGenesisValidator returns the validators entry that `cometbft init`
// wrote for the node's own key, checked against k.
func ownGenesisValidator(path string, k ValidatorKey) (map[string]any, error) {
	g, err := readGenesis(path)
	if err != nil {
		return nil, err
	}
	vs, ok := g["validators"].([]any)
	if !ok || len(vs) != 1 {
		return nil, fmt.Errorf("%s: want exactly one validator from cometbft init", path)
	}
	entry, ok := vs[0].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: validators[0] is not an object", path)
	}
	if a, _ := entry["address"].(string); !strings.EqualFold(a, k.Address.String()) {
		return nil, fmt.Errorf("%s: validators[0].address %s is not the node's key %s", path, a, k.Address)
	}
	return entry, nil
}

// StartLocal starts the validators that sign with their own keys.
func (tn *Testnet) StartLocal() error {
	for _, n := range tn.Local {
		if err := n.Proc.Start(); err != nil {
			return err
		}
	}
	return nil
}

// Close SIGKILLs every node of the testnet.
func (tn *Testnet) Close() {
	for _, n := range tn.Nodes {
		_ = n.Proc.Kill()
	}
}

// Running returns the nodes that are running, in Nodes order.
func (tn *Testnet) Running() []*CometNode {
	var out []*CometNode
	for _, n := range tn.Nodes {
		if n.Proc.Running() {
			out = append(out, n)
		}
	}
	return out
}

// BroadcastTxAsync submits tx to the node's mempool (RPC
// broadcast_tx_async) and returns the CheckTx code, which the async variant
// reports as 0 unless the mempool refused it outright.
func (n *CometNode) BroadcastTxAsync(ctx context.Context, tx string) error {
	var r struct {
		Code uint32 `json:"code"`
		Log  string `json:"log"`
		Hash string `json:"hash"`
	}
	if err := n.rpc(ctx, "/broadcast_tx_async?tx="+url.QueryEscape(`"`+tx+`"`), &r); err != nil {
		return err
	}
	if r.Code != 0 {
		return fmt.Errorf("broadcast_tx_async %q: code %d: %s", tx, r.Code, r.Log)
	}
	return nil
}

// TxCount returns the number of transactions in block h.
func (n *CometNode) TxCount(ctx context.Context, h int64) (int, error) {
	var r struct {
		Block struct {
			Data struct {
				Txs []string `json:"txs"`
			} `json:"data"`
		} `json:"block"`
	}
	if err := n.rpc(ctx, fmt.Sprintf("/block?height=%d", h), &r); err != nil {
		return 0, err
	}
	return len(r.Block.Data.Txs), nil
}
