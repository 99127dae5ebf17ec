package fsm

import (
	"testing"

	"github.com/hashicorp/raft"
)

// FuzzApply feeds arbitrary log entries to a state machine holding a
// watermark: it must never panic, and an entry that does not decode must
// leave the state exactly as it was.
func FuzzApply(f *testing.F) {
	good, _ := EncodeReserve(Reserve{ChainID: chain, HRS: HRS{5, 0, StepPrevote}, SignBytes: voteBytes(5, 0, 1, 1, t0), NeedState: true})
	f.Add(good)
	v1, _ := EncodeReserve(Reserve{ChainID: "other", HRS: HRS{5, 0, StepPrevote}, SignBytes: voteBytes(5, 0, 1, 1, t0)})
	f.Add(v1)
	f.Add([]byte{byte(CmdReserve), 1, '{', '}'})
	f.Add([]byte{byte(CmdSetMember), 1})
	f.Add([]byte{})
	imp, _ := Encode(CmdImport, Import{ChainID: chain, HRS: HRS{3, 0, StepPrevote}})
	f.Add(imp)
	key, _ := Encode(CmdSetChainKey, SetChainKey{ChainID: chain, PubKey: []byte{1}, KeyType: "ed25519"})
	f.Add(key)
	f.Fuzz(func(t *testing.T, data []byte) {
		m := newWith(t, chain)
		seed, _ := EncodeReserve(Reserve{ChainID: chain, HRS: HRS{4, 0, StepPrecommit}, SignBytes: voteBytes(4, 0, 2, 1, t0)})
		m.Apply(&raft.Log{Type: raft.LogCommand, Data: seed})
		before, _ := m.Watermark(chain)
		res := m.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
		after, _ := m.Watermark(chain)
		if after.HRS.Compare(before.HRS) < 0 {
			t.Fatalf("watermark moved back from %s to %s", before.HRS, after.HRS)
		}
		if _, isErr := res.(error); isErr && after.HRS != before.HRS {
			t.Fatal("a rejected entry changed the watermark")
		}
	})
}
