package signer_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
)

// recorder is an Observer that keeps what the metrics would show.
type recorder struct {
	mu       sync.Mutex
	refused  map[string]int
	missed   map[string]int64
	lastSign string
}

func (r *recorder) ObserveSign(string, string, time.Duration)    {}
func (r *recorder) ObserveReserve(string, time.Duration)         {}
func (r *recorder) ObserveKeySign(string, string, time.Duration) {}
func (r *recorder) Refused(_, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refused[reason]++
}

func (r *recorder) Signed(_, step string, h int64, round int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lastSign = fmt.Sprintf("%s@%d/%d", step, h, round)
}

func (r *recorder) Missed(_, step string, n int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.missed[step] += n
}

func newObserved(t *testing.T, f *fsm.FSM) (*signer.Signer, *countingKey, *recorder, *bytes.Buffer) {
	t.Helper()
	k := &countingKey{Signer: file.New(ed25519.GenPrivKey())}
	rec := &recorder{refused: map[string]int{}, missed: map[string]int64{}}
	var logs bytes.Buffer
	s, err := signer.New(signer.Config{NodeID: "n1", Reserver: &fakeReserver{state: f}, State: f,
		Keys: map[string]keys.Signer{chainID: k}, SignTimeout: 600 * time.Millisecond, Observer: rec,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s, k, rec, &logs
}

func importFresh(t *testing.T, f *fsm.FSM) {
	t.Helper()
	data, err := fsm.Encode(fsm.CmdImport, fsm.Import{ChainID: chainID})
	if err != nil {
		t.Fatal(err)
	}
	f.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
}

// TestNoStateDropsTheConnection: a chain without a watermark is not
// answered with a RemoteSignerError (CometBFT never retries one, and the
// chain stalls until the validator restarts) but with no answer at all,
// which makes the transport drop the connection and the validator retry.
// A state imported while a request waits is used by that very request.
func TestNoStateDropsTheConnection(t *testing.T) {
	f := fsm.New()
	s, k, rec, logs := newObserved(t, f)
	vote := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, BlockID: bid(1), Timestamp: ts}

	start := time.Now()
	resp := s.Handle(context.Background(), chainID, voteReq(chainID, vote))
	if resp.Sum != nil {
		t.Fatalf("no watermark: answered %T %v, want no answer (the connection is dropped)", resp.Sum, resp.Sum)
	}
	if held := time.Since(start); held < 300*time.Millisecond || held > 600*time.Millisecond {
		t.Errorf("request held %s before the drop, want about two thirds of the 600ms sign timeout", held)
	}
	if k.signs != 0 {
		t.Fatalf("signed %d times without a watermark", k.signs)
	}
	if rec.refused[fsm.ReasonNoState] != 1 {
		t.Errorf("refusals %v, want one no_state", rec.refused)
	}
	if !strings.Contains(logs.String(), "dropping the connection so the validator retries") {
		t.Errorf("log does not say why the connection was dropped:\n%s", logs)
	}

	// The operator imports while the retried request waits.
	go func() {
		time.Sleep(100 * time.Millisecond)
		importFresh(t, f)
	}()
	v2 := *vote
	got, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, &v2)))
	if rerr != nil || len(got.Signature) == 0 {
		t.Fatalf("after the import: vote %v, error %v; want a signature", got, rerr)
	}
	if rec.lastSign != "prevote@1/0" {
		t.Errorf("last signature %q, want prevote@1/0", rec.lastSign)
	}
}

// TestMissedVotesCounted: heights the validator skipped between the
// watermark and its next vote count as missed prevotes and precommits.
func TestMissedVotesCounted(t *testing.T) {
	f := fsm.New()
	importFresh(t, f)
	s, _, rec, _ := newObserved(t, f)
	sign := func(typ cmtproto.SignedMsgType, h int64) {
		t.Helper()
		v := &cmtproto.Vote{Type: typ, Height: h, BlockID: bid(byte(h)), Timestamp: ts}
		if _, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, v))); rerr != nil {
			t.Fatalf("%v at %d: %v", typ, h, rerr)
		}
	}
	sign(cmtproto.PrevoteType, 1) // the first vote of a fresh chain misses nothing
	sign(cmtproto.PrecommitType, 1)
	sign(cmtproto.PrevoteType, 2)
	if rec.missed["prevote"] != 0 || rec.missed["precommit"] != 0 {
		t.Fatalf("missed %v after consecutive votes, want none", rec.missed)
	}
	// Height 2's precommit and heights 3 and 4 entirely are skipped.
	sign(cmtproto.PrevoteType, 5)
	if rec.missed["prevote"] != 2 || rec.missed["precommit"] != 3 {
		t.Fatalf("missed %v, want 2 prevotes (3, 4) and 3 precommits (2, 3, 4)", rec.missed)
	}
}
