package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/pki"
)

// The attacks of issue 9 against a real node over the real TLS transport:
// holders of certificates from the cluster CA that are not (or no longer)
// members, or members claiming another id, try to lower a watermark,
// replicate, take votes or install a snapshot.

type authPKI struct{ dir, ca string }

func newAuthPKI(t *testing.T) *authPKI {
	t.Helper()
	p := &authPKI{dir: t.TempDir()}
	p.ca = filepath.Join(p.dir, "ca")
	if err := pki.CreateCA(p.ca, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *authPKI) files(t *testing.T, node, operator string) pki.Files {
	t.Helper()
	out := filepath.Join(p.dir, node+operator)
	f := pki.Files{CA: filepath.Join(p.ca, pki.CACertFile)}
	if node != "" {
		if err := pki.Issue(p.ca, pki.IssueOptions{NodeID: node, Hosts: []string{"127.0.0.1"}, OutDir: out}); err != nil {
			t.Fatal(err)
		}
		f.Cert, f.Key = filepath.Join(out, pki.NodeCertFile), filepath.Join(out, pki.NodeKeyFile)
	} else {
		if err := pki.IssueOperator(p.ca, pki.OperatorOptions{Name: operator, OutDir: out}); err != nil {
			t.Fatal(err)
		}
		f.Cert, f.Key = filepath.Join(out, pki.OperatorCertFile), filepath.Join(out, pki.OperatorKeyFile)
	}
	return f
}

func (p *authPKI) tls(t *testing.T, f pki.Files) *TLS {
	t.Helper()
	cli, err := pki.ClientConfig(f, "")
	if err != nil {
		t.Fatal(err)
	}
	// An operator certificate cannot serve; its holder only dials.
	srv, err := pki.ServerConfig(f)
	if err != nil {
		srv = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
			GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, errors.New("no server certificate") }}
	}
	return &TLS{Server: srv, Client: cli, PeerID: pki.PeerNodeID}
}

// refusalLog collects what the node reports as refused peers.
type refusalLog struct {
	mu   sync.Mutex
	errs []error
}

func (r *refusalLog) add(err error) { r.mu.Lock(); r.errs = append(r.errs, err); r.mu.Unlock() }

func (r *refusalLog) has(target error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.errs {
		if errors.Is(e, target) {
			return true
		}
	}
	return false
}

// victim is a one-node TLS cluster that signed chain c up to 1000/0/precommit.
func startVictim(t *testing.T, p *authPKI) (*Node, *refusalLog) {
	t.Helper()
	refused := &refusalLog{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := Config{NodeID: "L", DataDir: filepath.Join(t.TempDir(), "L"), BindAddr: addr, Logger: quiet,
		HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond,
		LeaderLeaseTimeout: 125 * time.Millisecond, ApplyTimeout: time.Second,
		TLS: p.tls(t, p.files(t, "L", "")), OnPeerRefused: refused.add}
	if err := Bootstrap(cfg, nil); err != nil {
		t.Fatal(err)
	}
	n, err := Open(cfg, fsm.New())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Shutdown() })
	for deadline := time.Now().Add(5 * time.Second); !n.termReady.Load(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no leader")
		}
	}
	seed(t, n, []string{"L"}, "c")
	if d, err := n.Reserve(context.Background(), "c", fsm.HRS{Height: 1000, Step: fsm.StepPrecommit}, []byte("A")); err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("reserve: %v %v", d, err)
	}
	return n, refused
}

// attacker is a raft transport of its own with the given certificate.
func attacker(t *testing.T, p *authPKI, f pki.Files) raft.Transport {
	t.Helper()
	c := p.tls(t, f)
	stream, err := NewTLSStreamLayer("127.0.0.1:0", nil, c.Server, c.Client)
	if err != nil {
		t.Fatal(err)
	}
	trans := raft.NewNetworkTransport(stream, 1, 2*time.Second, nil)
	t.Cleanup(func() { trans.Close() })
	return trans
}

// lowSnapshot sends an InstallSnapshot of a higher term whose state holds
// chain c at 5/0/proposal, as the reviewer's attacker did.
func lowSnapshot(trans raft.Transport, victim *Node, claim string) error {
	st := fsm.New().State()
	st.Chains["c"] = fsm.Watermark{HRS: fsm.HRS{Height: 5, Step: fsm.StepPropose}}
	data, _ := json.Marshal(st)
	term := victim.Stats().Term + 10
	conf := raft.Configuration{Servers: []raft.Server{
		{Suffrage: raft.Voter, ID: raft.ServerID(claim), Address: trans.LocalAddr()},
		{Suffrage: raft.Voter, ID: "L", Address: victim.trans.LocalAddr()},
	}}
	req := &raft.InstallSnapshotRequest{
		RPCHeader:       raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(claim), Addr: []byte(trans.LocalAddr())},
		SnapshotVersion: raft.SnapshotVersionMax, Term: term, LastLogIndex: 100000, LastLogTerm: term,
		Configuration: raft.EncodeConfiguration(conf), ConfigurationIndex: 100000, Size: int64(len(data)),
	}
	var resp raft.InstallSnapshotResponse
	err := trans.InstallSnapshot(raft.ServerID("L"), victim.trans.LocalAddr(), req, &resp, bytes.NewReader(data))
	if err == nil && !resp.Success {
		err = errors.New("install refused")
	}
	return err
}

