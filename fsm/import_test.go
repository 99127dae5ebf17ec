package fsm

import (
	"bytes"
	"testing"

	"github.com/hashicorp/raft"
)

func applyCmd(t *testing.T, f *FSM, typ CommandType, body any) any {
	t.Helper()
	data, err := Encode(typ, body)
	if err != nil {
		t.Fatal(err)
	}
	return f.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
}

func TestReserveWithoutStateIsRefused(t *testing.T) {
	f := New()
	d := apply(t, f, 1, Reserve{ChainID: chain, HRS: HRS{1, 0, StepPropose}, SignBytes: []byte{1}})
	if d.Outcome != Refuse || d.Reason != ReasonNoState {
		t.Fatalf("got %v %s, want a no_state refusal", d.Outcome, d.Reason)
	}
	if _, ok := f.Watermark(chain); ok {
		t.Fatal("a refused reservation created a watermark")
	}
}

func TestImportNeverLowers(t *testing.T) {
	f := New()
	r := applyCmd(t, f, CmdImport, Import{ChainID: chain, HRS: HRS{100, 2, StepPrevote}, SignBytes: []byte{7}}).(ImportResult)
	if !r.Applied || r.Had || r.Current.Height != 100 {
		t.Fatalf("first import: %+v", r)
	}
	for _, h := range []HRS{{99, 5, StepPrecommit}, {100, 1, StepPrecommit}, {100, 2, StepPropose}, {100, 2, StepPrevote}, {0, 0, 0}} {
		r := applyCmd(t, f, CmdImport, Import{ChainID: chain, HRS: h}).(ImportResult)
		if r.Applied {
			t.Fatalf("import of %s over 100/2/prevote applied", h)
		}
		if w, _ := f.Watermark(chain); w.HRS != (HRS{100, 2, StepPrevote}) || !bytes.Equal(w.SignBytes, []byte{7}) {
			t.Fatalf("import of %s changed the watermark to %+v", h, w)
		}
	}
	r = applyCmd(t, f, CmdImport, Import{ChainID: chain, HRS: HRS{100, 2, StepPrecommit}}).(ImportResult)
	if !r.Applied || r.Previous.HRS != (HRS{100, 2, StepPrevote}) {
		t.Fatalf("raising import: %+v", r)
	}
	// An imported position without bytes is taken: the same HRS is refused,
	// the next one is allowed.
	if d := apply(t, f, 9, Reserve{ChainID: chain, HRS: HRS{100, 2, StepPrecommit}, SignBytes: []byte{1}}); d.Outcome != Refuse {
		t.Fatal("request at an imported position without bytes was allowed")
	}
	if d := apply(t, f, 10, Reserve{ChainID: chain, HRS: HRS{101, 0, StepPropose}, SignBytes: []byte{1}}); d.Outcome != Allow {
		t.Fatalf("next height refused: %s", d.Detail)
	}
	// Invalid positions change nothing.
	r = applyCmd(t, f, CmdImport, Import{ChainID: chain, HRS: HRS{500, 0, 9}}).(ImportResult)
	if r.Applied {
		t.Fatal("import with an invalid step applied")
	}
}

func TestChainKeyFirstWriterWins(t *testing.T) {
	f := New()
	r := applyCmd(t, f, CmdSetChainKey, SetChainKey{ChainID: chain, PubKey: []byte{1, 2}, KeyType: "ed25519"}).(KeyResult)
	if !r.Matches {
		t.Fatal("first key not recorded")
	}
	r = applyCmd(t, f, CmdSetChainKey, SetChainKey{ChainID: chain, PubKey: []byte{3, 4}, KeyType: "ed25519"}).(KeyResult)
	if r.Matches || !bytes.Equal(r.Recorded.PubKey, []byte{1, 2}) {
		t.Fatalf("a second key replaced the first: %+v", r)
	}
	if k, _ := f.ChainKey(chain); !bytes.Equal(k.PubKey, []byte{1, 2}) {
		t.Fatal("recorded key changed")
	}
}

