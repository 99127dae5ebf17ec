package node

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/pki"
	"github.com/kms-ha/kms-ha/transport"
)

// dialCounter stands in for a validator's priv_validator_laddr: a plain
// TCP listener that counts the connections reaching it.
func dialCounter(t *testing.T) (addr string, dials *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dials = &atomic.Int32{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			dials.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), dials
}

// runNode runs the node configured in home after bootstrapping it with
// peers (or, with joinedVia set, as a member those nodes admitted); adjust,
// if set, changes the node before it runs. stop ends it.
func runNode(t *testing.T, home string, peers []cluster.Server, joinedVia []string, adjust func(*Node)) (n *Node, stop func()) {
	t.Helper()
	cfg, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(t.Output(), nil)).With("node_id", cfg.Cluster.NodeID)
	}
	if joinedVia != nil {
		err = cluster.MarkJoined(ClusterConfig(cfg, log), time.Second, joinedVia)
	} else {
		err = Bootstrap(cfg, peers, log)
	}
	if err != nil {
		t.Fatal(err)
	}
	var opts Options
	if len(cfg.Chains) > 0 {
		opts.AllowFreshState = []string{testChain}
	}
	n, err = New(cfg, opts, log)
	if err != nil {
		t.Fatal(err)
	}
	if adjust != nil {
		adjust(n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(stop)
	return n, stop
}

// raftOf waits for the node's raft to run.
func raftOf(t *testing.T, n *Node) *cluster.Node {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cl := n.cluster.Load(); cl != nil {
			return cl
		}
	}
	t.Fatal("raft did not start")
	return nil
}

// secondMember writes the home of node n2, with a certificate of home's
// cluster CA and no validators, and returns it with its raft address.
func secondMember(t *testing.T, home string) (home2, raftAddr string) {
	t.Helper()
	home2 = t.TempDir()
	if err := pki.Issue(filepath.Join(home, "ca"), pki.IssueOptions{NodeID: "n2", Hosts: []string{"127.0.0.1"},
		OutDir: filepath.Join(home2, "tls")}); err != nil {
		t.Fatal(err)
	}
	caCert, err := os.ReadFile(filepath.Join(home, "ca", pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home2, "tls", pki.CACertFile), caCert, 0o644); err != nil {
		t.Fatal(err)
	}
	raftAddr = localAddr(t)
	yaml := fmt.Sprintf("cluster:\n  node_id: n2\n  raft_addr: %s\n  api_addr: %s\n", raftAddr, localAddr(t))
	if err := os.WriteFile(filepath.Join(home2, config.FileName), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return home2, raftAddr
}

func validatorEntry(addr string) string {
	return fmt.Sprintf("  - chain_id: %s\n    addr: tcp://%s\n    identity_key: identity.json\n", testChain, addr)
}

// TestFollowerDialsNoValidator is invariant 3 at the node's wiring: a node
// that is not the leader (a member of a two-voter cluster whose other
// voter is down, so it can never win an election) runs its leadership
// callback, as raft would at the start of a term that it has already
// lost: the validator loops start, and not one dial reaches the
// validator's listener, because each dial asks the cluster first.
func TestFollowerDialsNoValidator(t *testing.T) {
	addr, dials := dialCounter(t)
	home, _, _ := testHome(t, validatorEntry(addr))
	cfg, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	peers := []cluster.Server{{ID: "n1", Address: cfg.Cluster.RaftAddr}, {ID: "n2", Address: localAddr(t)}}
	n, _ := runNode(t, home, peers, nil, nil)
	cl := raftOf(t, n)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.lead(ctx) }()
	time.Sleep(1500 * time.Millisecond)
	if cl.IsLeader() {
		t.Fatal("n1 leads alone in a two-voter cluster: the test proves nothing")
	}
	if d := dials.Load(); d != 0 {
		t.Fatalf("a node that is not the leader dialled the validator %d times", d)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the validator loops did not end with their term")
	}
}

// TestSteppedDownLeaderDialsNoValidator is invariant 3 for a leader that
// steps down: n1 leads a two-voter cluster, and its validator loop is
// about to dial when n2 stops and n1 loses its quorum. The loop is held
// until n1 no longer leads and then runs on a context that has not ended
// yet (the moment between losing leadership and the term's cancellation
// reaching the loop): still, no dial reaches the validator.
func TestSteppedDownLeaderDialsNoValidator(t *testing.T) {
	addr, dials := dialCounter(t)
	home, _, _ := testHome(t, validatorEntry(addr))
	cfg, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	home2, raft2 := secondMember(t, home)
	entered := make(chan struct{}, 1)
	steppedDown := make(chan struct{})
	n1, _ := runNode(t, home, []cluster.Server{{ID: "n1", Address: cfg.Cluster.RaftAddr}, {ID: "n2", Address: raft2}}, nil,
		func(n *Node) {
			n.runValidator = func(ctx context.Context, v transport.Validator, h transport.Handler, o transport.Options) error {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-steppedDown
				// The term is over, but this loop has not seen its context
				// end yet.
				late, cancel := context.WithTimeout(context.WithoutCancel(ctx), 1500*time.Millisecond)
				defer cancel()
				return transport.Run(late, v, h, o)
			}
		})
	_, stop2 := runNode(t, home2, nil, []string{"n1"}, nil)
	cl := raftOf(t, n1)

	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("n1 did not start serving its validator as leader")
	}
	if !cl.IsLeader() {
		t.Fatal("the validator loop started on a node that does not lead")
	}
	stop2()
	for deadline := time.Now().Add(10 * time.Second); cl.IsLeader(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("n1 still leads 10s after losing its only peer")
		}
	}
	close(steppedDown)
	time.Sleep(2 * time.Second)
	if cl.IsLeader() {
		t.Fatal("n1 leads again without a quorum: the test proves nothing")
	}
	if d := dials.Load(); d != 0 {
		t.Fatalf("a leader that stepped down dialled the validator %d times", d)
	}
}
