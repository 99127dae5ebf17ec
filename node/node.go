// Package node builds a running kms-ha node from a validated configuration
// and owns the start and stop order of its parts.
package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/p2p"
	"google.golang.org/grpc"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
	"github.com/kms-ha/kms-ha/transport"
)

// ClusterConfig maps kms.yaml's cluster section to the raft node's config.
func ClusterConfig(c *config.Config, log *slog.Logger) cluster.Config {
	cl := c.Cluster
	return cluster.Config{
		NodeID:             cl.NodeID,
		DataDir:            cl.DataDir,
		BindAddr:           cl.RaftAddr,
		AdvertiseAddr:      cl.AdvertiseAddr,
		HeartbeatTimeout:   cl.HeartbeatTimeout,
		ElectionTimeout:    cl.ElectionTimeout,
		LeaderLeaseTimeout: cl.LeaderLeaseTimeout,
		CommitTimeout:      cl.CommitTimeout,
		ApplyTimeout:       cl.ApplyTimeout,
		SnapshotInterval:   cl.SnapshotInterval,
		SnapshotThreshold:  cl.SnapshotThreshold,
		Logger:             log,
	}
}

// Node is a running kms-ha node.
type Node struct {
	cfg        *config.Config
	log        *slog.Logger
	cluster    *cluster.Node
	signer     *signer.Signer
	keys       map[string]keys.Signer
	validators []transport.Validator
	api        *grpc.Server
	apiLn      net.Listener
}

// New opens keys and identities, starts raft and the API listener. It does
// not dial anything: that happens only while this node leads.
func New(c *config.Config, log *slog.Logger) (*Node, error) {
	n := &Node{cfg: c, log: log, keys: map[string]keys.Signer{}}
	ok := false
	defer func() {
		if !ok {
			n.closeKeys()
		}
	}()
	var err error
	for i, k := range c.Keys {
		var s keys.Signer
		switch k.Backend {
		case config.BackendFile:
			s, err = file.Open(k.KeyFile)
		default:
			err = fmt.Errorf("backend %q is not available in this build", k.Backend)
		}
		if err != nil {
			return nil, fmt.Errorf("node: keys[%d]: %w", i, err)
		}
		for _, id := range k.ChainIDs {
			n.keys[id] = s
		}
		log.Info("key loaded", "chains", k.ChainIDs, "backend", k.Backend, "pubkey", fmt.Sprintf("%X", s.PubKey().Bytes()))
	}
	identities := map[string]crypto.PrivKey{}
	for i, v := range c.Validators {
		id, ok := identities[v.IdentityKey]
		if !ok {
			nk, lerr := p2p.LoadNodeKey(v.IdentityKey)
			if lerr != nil {
				return nil, fmt.Errorf("node: validators[%d].identity_key %s: %w", i, v.IdentityKey, lerr)
			}
			id = nk.PrivKey
			identities[v.IdentityKey] = id
		}
		n.validators = append(n.validators, transport.Validator{
			ChainID: v.ChainID, Addr: v.Addr, Identity: id, Reconnect: v.ShouldReconnect(),
		})
	}

	n.apiLn, err = net.Listen("tcp", c.Cluster.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("node: listen on api_addr %s: %w", c.Cluster.APIAddr, err)
	}
	f := fsm.New()
	cc := ClusterConfig(c, log)
	cc.Leading = []func(context.Context){n.lead}
	n.cluster, err = cluster.Open(cc, f)
	if err != nil {
		n.apiLn.Close()
		return nil, err
	}
	n.signer, err = signer.New(signer.Config{
		NodeID:   c.Cluster.NodeID,
		Reserver: n.cluster,
		State:    f,
		Keys:     n.keys,
		Logger:   log,
	})
	if err != nil {
		n.apiLn.Close()
		n.cluster.Shutdown()
		return nil, err
	}
	n.api = grpc.NewServer()
	grpcapi.NewClusterServer(n.cluster, log).Register(n.api)
	ok = true
	return n, nil
}

// lead runs for one term of leadership: it records this node's API address
// for followers to forward to, then serves every validator until ctx ends.
func (n *Node) lead(ctx context.Context) {
	var wg sync.WaitGroup
	if n.cluster.FSM().MemberAPIAddr(n.cfg.Cluster.NodeID) != n.cfg.Cluster.APIAddr {
		// Concurrently with the dials: a failover should cost the election
		// and one dial, not an extra commit.
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Followers forward joins to this address: keep trying while
			// leading, or they could not forward for a whole term.
			for delay := 100 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
				err := n.cluster.SetMemberAPI(ctx, n.cfg.Cluster.NodeID, n.cfg.Cluster.APIAddr)
				if err == nil || ctx.Err() != nil {
					return
				}
				n.log.Warn("could not record this node's api address; retrying", "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(delay):
				}
			}
		}()
	}
	for _, v := range n.validators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := transport.Run(ctx, v, n.signer, transport.Options{
				Logger: n.log,
				// Checked before every dial: a node that is no longer
				// leader must not open a validator connection, even in the
				// moment before its context is cancelled.
				Allowed: n.cluster.IsLeader,
			})
			if err != nil {
				n.log.Error("validator connection stopped", "chain", v.ChainID, "addr", v.Addr, "err", err)
			}
		}()
	}
	wg.Wait()
}

// Run serves until ctx is cancelled, then stops: a leader first hands
// leadership to an up-to-date follower so the validators wait one dial, not
// an election.
func (n *Node) Run(ctx context.Context) error {
	errCh := make(chan error, 1)
	go func() { errCh <- n.api.Serve(n.apiLn) }()
	n.log.Info("node started", "raft_addr", n.cfg.Cluster.RaftAddr,
		"api_addr", n.cfg.Cluster.APIAddr, "chains", len(n.cfg.Chains), "validators", len(n.validators))
	var err error
	select {
	case <-ctx.Done():
	case err = <-errCh:
		err = fmt.Errorf("node: api server: %w", err)
	}
	n.shutdown()
	return err
}

func (n *Node) shutdown() {
	if n.cluster.IsLeader() {
		n.log.Info("leader stopping: transferring leadership")
		if err := n.cluster.TransferLeadership(); err != nil {
			n.log.Warn("leadership transfer failed; the others will elect a leader", "err", err)
		}
	}
	stopped := make(chan struct{})
	go func() { n.api.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		n.api.Stop()
	}
	if err := n.cluster.Shutdown(); err != nil {
		n.log.Warn("raft shutdown", "err", err)
	}
	n.closeKeys()
	n.log.Info("node stopped")
}

func (n *Node) closeKeys() {
	seen := map[keys.Signer]bool{}
	var errs []error
	for _, k := range n.keys {
		if !seen[k] {
			seen[k] = true
			errs = append(errs, k.Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		n.log.Warn("closing keys", "err", err)
	}
}
