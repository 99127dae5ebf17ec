package signer_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/signer"
)

// slowFirstKey is a non-deterministic key that counts every signature it
// makes; with slow set, its first signature arrives only once the
// request's deadline has passed (a slow HSM that finishes what it started).
type slowFirstKey struct {
	*hedgedKey
	slow bool
	mu   sync.Mutex
	sigs [][]byte
}

func (k *slowFirstKey) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	k.mu.Lock()
	first := len(k.sigs) == 0
	k.mu.Unlock()
	if first && k.slow {
		<-ctx.Done()
	}
	sig, err := k.hedgedKey.Sign(ctx, msg)
	k.mu.Lock()
	k.sigs = append(k.sigs, sig)
	k.mu.Unlock()
	return sig, err
}

func (k *slowFirstKey) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.sigs)
}

func quietSigner(t *testing.T, r signer.Reserver, rec signer.Recorder, st signer.StateReader, k keys.Signer) *signer.Signer {
	t.Helper()
	s, err := signer.New(signer.Config{NodeID: "n1", Reserver: r, Recorder: rec, State: st,
		Keys: map[string]keys.Signer{chainID: k}, SignTimeout: 300 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// dropped fails the test unless resp is the empty answer on which the
// transport drops the connection (CometBFT then retries the request).
func dropped(t *testing.T, what string, resp privvalproto.Message) {
	t.Helper()
	if resp.Sum != nil {
		t.Fatalf("%s: answered %v; want the connection dropped so the validator retries "+
			"(CometBFT never retries a signer error)", what, resp.Sum)
	}
}

// TestRecordCutShortDropsTheConnection: a key that is not deterministic
// signs so slowly that the request's deadline passes before its signature
// is recorded through raft. Nothing was released, so the connection is
// dropped (an error answer would lose the vote for good). Nothing was
// recorded either: the retry signs afresh, records that signature and
// releases it, and a further retry gets the same bytes.
func TestRecordCutShortDropsTheConnection(t *testing.T) {
	_, leader, _, stop := startRaft(t, 1, chainID)
	defer stop()
	k := &slowFirstKey{hedgedKey: newHedgedKey(t), slow: true}
	s := quietSigner(t, leader, leader, leader.FSM(), k)
	vote := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 5, BlockID: bid(2), Timestamp: ts}

	// A request whose context has already ended never reaches the key.
	past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	dropped(t, "deadline already passed", s.Handle(past, chainID, voteReq(chainID, vote)))
	if k.count() != 0 {
		t.Fatal("the key signed although the reservation never committed")
	}

	dropped(t, "record cut short", s.Handle(context.Background(), chainID, voteReq(chainID, vote)))
	if w, _ := leader.FSM().Watermark(chainID); w.HRS.Height != 5 || w.Signature != nil {
		t.Fatalf("watermark %s with signature %x; want the reservation committed and no signature recorded", w.HRS, w.Signature)
	}
	got, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, vote)))
	if rerr != nil {
		t.Fatalf("retry: %s", rerr.Description)
	}
	w, _ := leader.FSM().Watermark(chainID)
	if k.count() != 2 || !bytes.Equal(got.Signature, w.Signature) ||
		!k.PubKey().VerifySignature(types.VoteSignBytes(chainID, &got), got.Signature) {
		t.Fatalf("retry: %d signatures made, released one recorded: %v; want a fresh signature, recorded, then released",
			k.count(), bytes.Equal(got.Signature, w.Signature))
	}
	again, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, vote)))
	if rerr != nil || !bytes.Equal(again.Signature, got.Signature) || k.count() != 2 {
		t.Fatalf("second retry: %v; want the released signature again, without signing", rerr)
	}
}

// lateRecorder records the first signature through the cluster but tells
// the signer it did not commit in time, as when the entry commits just
// after the caller stopped waiting for it.
type lateRecorder struct {
	*cluster.Node
	mu   sync.Mutex
	late bool
}

func (r *lateRecorder) RecordSignature(ctx context.Context, rec fsm.RecordSignature) (fsm.RecordResult, error) {
	r.mu.Lock()
	late := !r.late
	r.late = true
	r.mu.Unlock()
	res, err := r.Node.RecordSignature(context.WithoutCancel(ctx), rec)
	if late && err == nil {
		return fsm.RecordResult{}, fmt.Errorf("cluster: record signature: %w within 2s (is a quorum reachable?)", cluster.ErrNotCommitted)
	}
	return res, err
}

// TestRetryAfterLateRecordReturnsTheRecordedSignature: the record of a
// non-deterministic signature is reported as not committed, and the
// connection is dropped; the entry committed all the same. The retry, the
// same vote or the same vote with a later timestamp, reserves again, after
// that entry in the raft log, and is answered with the recorded signature
// and timestamp: never a second signature for one vote.
func TestRetryAfterLateRecordReturnsTheRecordedSignature(t *testing.T) {
	_, leader, _, stop := startRaft(t, 1, chainID)
	defer stop()
	k := &slowFirstKey{hedgedKey: newHedgedKey(t)}
	s := quietSigner(t, leader, &lateRecorder{Node: leader}, leader.FSM(), k)
	vote := func(at time.Time) *cmtproto.Vote {
		return &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 9, Round: 1, BlockID: bid(4), Timestamp: at}
	}

	dropped(t, "record reported late", s.Handle(context.Background(), chainID, voteReq(chainID, vote(ts))))
	w, _ := leader.FSM().Watermark(chainID)
	if len(w.Signature) == 0 {
		t.Fatal("the late record is not in the replicated state")
	}
	recorded := w.Signature
	for name, v := range map[string]*cmtproto.Vote{"same vote": vote(ts), "later timestamp": vote(ts.Add(time.Second))} {
		got, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, v)))
		if rerr != nil {
			t.Fatalf("%s: %s", name, rerr.Description)
		}
		if !bytes.Equal(got.Signature, recorded) || !got.Timestamp.Equal(ts) {
			t.Fatalf("%s: released another signature (or timestamp %v) than the recorded one", name, got.Timestamp)
		}
	}
	if k.count() != 1 {
		t.Fatalf("the key signed %d times; the retries must not sign again", k.count())
	}
}
