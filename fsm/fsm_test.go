package fsm

import (
	"bytes"
	"errors"
	"math/rand"
	"strings"
	"testing"
	"time"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
	"github.com/hashicorp/raft"
)

const chain = "test-chain"

var t0 = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

func blockID(b byte) cmtproto.BlockID {
	h := bytes.Repeat([]byte{b}, 32)
	return cmtproto.BlockID{Hash: h, PartSetHeader: cmtproto.PartSetHeader{Total: 1, Hash: h}}
}

func voteBytes(h int64, r int32, typ cmtproto.SignedMsgType, block byte, ts time.Time) []byte {
	v := &cmtproto.Vote{Type: typ, Height: h, Round: r, Timestamp: ts}
	if block != 0 {
		v.BlockID = blockID(block)
	}
	return types.VoteSignBytes(chain, v)
}

func proposalBytes(h int64, r int32, block byte, ts time.Time) []byte {
	return types.ProposalSignBytes(chain, &cmtproto.Proposal{
		Type: cmtproto.ProposalType, Height: h, Round: r, PolRound: -1, BlockID: blockID(block), Timestamp: ts,
	})
}

func apply(t *testing.T, f *FSM, idx uint64, r Reserve) Decision {
	t.Helper()
	r.NeedState = true // what this release's leaders write
	data, err := EncodeReserve(r)
	if err != nil {
		t.Fatal(err)
	}
	res := f.Apply(&raft.Log{Index: idx, Type: raft.LogCommand, Data: data})
	d, ok := res.(Decision)
	if !ok {
		t.Fatalf("apply returned %T (%v), want Decision", res, res)
	}
	return d
}

// newWith returns an FSM holding the empty watermark for each chain, as
// --allow-fresh-state commits it.
func newWith(t testing.TB, chains ...string) *FSM {
	t.Helper()
	f := New()
	for _, c := range chains {
		data, err := Encode(CmdImport, Import{ChainID: c})
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := f.Apply(&raft.Log{Type: raft.LogCommand, Data: data}).(ImportResult); !ok || !r.Applied {
			t.Fatalf("fresh import of %s not applied", c)
		}
	}
	return f
}

func TestDecideRules(t *testing.T) {
	prevote := cmtproto.PrevoteType
	precommit := cmtproto.PrecommitType
	base := HRS{Height: 10, Round: 1, Step: StepPrevote}
	baseBytes := voteBytes(10, 1, prevote, 0xA, t0)

	cases := []struct {
		name      string
		hrs       HRS
		bytes     []byte
		want      Outcome
		reason    string
		wantTS    time.Time
		wantMoved bool
	}{
		{"higher height", HRS{11, 0, StepPropose}, proposalBytes(11, 0, 1, t0), Allow, "", time.Time{}, true},
		{"higher round", HRS{10, 2, StepPropose}, proposalBytes(10, 2, 1, t0), Allow, "", time.Time{}, true},
		{"higher step", HRS{10, 1, StepPrecommit}, voteBytes(10, 1, precommit, 0xA, t0), Allow, "", time.Time{}, true},
		{"same HRS same bytes", base, baseBytes, Allow, "", time.Time{}, false},
		{"same HRS only timestamp", base, voteBytes(10, 1, prevote, 0xA, t0.Add(time.Second)), AllowStored, "", t0, false},
		{"same HRS other block", base, voteBytes(10, 1, prevote, 0xB, t0), Refuse, ReasonConflict, time.Time{}, false},
		{"same HRS nil vs block", base, voteBytes(10, 1, prevote, 0, t0), Refuse, ReasonConflict, time.Time{}, false},
		{"same HRS garbage bytes", base, []byte("not a vote"), Refuse, ReasonConflict, time.Time{}, false},
		{"lower height", HRS{9, 5, StepPrecommit}, voteBytes(9, 5, precommit, 0xA, t0), Refuse, ReasonRegression, time.Time{}, false},
		{"lower round", HRS{10, 0, StepPrecommit}, voteBytes(10, 0, precommit, 0xA, t0), Refuse, ReasonRegression, time.Time{}, false},
		{"lower step", HRS{10, 1, StepPropose}, proposalBytes(10, 1, 0xA, t0), Refuse, ReasonRegression, time.Time{}, false},
		{"zero height", HRS{0, 0, StepPrevote}, voteBytes(0, 0, prevote, 0xA, t0), Refuse, ReasonInvalid, time.Time{}, false},
		{"bad step", HRS{11, 0, 7}, voteBytes(11, 0, prevote, 0xA, t0), Refuse, ReasonInvalid, time.Time{}, false},
		{"empty bytes", HRS{11, 0, StepPrevote}, nil, Refuse, ReasonInvalid, time.Time{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newWith(t, chain, "a", "b")
			if d := apply(t, f, 1, Reserve{ChainID: chain, HRS: base, SignBytes: baseBytes}); d.Outcome != Allow {
				t.Fatalf("seed reservation: %v %s", d.Outcome, d.Detail)
			}
			d := apply(t, f, 2, Reserve{ChainID: chain, HRS: tc.hrs, SignBytes: tc.bytes})
			if d.Outcome != tc.want || d.Reason != tc.reason {
				t.Fatalf("got %v/%q (%s), want %v/%q", d.Outcome, d.Reason, d.Detail, tc.want, tc.reason)
			}
			w, _ := f.Watermark(chain)
			if tc.wantMoved != (w.HRS != base) {
				t.Fatalf("watermark %s after %s, moved=%v want moved=%v", w.HRS, tc.hrs, w.HRS != base, tc.wantMoved)
			}
			switch tc.want {
			case Allow:
				if !bytes.Equal(d.SignBytes, tc.bytes) {
					t.Fatal("allowed bytes differ from the requested bytes")
				}
			case AllowStored:
				if !bytes.Equal(d.SignBytes, baseBytes) {
					t.Fatal("AllowStored must hand back the stored bytes")
				}
				if !d.Timestamp.Equal(tc.wantTS) {
					t.Fatalf("stored timestamp %v, want %v", d.Timestamp, tc.wantTS)
				}
			case Refuse:
				if d.SignBytes != nil || d.Err() == nil {
					t.Fatal("a refusal must carry no bytes and an error")
				}
			}
		})
	}
}

