package harness

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// This file sets up the two transports besides tcp:// (noise:// and
// unix://) on both ends: the validator's priv_validator_laddr and the
// validators entries of every kms-ha node.
//
// CometBFT v0.40.0's noise listener allow-lists exactly one signer peer ID:
// priv_validator_laddr is noise://<signer peer id>@IP:PORT, parsed by
// privval.ParseNoiseAddr into a single peer.ID and handed to
// NewNoiseListener as a one-element allow-list. Every kms-ha node of a
// cluster can become leader and dial the validator, so every node must
// present that one peer ID: the cluster shares one identity.json (the Noise
// identity; it is not the consensus key). Noise.Setup does exactly that.

// CometPeerID runs `cometbft show-node-id --libp2p --home home`: the
// validator's libp2p peer ID, which a kms-ha noise:// address pins.
func CometPeerID(ctx context.Context, bin, home string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bin, "show-node-id", "--libp2p", "--home", home).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return "", fmt.Errorf("cometbft show-node-id --libp2p --home %s: %w", home, err)
	}
	id := strings.TrimSpace(string(out))
	if !strings.HasPrefix(id, "12D3KooW") && !strings.HasPrefix(id, "16Uiu2") {
		return "", fmt.Errorf("cometbft show-node-id --libp2p --home %s: %q is not a libp2p peer ID", home, id)
	}
	return id, nil
}

// Libp2pPeerID is CometPeerID for this node.
func (n *CometNode) Libp2pPeerID(ctx context.Context) (string, error) {
	return CometPeerID(ctx, n.Proc.Bin, n.Home)
}

// PeerID runs `kms-ha peer-id --home`: the libp2p peer ID of the node's
// identity.json, the one a validator allow-lists in its noise:// address.
func (n *KMSNode) PeerID(ctx context.Context) (string, error) {
	out, err := n.run(ctx, 30*time.Second, "peer-id", "--home", n.Home)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(out)), nil
}

// IdentityPath is the node's identity.json.
func (n *KMSNode) IdentityPath() string { return filepath.Join(n.Home, "identity.json") }

// SetIdentity replaces the node's identity.json with a copy of src. Only
// while the node is stopped: the identity is read at start.
func (n *KMSNode) SetIdentity(src string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(n.IdentityPath(), data, 0o600)
}

// NewIdentity runs `kms-ha init` in a scratch home under dir and returns the
// path of the identity.json it wrote: a fresh identity, exactly what each
// node gets when an operator runs init on it.
func NewIdentity(ctx context.Context, kmsBin, dir, name string) (string, error) {
	home := filepath.Join(dir, name)
	n := &KMSNode{ID: name, Home: home, bin: kmsBin}
	if _, err := n.run(ctx, 30*time.Second, "init", "--home", home, "--node-id", name); err != nil {
		return "", err
	}
	return n.IdentityPath(), nil
}

// SetPrivvalLaddr sets the node's priv_validator_laddr to a full address
// (tcp://, unix://, noise://PEER@IP:PORT). Call it before the node starts.
func (n *CometNode) SetPrivvalLaddr(addr string) error {
	return n.editConfig([]tomlSetting{{"", "priv_validator_laddr", tomlString(addr)}})
}

// Noise makes a cluster talk noise:// to its validators. Set CometBFT, use
// Setup as Config.Setup (or call it from one), then Finish after New and
// before Start:
//
//   - Setup gives every node the identity.json of the first node it sees,
//     so that the whole cluster has one peer ID, and points each chain's
//     validators entry at noise://<validator peer id>@IP:PORT;
//   - Finish sets each validator's priv_validator_laddr to
//     noise://<cluster peer id>@IP:PORT and checks both ends.
type Noise struct {
	// CometBFT is the cometbft binary that Setup asks for the validators'
	// peer IDs (show-node-id --libp2p).
	CometBFT string
	// KMSPeerID is the cluster's peer ID, ValidatorPeerIDs the validators'
	// by chain id; both are set by Finish.
	KMSPeerID        string
	ValidatorPeerIDs map[string]string

	mu       sync.Mutex
	identity string            // the shared identity.json
	peers    map[string]string // chain id -> validator peer ID, from Setup
	err      error
}

