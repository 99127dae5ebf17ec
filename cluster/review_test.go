package cluster

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

// Found by review: any node certificate may admit itself as a non-voter,
// and raft obeys an append of a higher term from any server, truncating
// even committed entries. A non-voter never leads or campaigns, so every
// raft RPC from one is refused; the victim's log and leadership stay.
func TestSelfJoinedNonVoterCannotRewriteTheLog(t *testing.T) {
	p := newAuthPKI(t)
	victim, refused := startVictim(t, p)
	etrans := attacker(t, p, p.files(t, "E", ""))
	if _, err := victim.Join(context.Background(), JoinRequest{ID: "E", RaftAddr: string(etrans.LocalAddr()), Fresh: true, Level: fsm.Level}); err != nil {
		t.Fatalf("E joining as itself: %v", err)
	}
	lastIdx, term := victim.Stats().LastIndex, victim.Stats().Term
	low, _ := fsm.Encode(fsm.CmdImport, fsm.Import{ChainID: "c", HRS: fsm.HRS{Height: 5, Step: fsm.StepPropose}, Source: "evil"})
	conf := raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "L", Address: victim.trans.LocalAddr()}}}
	req := &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("E"), Addr: []byte(etrans.LocalAddr())},
		Term:      term + 1,
		Entries: []*raft.Log{
			{Index: 1, Term: term + 1, Type: raft.LogConfiguration, Data: raft.EncodeConfiguration(conf)},
			{Index: 2, Term: term + 1, Type: raft.LogCommand, Data: low},
		},
		LeaderCommitIndex: 2,
	}
	var resp raft.AppendEntriesResponse
	err := etrans.AppendEntries("L", victim.trans.LocalAddr(), req, &resp)
	if err == nil || !strings.Contains(err.Error(), "not a voter") {
		t.Fatalf("append from the non-voter E: err %v, success %v", err, resp.Success)
	}
	if !refused.has(ErrNotAVoter) {
		t.Error("the refusal was not reported")
	}
	if got := victim.Stats(); got.LastIndex < lastIdx || got.Term != term || !victim.IsLeader() {
		t.Fatalf("the victim's log or term moved: last index %d (was %d), term %d (was %d), leader %v",
			got.LastIndex, lastIdx, got.Term, term, victim.IsLeader())
	}
	if err := voteFor(etrans, victim, "E"); err == nil {
		t.Fatal("a non-voter got a vote")
	}
}

// The history guard: an append that would replace an applied entry with
// one of another term, or a snapshot behind the applied index, is refused
// even from a voter; an append that repeats what is applied is not.
func TestAppliedHistoryIsNeverReplaced(t *testing.T) {
	victim, _ := startVictim(t, newAuthPKI(t))
	applied := victim.applied.index.Load()
	var l raft.Log
	if err := victim.st.db.GetLog(applied, &l); err != nil {
		t.Fatal(err)
	}
	same := &raft.AppendEntriesRequest{Entries: []*raft.Log{{Index: applied, Term: l.Term}}}
	if err := victim.rewritesApplied(same); err != nil {
		t.Fatalf("an append repeating applied entry %d was refused: %v", applied, err)
	}
	other := &raft.AppendEntriesRequest{Entries: []*raft.Log{{Index: applied, Term: l.Term + 1}}}
	if err := victim.rewritesApplied(other); !errors.Is(err, ErrRewritesHistory) {
		t.Fatalf("an append replacing applied entry %d: %v", applied, err)
	}
	if err := victim.rewritesApplied(&raft.InstallSnapshotRequest{LastLogIndex: applied - 1}); !errors.Is(err, ErrRewritesHistory) {
		t.Fatalf("a snapshot behind the applied index: %v", err)
	}
	if err := victim.rewritesApplied(&raft.InstallSnapshotRequest{LastLogIndex: applied + 5}); err != nil {
		t.Fatalf("a snapshot ahead of the applied index was refused: %v", err)
	}
}

// Ids vouched for count only until the configuration moves: a removed
// member that was vouched for earlier speaks raft no longer.
func TestVouchedIdsExpireWithTheConfiguration(t *testing.T) {
	p := newAuthPKI(t)
	victim, _ := startVictim(t, p)
	rtrans := attacker(t, p, p.files(t, "R", ""))
	if err := victim.raft.AddNonvoter("R", rtrans.LocalAddr(), 0, time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	victim.VouchPeers([]string{"L", "R"})
	if err := victim.Remove(context.Background(), "R"); err != nil {
		t.Fatal(err)
	}
	if victim.gate.allowed("R") || victim.Trusts("R") {
		t.Fatal("a removed member is still trusted because it was vouched for before its removal")
	}
	if err := voteFor(rtrans, victim, "R"); err == nil {
		t.Fatal("a removed, once vouched member got a vote")
	}
}