func TestProposalTimestampOnly(t *testing.T) {
	f := newWith(t, chain, "a", "b")
	hrs := HRS{5, 0, StepPropose}
	apply(t, f, 1, Reserve{ChainID: chain, HRS: hrs, SignBytes: proposalBytes(5, 0, 1, t0)})
	d := apply(t, f, 2, Reserve{ChainID: chain, HRS: hrs, SignBytes: proposalBytes(5, 0, 1, t0.Add(time.Minute))})
	if d.Outcome != AllowStored || !d.Timestamp.Equal(t0) {
		t.Fatalf("got %v ts %v", d.Outcome, d.Timestamp)
	}
	d = apply(t, f, 3, Reserve{ChainID: chain, HRS: hrs, SignBytes: proposalBytes(5, 0, 2, t0)})
	if d.Outcome != Refuse || d.Reason != ReasonConflict {
		t.Fatalf("other block at the same proposal HRS: got %v", d.Outcome)
	}
}

func TestChainsAreIndependent(t *testing.T) {
	f := newWith(t, chain, "a", "b")
	apply(t, f, 1, Reserve{ChainID: "a", HRS: HRS{100, 0, StepPrevote}, SignBytes: []byte{1}})
	if d := apply(t, f, 2, Reserve{ChainID: "b", HRS: HRS{1, 0, StepPrevote}, SignBytes: []byte{1}}); d.Outcome != Allow {
		t.Fatalf("chain b blocked by chain a: %s", d.Detail)
	}
}

func TestUnknownCommandChangesNothing(t *testing.T) {
	f := newWith(t, chain, "a", "b")
	apply(t, f, 1, Reserve{ChainID: chain, HRS: HRS{3, 0, StepPrevote}, SignBytes: []byte{1}})
	before := f.Watermarks()
	for _, data := range [][]byte{
		nil, {1}, {99, 1, '{', '}'}, {byte(CmdReserve), 3, '{', '}'}, {byte(CmdReserve), 0, '{', '}'}, {byte(CmdReserve), 1, 'x'},
		append([]byte{byte(CmdReserve), 1}, `{"chain_id":""}`...),
	} {
		res := f.Apply(&raft.Log{Index: 2, Type: raft.LogCommand, Data: data})
		if _, isErr := res.(error); !isErr {
			t.Fatalf("entry %q: got %T, want error", data, res)
		}
	}
	_, _, err := Decode([]byte{99, 1})
	if !errors.Is(err, ErrUnknownCommand) {
		t.Fatalf("unknown type: %v", err)
	}
	after := f.Watermarks()
	if len(after) != len(before) || after[chain].HRS != before[chain].HRS {
		t.Fatal("an unknown entry changed state")
	}
}

// sink is an in-memory raft.SnapshotSink.
type sink struct{ bytes.Buffer }

