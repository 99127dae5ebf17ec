package cluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

var errNoLeaderYet = errors.New("no leader yet")

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestReadStateGatesRaft(t *testing.T) {
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet}
	st, err := ReadState(c, time.Second)
	if err != nil || st.MayStartRaft() {
		t.Fatalf("empty dir: %+v %v; an empty node must not run raft before it is admitted", st, err)
	}
	if err := MarkJoined(c, time.Second, nil); err != nil {
		t.Fatal(err)
	}
	if st, _ := ReadState(c, time.Second); !st.Joined || !st.MayStartRaft() {
		t.Fatalf("after MarkJoined: %+v", st)
	}
	// Deleting the raft data deletes the mark with it.
	os.RemoveAll(c.DataDir)
	if st, _ := ReadState(c, time.Second); st.MayStartRaft() {
		t.Fatal("a wiped data dir still counts as admitted")
	}
	if err := Bootstrap(c, nil); err != nil {
		t.Fatal(err)
	}
	if st, _ := ReadState(c, time.Second); !st.HasRaftState {
		t.Fatal("bootstrap left no raft state")
	}
	// Snapshots without the log store: the term and vote are lost; refuse.
	snapDir := filepath.Join(c.DataDir, "snapshots", "1-5-123")
	os.MkdirAll(snapDir, 0o700)
	os.WriteFile(filepath.Join(snapDir, "meta.json"), []byte(`{"Version":1,"ID":"1-5-123","Index":5,"Term":1}`), 0o600)
	os.WriteFile(filepath.Join(snapDir, "state.bin"), nil, 0o600)
	os.RemoveAll(filepath.Join(c.DataDir, walDirName))
	if _, err := ReadState(c, time.Second); err == nil || !strings.Contains(err.Error(), "no raft log store") {
		t.Fatalf("snapshots without the log store: %v", err)
	}
}

type memNode struct {
	cfg   Config
	trans *raft.InmemTransport
	node  *Node
	// live is node for other goroutines (a leader's probes), which must
	// not read node while the test replaces it.
	live atomic.Pointer[Node]
}

func startMem(t *testing.T, m *memNode) {
	t.Helper()
	_, m.trans = raft.NewInmemTransport(raft.ServerAddress(m.cfg.NodeID))
	m.cfg.Transport = m.trans
	var err error
	if m.node, err = Open(m.cfg, fsm.New()); err != nil {
		t.Fatal(err)
	}
	m.live.Store(m.node)
}

func link(ms ...*memNode) {
	for _, a := range ms {
		for _, b := range ms {
			if a != b {
				a.trans.Connect(raft.ServerAddress(b.cfg.NodeID), b.trans)
			}
		}
	}
}

func waitLeader(t *testing.T, m *memNode) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m.node.IsLeader() {
			return
		}
	}
	t.Fatalf("%s did not become leader", m.cfg.NodeID)
}

