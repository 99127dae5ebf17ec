package node

import (
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/transport"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func wm(h int64) fsm.HRS { return fsm.HRS{Height: h, Round: 0, Step: 3} }

func TestHandoverOffOrNothingToWatch(t *testing.T) {
	if newHandover(0, []string{"a"}) != nil {
		t.Error("validator_handover_after: 0 must turn the handover off")
	}
	if newHandover(5*time.Second, nil) != nil {
		t.Error("a node without a redialled validator has nothing to hand over for")
	}
	vs := []transport.Validator{{ChainID: "a", Reconnect: false}, {ChainID: "b", Reconnect: true}, {ChainID: "b", Reconnect: true}}
	if got := handoverChains(vs); len(got) != 1 || got[0] != "b" {
		t.Errorf("watched chains %v, want [b]: a reconnect: false entry is not redialled, and a chain counts once", got)
	}
}

// TestHandoverWaitsForEveryChain: the leader hands over only once every
// watched chain has been silent for the whole wait, counted from the
// start of its term at the earliest.
func TestHandoverWaitsForEveryChain(t *testing.T) {
	h := newHandover(5*time.Second, []string{"a", "b"})
	h.startTerm(at(0))
	wms := map[string]fsm.HRS{"a": wm(10), "b": wm(20)}
	if due, _, _ := h.due(at(4*time.Second), wms); due {
		t.Fatal("due 4s into the term with a 5s wait")
	}
	h.heardFrom("a", at(3*time.Second))
	if due, silent, _ := h.due(at(6*time.Second), wms); due || silent != 3*time.Second {
		t.Fatalf("due=%v silent=%s at 6s with chain a heard at 3s: chain a still signs, keep leading", due, silent)
	}
	h.heardFrom("b", at(1*time.Second)) // older than what is known: ignored
	if due, silent, wait := h.due(at(8*time.Second), wms); !due || silent != 5*time.Second || wait != 5*time.Second {
		t.Fatalf("due=%v silent=%s wait=%s at 8s: every chain silent for 5s", due, silent, wait)
	}
	h.heardFrom("unknown", at(8*time.Second))
	if due, _, _ := h.due(at(8*time.Second), wms); !due {
		t.Fatal("a request for a chain the rule does not watch kept the leader")
	}
}

// TestHandoverBacksOff: a handover that brings no signature back doubles
// the node's next wait, up to the cap; a watermark that moves afterwards
// (whoever signed it) resets it.
func TestHandoverBacksOff(t *testing.T) {
	base := 5 * time.Second
	h := newHandover(base, []string{"a"})
	stuck := map[string]fsm.HRS{"a": wm(10)}
	want := base
	for i := range 10 {
		h.startTerm(at(0))
		due, _, wait := h.due(at(want), stuck)
		if !due || wait != want {
			t.Fatalf("handover %d: due=%v wait=%s, want due after %s", i+1, due, wait, want)
		}
		if due, _, _ := h.due(at(want-time.Millisecond), stuck); due {
			t.Fatalf("handover %d: due before the wait", i+1)
		}
		h.handedOver(stuck)
		want = min(2*want, handoverMaxFactor*base)
	}
	if want != 320*time.Second {
		t.Fatalf("cap %s, want 64 × 5s", want)
	}
	h.startTerm(at(0))
	if _, _, wait := h.due(at(time.Second), stuck); wait != want {
		t.Fatalf("wait %s while nothing was signed, want %s", wait, want)
	}
	// Another leader signed the next height: signing is back.
	if _, _, wait := h.due(at(time.Second), map[string]fsm.HRS{"a": {Height: 10, Round: 1, Step: 1}}); wait != base {
		t.Fatalf("wait %s after the watermark moved, want the base %s", wait, base)
	}
}

// TestHandoverRetryLater: raft refusing the transfer (no follower up to
// date) restarts the silence rather than retrying every check.
func TestHandoverRetryLater(t *testing.T) {
	h := newHandover(5*time.Second, []string{"a"})
	h.startTerm(at(0))
	if due, _, _ := h.due(at(5*time.Second), nil); !due {
		t.Fatal("not due")
	}
	h.retryLater(at(5 * time.Second))
	if due, _, wait := h.due(at(9*time.Second), nil); due || wait != 5*time.Second {
		t.Fatalf("due=%v wait=%s 4s after a refused transfer", due, wait)
	}
}

// TestLeaderWithoutValidatorHandsOver: n1 leads a two-voter cluster and
// its validator's address accepts TCP but never completes a handshake
// (a validator it cannot reach); n2 has no validator entry, so when it
// leads it has nothing to hand over for. After the wait n1 hands
// leadership to n2, stops dialling, and its own next wait is doubled.
func TestLeaderWithoutValidatorHandsOver(t *testing.T) {
	addr, dials := dialCounter(t)
	home, _, _ := testHome(t, validatorEntry(addr))
	cfg, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	home2, raft2 := secondMember(t, home)
	const wait = 1500 * time.Millisecond
	n1, _ := runNode(t, home, []cluster.Server{{ID: "n1", Address: cfg.Cluster.RaftAddr}, {ID: "n2", Address: raft2}}, nil,
		func(n *Node) { n.handover = newHandover(wait, handoverChains(n.validators)) })
	cl1 := raftOf(t, n1)
	n2, _ := runNode(t, home2, nil, []string{"n1"}, nil)
	cl2 := raftOf(t, n2)

	var led time.Time
	for deadline := time.Now().Add(20 * time.Second); led.IsZero(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("n1 never led")
		}
		if cl1.IsLeader() {
			led = time.Now()
		}
	}
	for deadline := time.Now().Add(20 * time.Second); !cl2.IsLeader(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("n2 does not lead 20s after n1 took office without reaching its validator (%d dials)", dials.Load())
		}
	}
	took := time.Since(led)
	if took < wait {
		t.Fatalf("n1 handed over after %s, before its %s wait", took, wait)
	}
	if dials.Load() == 0 {
		t.Fatal("n1 never dialled its validator: the test proves nothing")
	}
	t.Logf("n1 handed over %s after taking office, after %d failed dials", took.Round(10*time.Millisecond), dials.Load())
	time.Sleep(time.Second)
	before := dials.Load()
	time.Sleep(time.Second)
	if d := dials.Load() - before; d != 0 || cl1.IsLeader() {
		t.Fatalf("after the handover n1 leads=%v and dialled %d more times", cl1.IsLeader(), d)
	}
	if _, _, next := n1.handover.due(time.Now(), watermarkPositions(cl1)); next != 2*wait {
		t.Fatalf("n1's next wait is %s, want %s (nothing was signed since)", next, 2*wait)
	}
}