func (s *sink) ID() string    { return "mem" }
func (s *sink) Cancel() error { return nil }
func (s *sink) Close() error  { return nil }

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func TestSnapshotRestore(t *testing.T) {
	f := newWith(t, chain, "a", "b")
	apply(t, f, 1, Reserve{ChainID: "a", HRS: HRS{7, 1, StepPrecommit}, SignBytes: []byte{7}})
	apply(t, f, 2, Reserve{ChainID: "b", HRS: HRS{9, 0, StepPropose}, SignBytes: []byte{9}})
	data, _ := Encode(CmdSetMember, SetMember{ID: "n1", APIAddr: "127.0.0.1:1"})
	f.Apply(&raft.Log{Index: 3, Type: raft.LogCommand, Data: data})

	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	g := New()
	if err := g.Restore(readCloser{bytes.NewReader(s.Bytes())}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"a", "b"} {
		w1, _ := f.Watermark(id)
		w2, ok := g.Watermark(id)
		if !ok || w1.HRS != w2.HRS || !bytes.Equal(w1.SignBytes, w2.SignBytes) {
			t.Fatalf("chain %s: restored %+v, want %+v", id, w2, w1)
		}
	}
	if g.MemberAPIAddr("n1") != "127.0.0.1:1" {
		t.Fatal("member lost in snapshot")
	}
	// The restored state still refuses a regression.
	data, _ = EncodeReserve(Reserve{ChainID: "a", HRS: HRS{7, 0, StepPrecommit}, SignBytes: []byte{1}})
	if d := g.Apply(&raft.Log{Type: raft.LogCommand, Data: data}).(Decision); d.Outcome != Refuse {
		t.Fatal("restored FSM allowed a regression")
	}
	if err := g.Restore(readCloser{bytes.NewReader([]byte(`{"version":99}`))}); err == nil {
		t.Fatal("unknown snapshot version accepted")
	}
	if err := g.Restore(readCloser{bytes.NewReader([]byte(`garbage`))}); err == nil {
		t.Fatal("corrupt snapshot accepted")
	}
	if w, ok := g.Watermark("a"); !ok || w.Height != 7 {
		t.Fatal("a failed restore damaged the state")
	}
}

// TestPropertyRandomSequences drives random requests, including repeats and
// conflicting messages at the same position as two validator nodes would
// send, and checks the double-sign invariants over the whole history.
func TestPropertyRandomSequences(t *testing.T) {
	for seed := int64(1); seed <= 200; seed++ {
		rng := rand.New(rand.NewSource(seed))
		f := newWith(t, chain, "a", "b")
		signed := map[HRS][]byte{}
		var last HRS
		for i := uint64(1); i <= 300; i++ {
			h := HRS{Height: 1 + rng.Int63n(6), Round: int32(rng.Intn(3)), Step: int8(1 + rng.Intn(3))}
			block := byte(1 + rng.Intn(2))
			ts := t0.Add(time.Duration(rng.Intn(3)) * time.Second)
			var sb []byte
			if h.Step == StepPropose {
				sb = proposalBytes(h.Height, h.Round, block, ts)
			} else {
				typ := cmtproto.PrevoteType
				if h.Step == StepPrecommit {
					typ = cmtproto.PrecommitType
				}
				sb = voteBytes(h.Height, h.Round, typ, block, ts)
			}
			d := apply(t, f, i, Reserve{ChainID: chain, HRS: h, SignBytes: sb})
			w, _ := f.Watermark(chain)
			if w.HRS.Compare(last) < 0 {
				t.Fatalf("seed %d: watermark moved back from %s to %s", seed, last, w.HRS)
			}
			last = w.HRS
			if d.Outcome == Refuse {
				continue
			}
			if h.Compare(w.HRS) != 0 {
				t.Fatalf("seed %d: allowed %s while the watermark is %s", seed, h, w.HRS)
			}
			if prev, ok := signed[h]; ok && !bytes.Equal(prev, d.SignBytes) {
				t.Fatalf("seed %d: two different sign bytes released at %s", seed, h)
			}
			signed[h] = d.SignBytes
		}
	}
}

func persisted(t *testing.T, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var s sink
	if err := snap.Persist(&s); err != nil {
		t.Fatal(err)
	}
	return s.Bytes()
}