func voteFor(trans raft.Transport, victim *Node, claim string) error {
	req := &raft.RequestVoteRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(claim), Addr: []byte(trans.LocalAddr())},
		Term:      victim.Stats().Term + 10, LastLogIndex: 1 << 40, LastLogTerm: 1 << 40,
	}
	var resp raft.RequestVoteResponse
	err := trans.RequestVote(raft.ServerID("L"), victim.trans.LocalAddr(), req, &resp)
	if err == nil && !resp.Granted {
		err = errors.New("vote not granted")
	}
	return err
}

func assertUnharmed(t *testing.T, n *Node, term uint64) {
	t.Helper()
	if w, _ := n.FSM().Watermark("c"); w.Height != 1000 || w.Step != fsm.StepPrecommit {
		t.Fatalf("WATERMARK LOWERED: chain c at %s, want 1000/0/precommit", w.HRS)
	}
	if got := n.Stats().Term; got != term {
		t.Fatalf("the attacker moved the term from %d to %d", term, got)
	}
	if !n.IsLeader() {
		t.Fatal("the attacker made the leader step down")
	}
}

func TestRaftRefusesNonMembers(t *testing.T) {
	p := newAuthPKI(t)
	victim, refused := startVictim(t, p)
	term := victim.Stats().Term

	for _, tc := range []struct {
		name  string
		files pki.Files
		claim string
	}{
		{"operator certificate", p.files(t, "", "alice"), "alice"},
		{"non-member node certificate", p.files(t, "Z", ""), "Z"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trans := attacker(t, p, tc.files)
			if err := lowSnapshot(trans, victim, tc.claim); err == nil {
				t.Fatal("snapshot installed")
			}
			if err := voteFor(trans, victim, tc.claim); err == nil {
				t.Fatal("vote granted")
			}
			if err := appendEntries(trans, victim, tc.claim); err == nil {
				t.Fatal("append accepted")
			}
			assertUnharmed(t, victim, term)
		})
	}
	if !refused.has(ErrNotAMember) {
		t.Error("the refusals were not reported")
	}
}

func appendEntries(trans raft.Transport, victim *Node, claim string) error {
	req := &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(claim), Addr: []byte(trans.LocalAddr())},
		Term:      victim.Stats().Term + 10, PrevLogEntry: 1, PrevLogTerm: 1,
	}
	var resp raft.AppendEntriesResponse
	err := trans.AppendEntries(raft.ServerID("L"), victim.trans.LocalAddr(), req, &resp)
	if err == nil && !resp.Success {
		err = errors.New("append refused")
	}
	return err
}

// A member of the configuration (here a non-voter, so the victim keeps
// leading alone) may speak raft only in its own name; a removed member not
// at all. And a member's snapshot that lowers a watermark is refused by
// the state machine.
func TestRaftBindsRPCsToTheCertificatesMember(t *testing.T) {
	p := newAuthPKI(t)
	victim, refused := startVictim(t, p)
	memberTrans := attacker(t, p, p.files(t, "M", ""))
	removedTrans := attacker(t, p, p.files(t, "R", ""))
	for _, id := range []string{"M", "R"} {
		tr := memberTrans
		if id == "R" {
			tr = removedTrans
		}
		if err := victim.raft.AddNonvoter(raft.ServerID(id), tr.LocalAddr(), 0, time.Second).Error(); err != nil {
			t.Fatal(err)
		}
	}
	if err := victim.Remove(context.Background(), "R"); err != nil {
		t.Fatal(err)
	}
	term := victim.Stats().Term

	if err := voteFor(memberTrans, victim, "L2"); err == nil || !strings.Contains(err.Error(), "claims to come from") {
		t.Fatalf("member M voting as another node: %v", err)
	}
	if err := lowSnapshot(memberTrans, victim, "X"); err == nil {
		t.Fatal("member M installed a snapshot as another node")
	}
	assertUnharmed(t, victim, term)
	if !refused.has(ErrWrongPeerID) {
		t.Error("the wrong-id refusals were not reported")
	}

	if err := lowSnapshot(removedTrans, victim, "R"); err == nil {
		t.Fatal("a removed member installed a snapshot")
	}
	if err := voteFor(removedTrans, victim, "R"); err == nil {
		t.Fatal("a removed member got a vote")
	}
	assertUnharmed(t, victim, term)

	// M in its own name reaches raft; the snapshot reaches the state
	// machine, which refuses to lower chain c.
	if err := lowSnapshot(memberTrans, victim, "M"); err == nil {
		t.Fatal("a snapshot lowering chain c was installed")
	}
	if w, _ := victim.FSM().Watermark("c"); w.Height != 1000 {
		t.Fatalf("WATERMARK LOWERED by a member's snapshot: %s", w.HRS)
	}
	// The refused snapshot is not kept: a restart, which restores the
	// newest snapshot into an empty state machine, still holds 1000.
	// (M goes first: raft's shutdown would wait out its RPC timeouts. The
	// higher term made the victim step down; it leads again alone.)
	waitTrue(t, "the victim to lead again and remove M", 5*time.Second, func() bool {
		return victim.Remove(context.Background(), "M") == nil
	})
	cfg := victim.cfg
	victim.Shutdown()
	again, err := Open(cfg, fsm.New())
	if err != nil {
		t.Fatal(err)
	}
	defer again.Shutdown()
	waitTrue(t, "the restarted victim to lead", 5*time.Second, func() bool { return again.termReady.Load() })
	if w, _ := again.FSM().Watermark("c"); w.Height != 1000 {
		t.Fatalf("WATERMARK LOWERED after a restart: %s (the refused snapshot was restored)", w.HRS)
	}
}