// Setup is a Config.Setup hook; errors surface in Finish.
func (s *Noise) Setup(n *KMSNode, chains []ChainConfig) []ChainConfig {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.identity == "" {
		s.identity = n.IdentityPath()
	} else if err := n.SetIdentity(s.identity); err != nil {
		s.err = errors.Join(s.err, fmt.Errorf("%s: share identity: %w", n.ID, err))
	}
	if s.peers == nil {
		s.peers = map[string]string{}
	}
	for i := range chains {
		c := &chains[i]
		id, ok := s.peers[c.ChainID]
		if !ok {
			// The hook sees the chain, not its node: the key file that
			// `cometbft init` wrote lies in the node's home/config, next
			// to the node_key.json that is its Noise identity. Finish
			// checks the result against the node itself.
			home := filepath.Dir(filepath.Dir(c.KeyFile))
			var err error
			if id, err = CometPeerID(context.Background(), s.CometBFT, home); err != nil {
				s.err = errors.Join(s.err, err)
				continue
			}
			s.peers[c.ChainID] = id
		}
		c.Addrs = []string{"noise://" + id + "@" + c.ValidatorAddr}
	}
	return chains
}

// Finish allow-lists the cluster's peer ID on every validator, after
// checking that every node has it and that Setup pinned each validator's
// real peer ID.
func (s *Noise) Finish(ctx context.Context, c *Cluster) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if len(c.Nodes) == 0 {
		return errors.New("noise: no nodes")
	}
	for i, n := range c.Nodes {
		id, err := n.PeerID(ctx)
		if err != nil {
			return err
		}
		if i == 0 {
			s.KMSPeerID = id
		} else if id != s.KMSPeerID {
			return fmt.Errorf("noise: %s has peer ID %s, %s has %s: the cluster must share one identity", n.ID, id, c.Nodes[0].ID, s.KMSPeerID)
		}
	}
	s.ValidatorPeerIDs = map[string]string{}
	for _, v := range c.Comets {
		id, err := v.Libp2pPeerID(ctx)
		if err != nil {
			return err
		}
		if s.peers[v.ChainID] != id {
			return fmt.Errorf("noise: %s: Setup pinned validator peer ID %q, the node has %s", v.Name, s.peers[v.ChainID], id)
		}
		s.ValidatorPeerIDs[v.ChainID] = id
		if err := v.SetPrivvalLaddr("noise://" + s.KMSPeerID + "@" + v.PrivvalAddr); err != nil {
			return err
		}
	}
	return nil
}

// MaxUnixSocketPath is the longest socket path Linux accepts (sun_path is
// 108 bytes with the terminating NUL).
const MaxUnixSocketPath = 107

// Unix makes a cluster talk unix:// to its validators: one socket per
// chain in Dir, which must be short (os.MkdirTemp("", "kmsha"), not
// t.TempDir(): a socket path is limited to MaxUnixSocketPath bytes). Use
// Setup as Config.Setup and Finish after New, like Noise.
type Unix struct {
	Dir string
}

// SocketPath is the socket of the i-th chain (Config order).
func (u *Unix) SocketPath(i int) string { return filepath.Join(u.Dir, fmt.Sprintf("pv%d.sock", i)) }

// Setup is a Config.Setup hook.
func (u *Unix) Setup(_ *KMSNode, chains []ChainConfig) []ChainConfig {
	for i := range chains {
		chains[i].Addrs = []string{"unix://" + u.SocketPath(i)}
	}
	return chains
}

// Finish points every validator's priv_validator_laddr at its socket.
func (u *Unix) Finish(c *Cluster) error {
	for i, v := range c.Comets {
		p := u.SocketPath(i)
		if !filepath.IsAbs(p) || len(p) > MaxUnixSocketPath {
			return fmt.Errorf("unix: socket path %q must be absolute and at most %d bytes", p, MaxUnixSocketPath)
		}
		if err := v.SetPrivvalLaddr("unix://" + p); err != nil {
			return err
		}
	}
	return nil
}

