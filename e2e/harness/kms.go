package harness

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// RaftTimings are the cluster timings written to every kms.yaml. A zero
// field is left out, so the node runs kms-ha's own default: the tests then
// measure what an operator gets without tuning.
type RaftTimings struct {
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// ValidatorHandoverAfter, if set, is written as
	// cluster.validator_handover_after ("0s" turns the handover off);
	// empty leaves kms-ha's default.
	ValidatorHandoverAfter string
	// LogStore, if set, is written as cluster.log_store ("bolt": raft.db,
	// as releases before the WAL wrote it); empty leaves the default.
	LogStore string
}

// yaml is the timings' lines of the cluster section.
func (r RaftTimings) yaml() string {
	var b strings.Builder
	for _, f := range []struct {
		key string
		v   time.Duration
	}{
		{"heartbeat_timeout", r.HeartbeatTimeout},
		{"election_timeout", r.ElectionTimeout},
		{"leader_lease_timeout", r.LeaderLeaseTimeout},
	} {
		if f.v != 0 {
			fmt.Fprintf(&b, "  %s: %s\n", f.key, f.v)
		}
	}
	if r.ValidatorHandoverAfter != "" {
		fmt.Fprintf(&b, "  validator_handover_after: %s\n", r.ValidatorHandoverAfter)
	}
	if r.LogStore != "" {
		fmt.Fprintf(&b, "  log_store: %s\n", r.LogStore)
	}
	return b.String()
}

// KMSNode is one kms-ha cluster member.
type KMSNode struct {
	ID       string
	Home     string
	RaftAddr string
	APIAddr  string
	// MetricsAddr, if set before WriteConfig, enables /metrics, /healthz
	// and /readyz there.
	MetricsAddr string
	Proc        *Process

	bin string
}

func newKMSNode(bin, id, home, logPath string, raftPort, apiPort int) *KMSNode {
	return &KMSNode{
		ID:       id,
		Home:     home,
		RaftAddr: loopback(raftPort),
		APIAddr:  loopback(apiPort),
		bin:      bin,
		Proc: &Process{
			Name:    id,
			Bin:     bin,
			Args:    []string{"start", "--home", home, "--log-format", "json", "--log-level", "info"},
			Dir:     home,
			LogPath: logPath,
		},
	}
}

// run executes a short kms-ha subcommand and returns its stdout; stderr is
// included in the error because that is where kms-ha explains a refusal.
func (n *KMSNode) run(ctx context.Context, timeout time.Duration, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, n.bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("kms-ha %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()+"\n"+stdout.String()))
	}
	return stdout.Bytes(), nil
}

// Init runs `kms-ha init`, which creates the home with its identity key.
func (n *KMSNode) Init(ctx context.Context) error {
	_, err := n.run(ctx, 30*time.Second, "init", "--home", n.Home, "--node-id", n.ID,
		"--raft-addr", n.RaftAddr, "--api-addr", n.APIAddr)
	if err != nil {
		return err
	}
	for _, f := range []string{"kms.yaml", "identity.json"} {
		if !fileExists(filepath.Join(n.Home, f)) {
			return fmt.Errorf("kms-ha init did not create %s in %s", f, n.Home)
		}
	}
	// Mutual TLS as an operator sets it up: one CA for the cluster (next to
	// the homes), and a certificate per node for the host it is reached at.
	caDir := filepath.Join(filepath.Dir(n.Home), "cluster-ca")
	if !fileExists(filepath.Join(caDir, "ca.crt")) {
		if _, err := n.run(ctx, 30*time.Second, "certs", "ca", "--out", caDir); err != nil {
			return err
		}
	}
	host, _, _ := strings.Cut(n.RaftAddr, ":")
	args := []string{"certs", "issue", "--ca", caDir, "--node-id", n.ID, "--host", host, "--out", filepath.Join(n.Home, "tls")}
	if apiHost, _, _ := strings.Cut(n.APIAddr, ":"); apiHost != host {
		args = append(args, "--host", apiHost)
	}
	_, err = n.run(ctx, 30*time.Second, args...)
	return err
}

// ChainConfig is what a kms-ha node needs to sign for one chain: the chain
// id, the validator's priv_validator_laddr and the consensus key file.
type ChainConfig struct {
	ChainID       string
	ValidatorAddr string // host:port
	KeyFile       string
	// Addrs, if set, replace "tcp://"+ValidatorAddr: full validators[].addr
	// values (tcp://, noise://, unix://), one validators entry each.
	Addrs []string
	// Protocol, if set, is every validators entry's protocol (v0.34,
	// v0.37, v0.38, v1); unset entries use kms-ha's default.
	Protocol string
	// KeyYAML, if set, replaces the file key: the fields of the keys entry
	// after chain_ids, each line indented by four spaces
	// ("    backend: pkcs11\n    module: ...").
	KeyYAML string
}

// ChainConfig is the kms.yaml entry for this validator.
func (n *CometNode) ChainConfig() ChainConfig {
	return ChainConfig{ChainID: n.ChainID, ValidatorAddr: n.PrivvalAddr, KeyFile: n.KeyFile}
}