func TestSnapshotV1StillRestores(t *testing.T) {
	v1 := `{"version":1,"chains":{"a":{"height":7,"round":0,"step":3,"sign_bytes":"AQ=="}},"members":{"n1":"127.0.0.1:9"}}`
	g := New()
	if err := g.Restore(readCloser{bytes.NewReader([]byte(v1))}); err != nil {
		t.Fatal(err)
	}
	if w, ok := g.Watermark("a"); !ok || w.Height != 7 {
		t.Fatalf("chain a: %+v", w)
	}
	if g.MemberAPIAddr("n1") != "127.0.0.1:9" {
		t.Fatal("v1 member lost")
	}
	f := newWith(t, "a")
	applyCmd(t, f, CmdSetChainKey, SetChainKey{ChainID: "a", PubKey: []byte{5}, KeyType: "ed25519"})
	applyCmd(t, f, CmdSetMember, SetMember{ID: "n2", APIAddr: "x:1", Level: Level})
	snap, _ := f.Snapshot()
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	h := New()
	if err := h.Restore(readCloser{bytes.NewReader(s.Bytes())}); err != nil {
		t.Fatal(err)
	}
	if k, ok := h.ChainKey("a"); !ok || !bytes.Equal(k.PubKey, []byte{5}) {
		t.Fatal("key lost in snapshot")
	}
	if m, _ := h.Member("n2"); m.Level != Level {
		t.Fatal("member level lost in snapshot")
	}
}

// TestReserveVersion1ReplaysAsItWasApplied: raft replays the first
// release's entries after an upgrade; a version 1 reservation of a chain
// without a watermark must apply as it did then (from zero), or a replica
// that replays the log would lose the watermark that a replica restoring a
// snapshot keeps.
func TestReserveVersion1ReplaysAsItWasApplied(t *testing.T) {
	old := New()
	for h := int64(1); h <= 5; h++ {
		data, _ := EncodeReserve(Reserve{ChainID: chain, HRS: HRS{h, 0, StepPrecommit}, SignBytes: []byte{byte(h)}})
		if d := old.Apply(&raft.Log{Type: raft.LogCommand, Data: data}).(Decision); d.Outcome != Allow {
			t.Fatalf("v1 reserve at %d: %v %s", h, d.Outcome, d.Detail)
		}
	}
	if w, _ := old.Watermark(chain); w.Height != 5 {
		t.Fatalf("watermark %s", w.HRS)
	}
	if old.MaxLevel() != 0 {
		t.Fatalf("v1 entries need level 0, got %d", old.MaxLevel())
	}
	// A version 2 reservation of another chain without state is refused,
	// and marks the log as needing level 1.
	data, _ := EncodeReserve(Reserve{ChainID: "new", HRS: HRS{1, 0, StepPropose}, SignBytes: []byte{1}, NeedState: true})
	if d := old.Apply(&raft.Log{Type: raft.LogCommand, Data: data}).(Decision); d.Reason != ReasonNoState {
		t.Fatalf("v2 without state: %v", d.Outcome)
	}
	if old.MaxLevel() != 1 {
		t.Fatalf("after a v2 entry MaxLevel is %d, want 1", old.MaxLevel())
	}
	snap, _ := old.Snapshot()
	var s sink
	snap.Persist(&s)
	g := New()
	if err := g.Restore(readCloser{bytes.NewReader(s.Bytes())}); err != nil || g.MaxLevel() != 1 {
		t.Fatalf("max level lost in snapshot: %v %d", err, g.MaxLevel())
	}
}

// TestStateRefusalIsTheRuleApplyUses: the refusal the leader and the node
// ask for is the one a version 2 reservation gets from Apply.
func TestStateRefusalIsTheRuleApplyUses(t *testing.T) {
	f := newWith(t, "known")
	if _, refused := f.StateRefusal("known"); refused {
		t.Fatal("a chain with a watermark is refused")
	}
	d, refused := f.StateRefusal(chain)
	if !refused || d.Outcome != Refuse || d.Reason != ReasonNoState || d.Err() == nil {
		t.Fatalf("chain without a watermark: %v %+v", refused, d)
	}
	if got := apply(t, f, 1, Reserve{ChainID: chain, HRS: HRS{1, 0, StepPropose}, SignBytes: []byte{1}}); got.Reason != d.Reason || got.Detail != d.Detail {
		t.Fatalf("Apply refuses with %q/%q, StateRefusal with %q/%q", got.Reason, got.Detail, d.Reason, d.Detail)
	}
}