// TestHandoverIgnoresUnwatchedChains: a reconnect: false chain that keeps
// signing says nothing about the watched chains; its watermark moving
// must not reset the doubled wait, or leadership would move every base
// wait for ever while the watched validator is unreachable from everyone.
func TestHandoverIgnoresUnwatchedChains(t *testing.T) {
	base := 5 * time.Second
	h := newHandover(base, []string{"watched"})
	h.startTerm(at(0))
	wms := map[string]fsm.HRS{"watched": wm(10), "other": wm(100)}
	if due, _, _ := h.due(at(base), wms); !due {
		t.Fatal("not due after the base wait")
	}
	h.handedOver(wms)
	h.startTerm(at(0))
	moved := map[string]fsm.HRS{"watched": wm(10), "other": wm(101)}
	if due, _, wait := h.due(at(base), moved); due || wait != 2*base {
		t.Fatalf("due=%v wait=%s after only the unwatched chain signed, want the doubled %s", due, wait, 2*base)
	}
	if _, _, wait := h.due(at(base), map[string]fsm.HRS{"watched": wm(11), "other": wm(101)}); wait != base {
		t.Fatalf("wait %s after the watched chain signed, want the base %s", wait, base)
	}
}

func TestHandoverTarget(t *testing.T) {
	voter := func(id string) cluster.MemberHealth {
		return cluster.MemberHealth{ID: id, Suffrage: "Voter", Reachable: true}
	}
	down := voter("b")
	down.Reachable = false
	learner := voter("b")
	learner.Suffrage = "Nonvoter"
	abc := []cluster.MemberHealth{voter("c"), voter("a"), voter("b")} // configuration order is not id order
	for _, tc := range []struct {
		name    string
		self    string
		members []cluster.MemberHealth
		want    string
	}{
		{"next after self", "a", abc, "b"},
		{"next after self, not the first in the configuration", "b", abc, "c"},
		{"wraps round", "c", abc, "a"},
		{"skips an unreachable voter", "a", []cluster.MemberHealth{voter("a"), down, voter("c")}, "c"},
		{"skips a non-voter", "a", []cluster.MemberHealth{voter("a"), learner, voter("c")}, "c"},
		{"self not in the list", "bb", abc, "c"},
		{"nobody else", "a", []cluster.MemberHealth{voter("a")}, ""},
		{"nobody reachable", "a", []cluster.MemberHealth{voter("a"), down}, ""},
	} {
		if got := handoverTarget(tc.self, tc.members); got != tc.want {
			t.Errorf("%s: handoverTarget(%q) = %q, want %q", tc.name, tc.self, got, tc.want)
		}
	}
}