// WriteConfig replaces the template written by init with the test's
// configuration: per chain, one chains entry, one validators entry and one
// file key, as an operator running one cluster for several chains writes it.
func (n *KMSNode) WriteConfig(chains []ChainConfig, t RaftTimings) error {
	if len(chains) == 0 {
		return fmt.Errorf("%s: WriteConfig: no chains", n.ID)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by the kms-ha e2e harness.
cluster:
  node_id: %s
  data_dir: raft
  raft_addr: %s
  advertise_addr: %s
  api_addr: %s
%s`, n.ID, n.RaftAddr, n.RaftAddr, n.APIAddr, t.yaml())
	b.WriteString("chains:\n")
	for _, c := range chains {
		fmt.Fprintf(&b, "  - id: %s\n", c.ChainID)
	}
	b.WriteString("validators:\n")
	for _, c := range chains {
		addrs := c.Addrs
		if len(addrs) == 0 {
			addrs = []string{"tcp://" + c.ValidatorAddr}
		}
		for _, a := range addrs {
			fmt.Fprintf(&b, "  - chain_id: %s\n    addr: %s\n    identity_key: identity.json\n", c.ChainID, a)
			if c.Protocol != "" {
				fmt.Fprintf(&b, "    protocol: %s\n", c.Protocol)
			}
		}
	}
	b.WriteString("keys:\n")
	for _, c := range chains {
		if c.KeyYAML != "" {
			fmt.Fprintf(&b, "  - chain_ids: [%s]\n%s\n", c.ChainID, strings.TrimRight(c.KeyYAML, "\n"))
			continue
		}
		fmt.Fprintf(&b, "  - chain_ids: [%s]\n    backend: file\n    key_file: %q\n", c.ChainID, c.KeyFile)
	}
	if n.MetricsAddr != "" {
		fmt.Fprintf(&b, "metrics:\n  listen: %s\n", n.MetricsAddr)
	}
	// The chains are new: their validators have never signed, which is
	// what --allow-fresh-state asserts.
	n.Proc.Args = []string{"start", "--home", n.Home, "--log-format", "json", "--log-level", "info"}
	for _, c := range chains {
		n.Proc.Args = append(n.Proc.Args, "--allow-fresh-state", c.ChainID)
	}
	return os.WriteFile(filepath.Join(n.Home, "kms.yaml"), []byte(b.String()), 0o644)
}

// Bootstrap writes the one-node Raft configuration; only for the first node,
// before its first start.
func (n *KMSNode) Bootstrap(ctx context.Context) error {
	_, err := n.run(ctx, 30*time.Second, "bootstrap", "--home", n.Home)
	return err
}

// Join asks the member serving clusterAPI to add this node as a voter.
func (n *KMSNode) Join(ctx context.Context, clusterAPI string) error {
	_, err := n.run(ctx, 20*time.Second, "join", "--home", n.Home, "--cluster", clusterAPI)
	return err
}

// Member is one entry of Status.Members.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	APIAddr  string `json:"api_addr"`
	Role     string `json:"role"`
	Suffrage string `json:"suffrage"`
}

// Watermark is the last signed height/round/step of a chain as replicated by
// Raft.
type Watermark struct {
	ChainID string `json:"chain_id"`
	Height  int64  `json:"height"`
	Round   int64  `json:"round"`
	Step    int    `json:"step"`
}

// Status is the output of `kms-ha status --json`.
type Status struct {
	NodeID        string      `json:"node_id"`
	LeaderID      string      `json:"leader_id"`
	LeaderAPIAddr string      `json:"leader_api_addr"`
	Term          uint64      `json:"term"`
	CommitIndex   uint64      `json:"commit_index"`
	AppliedIndex  uint64      `json:"applied_index"`
	Members       []Member    `json:"members"`
	Chains        []Watermark `json:"chains"`
}

// IsLeader reports whether the answering node considers itself the leader.
func (s *Status) IsLeader() bool { return s.NodeID != "" && s.NodeID == s.LeaderID }

// Member returns the entry for id.
func (s *Status) Member(id string) (Member, bool) {
	for _, m := range s.Members {
		if m.ID == id {
			return m, true
		}
	}
	return Member{}, false
}

// Voters counts the members with voter suffrage.
func (s *Status) Voters() int {
	c := 0
	for _, m := range s.Members {
		if m.Suffrage == "voter" {
			c++
		}
	}
	return c
}

// Status asks this node (through its own Cluster API) how it sees the cluster.
func (n *KMSNode) Status(ctx context.Context) (*Status, error) {
	return StatusOf(ctx, n.bin, n.Home, n.APIAddr)
}

// StatusOf runs `kms-ha status --home home --cluster apiAddr --json`; the
// home supplies the client certificate.
func StatusOf(ctx context.Context, bin, home, apiAddr string) (*Status, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "status", "--home", home, "--cluster", apiAddr, "--json")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("kms-ha status --cluster %s: %w: %s", apiAddr, err, strings.TrimSpace(stderr.String()))
	}
	var s Status
	if err := json.Unmarshal(bytes.TrimSpace(stdout.Bytes()), &s); err != nil {
		return nil, fmt.Errorf("kms-ha status --cluster %s: output is not the documented JSON: %w\n%s", apiAddr, err, stdout.String())
	}
	if s.NodeID == "" {
		return nil, fmt.Errorf("kms-ha status --cluster %s: no node_id in %s", apiAddr, stdout.String())
	}
	return &s, nil
}