// The attack of issue 9: a peer installs a snapshot whose watermark is
// below what this replica holds, so that it signs those heights again.
func TestRestoreRefusesToLowerOrForgetAWatermark(t *testing.T) {
	f := newWith(t, chain, "a", "b")
	apply(t, f, 1, Reserve{ChainID: "a", HRS: HRS{1000, 0, StepPrecommit}, SignBytes: []byte{1}})
	apply(t, f, 2, Reserve{ChainID: "b", HRS: HRS{50, 0, StepPrevote}, SignBytes: []byte{2}})

	low := newWith(t, chain, "a", "b")
	apply(t, low, 1, Reserve{ChainID: "a", HRS: HRS{5, 0, StepPropose}, SignBytes: []byte{5}})
	apply(t, low, 2, Reserve{ChainID: "b", HRS: HRS{60, 0, StepPrevote}, SignBytes: []byte{6}})
	err := f.Restore(readCloser{bytes.NewReader(persisted(t, low))})
	if !errors.Is(err, ErrWouldLower) {
		t.Fatalf("a snapshot lowering chain a was installed (err %v)", err)
	}
	for _, want := range []string{"chain a", "1000/0/precommit", "5/0/proposal"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("refusal %q does not name %q", err, want)
		}
	}
	if w, _ := f.Watermark("a"); w.Height != 1000 {
		t.Fatalf("refused restore changed the state: a at %s", w.HRS)
	}
	if w, _ := f.Watermark("b"); w.Height != 50 {
		t.Fatalf("refused restore changed the state: b at %s", w.HRS)
	}

	forget := newWith(t, chain, "b")
	apply(t, forget, 1, Reserve{ChainID: "b", HRS: HRS{70, 0, StepPrevote}, SignBytes: []byte{7}})
	err = f.Restore(readCloser{bytes.NewReader(persisted(t, forget))})
	if !errors.Is(err, ErrWouldLower) || !strings.Contains(err.Error(), "chain a") {
		t.Fatalf("a snapshot forgetting chain a was installed (err %v)", err)
	}

	// A snapshot that holds everything at or above is installed.
	high := newWith(t, chain, "a", "b", "c")
	apply(t, high, 1, Reserve{ChainID: "a", HRS: HRS{1000, 0, StepPrecommit}, SignBytes: []byte{1}})
	apply(t, high, 2, Reserve{ChainID: "b", HRS: HRS{51, 0, StepPropose}, SignBytes: []byte{3}})
	apply(t, high, 3, Reserve{ChainID: "c", HRS: HRS{1, 0, StepPropose}, SignBytes: []byte{4}})
	if err := f.Restore(readCloser{bytes.NewReader(persisted(t, high))}); err != nil {
		t.Fatalf("a snapshot at or above every watermark was refused: %v", err)
	}
	if w, _ := f.Watermark("b"); w.Height != 51 {
		t.Fatalf("b at %s after restore, want 51", w.HRS)
	}
}

// TestLevelIsTheTablesHighest: Level is what this binary registers, so it
// must cover every version of every type in the commands table.
func TestLevelIsTheTablesHighest(t *testing.T) {
	highest := 0
	for typ, c := range commands {
		if c == nil {
			continue
		}
		if c.name == "" || len(c.levels) == 0 || c.decode == nil || c.apply == nil {
			t.Fatalf("type %d: incomplete table row %+v", typ, c)
		}
		for _, lv := range c.levels {
			highest = max(highest, lv)
		}
	}
	if highest != Level {
		t.Fatalf("the table's highest level is %d, Level is %d", highest, Level)
	}
}

// A snapshot at the same position with other sign bytes would let a second
// message be signed there (found by review).
func TestRestoreRefusesOtherBytesAtTheSamePosition(t *testing.T) {
	f := newWith(t, chain)
	apply(t, f, 1, Reserve{ChainID: chain, HRS: HRS{1000, 0, StepPrecommit}, SignBytes: voteBytes(1000, 0, cmtproto.PrecommitType, 1, t0)})
	g := newWith(t, chain)
	apply(t, g, 1, Reserve{ChainID: chain, HRS: HRS{1000, 0, StepPrecommit}, SignBytes: voteBytes(1000, 0, cmtproto.PrecommitType, 2, t0)})
	if err := f.Restore(readCloser{bytes.NewReader(persisted(t, g))}); !errors.Is(err, ErrWouldLower) {
		t.Fatalf("a snapshot with other bytes at the watermark was installed: %v", err)
	}
	d := apply(t, f, 2, Reserve{ChainID: chain, HRS: HRS{1000, 0, StepPrecommit}, SignBytes: voteBytes(1000, 0, cmtproto.PrecommitType, 2, t0)})
	if d.Outcome != Refuse {
		t.Fatalf("DOUBLE SIGN: a second block at 1000/0/precommit was %v", d.Outcome)
	}
	same := newWith(t, chain)
	apply(t, same, 1, Reserve{ChainID: chain, HRS: HRS{1000, 0, StepPrecommit}, SignBytes: voteBytes(1000, 0, cmtproto.PrecommitType, 1, t0)})
	if err := f.Restore(readCloser{bytes.NewReader(persisted(t, same))}); err != nil {
		t.Fatalf("a snapshot with the same bytes was refused: %v", err)
	}
}
