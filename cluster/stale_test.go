package cluster

import (
	"context"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

type tlsMember struct {
	cfg  Config
	node *Node
}

func freeTCP(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func (m *tlsMember) start(t *testing.T) {
	t.Helper()
	n, err := Open(m.cfg, fsm.New())
	if err != nil {
		t.Fatal(err)
	}
	m.node = n
}

func (m *tlsMember) stop() {
	if m.node != nil {
		m.node.Shutdown()
		m.node = nil
	}
}

func waitTrue(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// A member that was down while the membership changed comes back with a
// configuration that does not name the new leader. It refuses that
// leader's appends (the leader is no member in its view) until the members
// it knows vouch for the new one; then it catches up.
func TestStaleMemberCatchesUpOnceVouched(t *testing.T) {
	p := newAuthPKI(t)
	dir := t.TempDir()
	ms := map[string]*tlsMember{}
	var servers []Server
	for _, id := range []string{"A", "B", "C", "D"} {
		m := &tlsMember{cfg: Config{NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: freeTCP(t), Logger: quiet,
			HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond,
			LeaderLeaseTimeout: 125 * time.Millisecond, ApplyTimeout: time.Second,
			TLS: p.tls(t, p.files(t, id, ""))}}
		ms[id] = m
		if id != "D" {
			servers = append(servers, Server{ID: id, Address: m.cfg.BindAddr})
		}
	}
	t.Cleanup(func() {
		for _, m := range ms {
			m.stop()
		}
	})
	A, B, C, D := ms["A"], ms["B"], ms["C"], ms["D"]
	if err := Bootstrap(A.cfg, servers); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*tlsMember{B, C} {
		if err := MarkJoined(m.cfg, time.Second, []string{"A", "B", "C"}); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []*tlsMember{A, B, C} {
		m.start(t)
	}
	waitTrue(t, "A to lead", 5*time.Second, func() bool { return A.node.termReady.Load() })
	ctx := context.Background()
	seed(t, A.node, []string{"A", "B", "C"}, "c")

	// C goes down; D joins and A leaves, so D and B lead from here on.
	C.stop()
	if err := MarkJoined(D.cfg, time.Second, []string{"A", "B", "C"}); err != nil {
		t.Fatal(err)
	}
	D.start(t)
	if err := A.node.admit("D", D.cfg.BindAddr, true); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "D to catch up", 5*time.Second, func() bool { return D.node.Stats().LastIndex >= A.node.raft.CommitIndex() })
	if err := A.node.raft.AddVoter("D", raft.ServerAddress(D.cfg.BindAddr), 0, time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if err := A.node.TransferLeadershipTo("D"); err != nil {
		t.Fatal(err)
	}
	waitTrue(t, "D to lead", 5*time.Second, func() bool { return D.node.termReady.Load() })
	if err := D.node.Remove(ctx, "A"); err != nil {
		t.Fatal(err)
	}
	A.stop()
	if d, err := D.node.Reserve(ctx, "c", fsm.HRS{Height: 42, Step: fsm.StepPrevote}, []byte("x")); err != nil || d.Outcome != fsm.Allow {
		t.Fatalf("reserve on D: %v %v", d, err)
	}

	// C returns with the configuration {A, B, C}: D is nobody to it.
	C.start(t)
	time.Sleep(time.Second)
	if w, _ := C.node.FSM().Watermark("c"); w.Height == 42 {
		t.Fatal("C took appends from D, which its configuration does not name")
	}
	// B, a member C knows, names D: C accepts D and catches up.
	C.node.VouchPeers([]string{"B", "C", "D"})
	waitTrue(t, "C to catch up with D", 10*time.Second, func() bool {
		w, _ := C.node.FSM().Watermark("c")
		return w.Height == 42
	})
	if C.node.IsMember("A") || !C.node.IsMember("D") {
		t.Fatal("C's configuration was not brought up to date")
	}
}