// NewLoneSigner prepares a kms-ha node that forms a one-node cluster of its
// own in dir (its own CA, its own identity.json from `kms-ha init`), signing
// for chains: a second, independent signer pointed at a validator, as a
// stray or misconfigured deployment would be. Its log is dir/logs/<id>.log.
func NewLoneSigner(ctx context.Context, kmsBin, dir, id string, chains []ChainConfig) (*KMSNode, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, err
	}
	ports, err := FreePorts(2)
	if err != nil {
		return nil, err
	}
	n := newKMSNode(kmsBin, id, filepath.Join(dir, id), filepath.Join(dir, "logs", id+".log"), ports[0], ports[1])
	if err := n.Init(ctx); err != nil {
		return nil, err
	}
	if err := n.WriteConfig(chains, RaftTimings{}); err != nil {
		return nil, err
	}
	return n, nil
}

// StartAlone bootstraps a lone signer, starts it and waits until it leads
// its one-node cluster (and so dials its validators).
func (n *KMSNode) StartAlone(ctx context.Context, timeout time.Duration) error {
	if err := n.Bootstrap(ctx); err != nil {
		return err
	}
	if err := n.Proc.Start(); err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		if !n.Proc.Running() {
			return fmt.Errorf("%s exited (%v) before leading", n.ID, n.Proc.ExitErr())
		}
		if s, err := n.Status(ctx); err == nil && s.IsLeader() {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not lead its one-node cluster within %s", n.ID, timeout)
		}
		if err := Sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// TransferLeadership runs `kms-ha transfer-leadership` against the member
// serving clusterAPI, with this node's home for the client certificate; to
// names the new leader ("" lets the cluster pick). It returns the new
// leader's id.
func (n *KMSNode) TransferLeadership(ctx context.Context, clusterAPI, to string) (string, error) {
	args := []string{"transfer-leadership", "--home", n.Home, "--cluster", clusterAPI}
	if to != "" {
		args = append(args, "--to", to)
	}
	out, err := n.run(ctx, 30*time.Second, args...)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(out))
	id, ok := strings.CutPrefix(s, "leader is now ")
	if !ok {
		return "", fmt.Errorf("kms-ha transfer-leadership: unexpected output %q", s)
	}
	return id, nil
}

// Messages of the transport's dial loop, beyond those in connlog.go.
const (
	// MsgHandshakeFailed is a dial whose handshake failed, including a
	// Noise handshake the validator ended because it does not allow-list
	// our peer ID (see NotAllowListed); logged for every attempt.
	MsgHandshakeFailed = "transport: handshake failed"
	// MsgConnectFailed is a dial that found nothing listening; only the
	// first of a streak and every 30th are at warn level.
	MsgConnectFailed = "transport: connect failed"
	// MsgNoiseIdentity is logged at every start of a noise:// dial loop
	// with our peer ID (peer_id) and the pinned one (validator_peer_id).
	MsgNoiseIdentity = "transport: noise identity"
	// NotAllowListed is in the err of a handshake failure caused by a
	// validator that closed the connection right after the Noise handshake.
	NotAllowListed = "does not allow-list our peer ID"
)

// DialEvent is one line of a node's validator dial loop.
type DialEvent struct {
	Time     time.Time
	Msg      string
	Addr     string
	Err      string
	Failures int
	PeerID   string // MsgNoiseIdentity only
	Line     int
}

// DialEvents returns the dial-loop lines of a kms-ha JSON log
// (MsgHandshakeFailed, MsgConnectFailed, MsgConnected,
// MsgClosedBeforeRequest, MsgNoiseIdentity) in file order.
func DialEvents(path string) ([]DialEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []DialEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var a struct {
			Time     time.Time       `json:"time"`
			Msg      string          `json:"msg"`
			Addr     string          `json:"addr"`
			Err      json.RawMessage `json:"err"`
			Failures int             `json:"failures"`
			PeerID   string          `json:"peer_id"`
		}
		if json.Unmarshal(line, &a) != nil {
			continue
		}
		switch a.Msg {
		case MsgHandshakeFailed, MsgConnectFailed, MsgConnected, MsgClosedBeforeRequest, MsgNoiseIdentity:
		default:
			continue
		}
		e := DialEvent{Time: a.Time, Msg: a.Msg, Addr: a.Addr, Failures: a.Failures, PeerID: a.PeerID, Line: n}
		if len(a.Err) > 0 && json.Unmarshal(a.Err, &e.Err) != nil {
			e.Err = string(a.Err)
		}
		out = append(out, e)
	}
	return out, sc.Err()
}

// FileContains reports whether the file holds s (for cometbft's own log).
func FileContains(path, s string) (bool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	return bytes.Contains(data, []byte(s)), nil
}