// TestHandoverTargetGoesRound: following the targets from any voter
// visits every voter before coming back (A, B, C with the validators
// reachable only from C used to go A, B, A, B... and never C).
func TestHandoverTargetGoesRound(t *testing.T) {
	var ms []cluster.MemberHealth
	for _, id := range []string{"n3", "n5", "n1", "n4", "n2"} {
		ms = append(ms, cluster.MemberHealth{ID: id, Suffrage: "Voter", Reachable: true})
	}
	for _, start := range []string{"n1", "n3", "n5"} {
		seen := map[string]bool{start: true}
		at := start
		for range len(ms) - 1 {
			at = handoverTarget(at, ms)
			if seen[at] {
				t.Fatalf("from %s: %s led twice before every voter was tried (%v)", start, at, seen)
			}
			seen[at] = true
		}
		if next := handoverTarget(at, ms); next != start {
			t.Fatalf("from %s: after every voter, %s hands to %s, want %s", start, at, next, start)
		}
	}
}

// TestHandoverReachesTheThirdVoter: n1 and n2 cannot reach the validator
// (n1 dials a listener that never completes a handshake; n2 watches the
// chain and hears nothing), n3 stands for the node that can (it has
// nothing to hand over for, so it keeps leading). Raft's own choice
// bounced leadership between n1 and n2, the first two voters in the
// configuration; the handover must reach n3 within two waits.
func TestHandoverReachesTheThirdVoter(t *testing.T) {
	addr, _ := dialCounter(t)
	home1, _, _ := testHome(t, validatorEntry(addr))
	cfg1, err := config.Load(home1)
	if err != nil {
		t.Fatal(err)
	}
	h2, r2, _ := memberHome(t, home1, "n2")
	h3, r3, _ := memberHome(t, home1, "n3")
	peers := []cluster.Server{{ID: "n1", Address: cfg1.Cluster.RaftAddr}, {ID: "n2", Address: r2}, {ID: "n3", Address: r3}}
	const wait = 1500 * time.Millisecond
	ms := []*member{{id: "n1", home: home1}, {id: "n2", home: h2}, {id: "n3", home: h3}}
	ms[0].node, ms[0].stop = runNode(t, home1, peers, nil,
		func(n *Node) { n.handover = newHandover(wait, handoverChains(n.validators)) })
	ms[1].node, ms[1].stop = runNode(t, h2, nil, []string{"n1"},
		func(n *Node) { n.handover = newHandover(wait, []string{testChain}) })
	ms[2].node, ms[2].stop = runNode(t, h3, nil, []string{"n1"}, nil)

	for _, m := range ms {
		raftOf(t, m.node)
	}
	if first := waitLeader(t, ms); first.id == "n3" {
		// Start from a node that cannot reach the validator.
		if err := raftOf(t, first.node).TransferLeadershipTo("n1"); err != nil {
			t.Fatal(err)
		}
	}
	var led []string
	start := time.Now()
	// Two waits and two transfers; the rest is room for a loaded machine.
	for deadline := start.Add(7 * wait); ; time.Sleep(20 * time.Millisecond) {
		cur := ""
		for _, m := range ms {
			if m.node.cluster.Load().IsLeader() {
				cur = m.id
			}
		}
		if cur != "" && (len(led) == 0 || led[len(led)-1] != cur) {
			led = append(led, cur)
		}
		if cur == "n3" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("n3 has not led %s after the test started watching; leaders in turn: %v", 7*wait, led)
		}
	}
	t.Logf("leaders in turn: %v; n3 led %s later", led, time.Since(start).Round(10*time.Millisecond))
	time.Sleep(wait + time.Second)
	if !ms[2].node.cluster.Load().IsLeader() {
		t.Fatalf("n3, which has nothing to hand over for, no longer leads")
	}
}