// TestWipedMemberCannotRejoinWithoutQuorumOfTheRest replays the amnesia
// hazard: the leader commits a watermark with one follower while the other
// lags; that follower loses its disk. It must not be re-admitted (and so
// must not vote) until the remaining members commit its removal, which
// brings the lagging one up to date first.
func TestWipedMemberCannotRejoinWithoutQuorumOfTheRest(t *testing.T) {
	dir := t.TempDir()
	var ms []*memNode
	var servers []Server
	for _, id := range []string{"L", "X", "Y"} {
		m := &memNode{cfg: Config{NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: id, Logger: quiet,
			HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond,
			LeaderLeaseTimeout: 50 * time.Millisecond, ApplyTimeout: 500 * time.Millisecond}}
		ms = append(ms, m)
		servers = append(servers, Server{ID: id, Address: id})
	}
	L, X, Y := ms[0], ms[1], ms[2]
	// The leader promotes a non-voter once it sees it caught up.
	for _, m := range ms {
		m.cfg.Probe = func(_ context.Context, id, _ string) (PeerReport, error) {
			for _, o := range ms {
				if n := o.live.Load(); o.cfg.NodeID == id && n != nil {
					return PeerReport{Running: true, LastIndex: n.Stats().LastIndex}, nil
				}
			}
			return PeerReport{}, errors.New("not running")
		}
	}
	if err := Bootstrap(L.cfg, servers); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if err := MarkJoined(m.cfg, time.Second, nil); err != nil { // as after a join
			t.Fatal(err)
		}
	}
	// Only L is bootstrapped, so L wins the first election.
	for _, m := range ms {
		startMem(t, m)
	}
	defer func() {
		for _, m := range ms {
			if m.node != nil {
				m.node.Shutdown()
			}
		}
	}()
	link(ms...)
	waitLeader(t, L)
	ctx := context.Background()
	seed(t, L.node, []string{"L", "X", "Y"}, "c")
	if _, err := L.node.Reserve(ctx, "c", fsm.HRS{Height: 1, Step: fsm.StepPrevote}, []byte("A")); err != nil {
		t.Fatal(err)
	}
	// X falls behind; H10 "A" commits on L and Y only.
	X.trans.DisconnectAll()
	L.trans.Disconnect(raft.ServerAddress("X"))
	Y.trans.Disconnect(raft.ServerAddress("X"))
	d, err := L.node.Reserve(ctx, "c", fsm.HRS{Height: 10, Step: fsm.StepPrevote}, []byte("A"))
	if err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("reserve: %v %v", d.Outcome, err)
	}
	// Y loses its disk.
	Y.live.Store(nil)
	Y.node.Shutdown()
	Y.node = nil
	os.RemoveAll(Y.cfg.DataDir)
	if st, _ := ReadState(Y.cfg, time.Second); st.MayStartRaft() {
		t.Fatal("a wiped member may start raft without being re-admitted")
	}
	// Re-admission needs its removal committed by L and X: X is cut off,
	// so it fails and Y stays out.
	joinY := JoinRequest{ID: "Y", RaftAddr: "Y", APIAddr: "Y", Fresh: true, Level: fsm.Level}
	if _, err := L.node.Join(ctx, joinY); err == nil {
		t.Fatal("a wiped member was re-admitted without a quorum of the remaining members")
	}
	// Heal X: now removal and re-admission go through, X is brought up to
	// date by them, and Y starts from nothing as a new incarnation.
	link(L, X)
	var joinErr error
	for i := 0; i < 50; i++ {
		// L may have stepped down when it lost its quorum; ask whoever leads.
		for _, m := range []*memNode{L, X} {
			if m.node.IsLeader() {
				_, joinErr = m.node.Join(ctx, joinY)
			}
		}
		if joinErr == nil && (L.node.IsLeader() || X.node.IsLeader()) {
			break
		}
		if joinErr == nil {
			joinErr = errNoLeaderYet
		}
		time.Sleep(100 * time.Millisecond)
	}
	if joinErr != nil {
		t.Fatalf("re-admission after healing: %v", joinErr)
	}
	if w, _ := X.node.FSM().Watermark("c"); w.Height != 10 {
		t.Fatalf("X holds %s after the removal committed; want height 10", w.HRS)
	}
	MarkJoined(Y.cfg, time.Second, nil)
	startMem(t, Y)
	link(L, X, Y)
	if s := Y.node.Suffrage(); s != "" && s != "Nonvoter" {
		t.Fatalf("re-admitted as %s; a new incarnation must start as a non-voter", s)
	}
	// Caught up, the leader promotes it by itself.
	deadline := time.Now().Add(5 * time.Second)
	for Y.node.Suffrage() != "Voter" && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if Y.node.Suffrage() != "Voter" {
		t.Fatal("Y was not promoted")
	}
	// The old leader dies; whoever wins must refuse a conflicting H10.
	for _, m := range []*memNode{L, X} {
		if m.node.IsLeader() && m != L {
			// Make L the leader again so killing it forces an election.
			m.node.TransferLeadership()
		}
	}
	L.live.Store(nil)
	L.node.Shutdown()
	L.node = nil
	var nl *memNode
	for deadline := time.Now().Add(5 * time.Second); nl == nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, m := range []*memNode{X, Y} {
			if m.node.IsLeader() {
				nl = m
			}
		}
	}
	if nl == nil {
		t.Fatal("no new leader")
	}
	d, err = nl.node.Reserve(ctx, "c", fsm.HRS{Height: 10, Step: fsm.StepPrevote}, []byte("B"))
	if err == nil && d.Outcome != fsm.Refuse {
		t.Fatalf("DOUBLE SIGN: new leader %s allowed a conflicting H10", nl.cfg.NodeID)
	}
}

func TestDataDirBelongsToItsNode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "raft")
	a := Config{NodeID: "a", DataDir: dir, BindAddr: "127.0.0.1:1", Logger: quiet}
	if err := Bootstrap(a, nil); err != nil {
		t.Fatal(err)
	}
	b := a
	b.NodeID = "b"
	if _, err := ReadState(b, time.Second); err == nil || !strings.Contains(err.Error(), "belongs to node \"a\"") {
		t.Fatalf("a data dir copied to another node: %v", err)
	}
	if _, err := ReadState(a, time.Second); err != nil {
		t.Fatalf("own data dir: %v", err)
	}
}

func TestNonMemberWithStateIsNotAdmitted(t *testing.T) {
	m := &memNode{cfg: Config{NodeID: "L", DataDir: filepath.Join(t.TempDir(), "L"), BindAddr: "L", Logger: quiet,
		HeartbeatTimeout: 100 * time.Millisecond, ElectionTimeout: 100 * time.Millisecond, LeaderLeaseTimeout: 50 * time.Millisecond}}
	if err := Bootstrap(m.cfg, nil); err != nil {
		t.Fatal(err)
	}
	startMem(t, m)
	defer m.node.Shutdown()
	waitLeader(t, m)
	// A node that is not a member but claims state (another cluster's, a
	// copied dir) would merge a foreign log: refused.
	if err := m.node.admit("Z", "Z", false); err == nil {
		t.Fatal("a non-member with raft state was admitted")
	}
	if err := m.node.admit("Z", "Z", true); err != nil {
		t.Fatalf("an empty node was refused: %v", err)
	}
	if err := m.node.admit("L", "L", true); err == nil {
		t.Fatal("the leader admitted itself")
	}
}

func TestCompactedLogWithoutSnapshotIsRefused(t *testing.T) {
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet}
	c.setDefaults()
	st, err := openStores(&c)
	if err != nil {
		t.Fatal(err)
	}
	// A log that starts at 5: entries 1-4 were compacted into a snapshot
	// that is no longer there.
	var logs []*raft.Log
	for i := uint64(5); i <= 8; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogNoop})
	}
	if err := st.db.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	st.db.SetUint64(keyCurrentTerm, 1)
	st.Close()
	if _, err := ReadState(c, time.Second); err == nil || !strings.Contains(err.Error(), "no snapshot covers") {
		t.Fatalf("got %v", err)
	}
}
