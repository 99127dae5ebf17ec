package signer_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
)

// TestRetryAtWatermarkStillReserves: the local replica already holds the
// chain's watermark with the very bytes a validator asks for again (the
// old leader reserved them, or this node did before it lost its lease). A
// retry of that request, byte for byte or with only the timestamp moved,
// must still commit through Reserve on this node: a node that cannot
// commit (it lost its lease, it is not the leader) must not answer from
// its local state, whatever that state says. Nothing is signed until a
// reservation succeeds; then the stored bytes are.
func TestRetryAtWatermarkStillReserves(t *testing.T) {
	ctx := context.Background()
	var (
		f *fsm.FSM
		k *countingKey
		r *fakeReserver
		s *signer.Signer
	)
	// fresh starts a node with the empty watermark, as after an import.
	fresh := func() {
		t.Helper()
		f = freshFSM(t, chainID)
		k = &countingKey{Signer: file.New(ed25519.GenPrivKey())}
		r = &fakeReserver{state: f}
		var err error
		s, err = signer.New(signer.Config{NodeID: "n1", Reserver: r, State: f,
			Keys: map[string]keys.Signer{chainID: k}, SignTimeout: 500 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
	}
	prop := &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: 7, PolRound: -1, BlockID: bid(3), Timestamp: ts}
	vote := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 7, BlockID: bid(3), Timestamp: ts}

	// replicate applies a reservation to the local FSM as the old leader's
	// committed entry would arrive: this node never reserved it itself.
	replicate := func(hrs fsm.HRS, sb []byte) {
		t.Helper()
		data, err := fsm.EncodeReserve(fsm.Reserve{ChainID: chainID, HRS: hrs, SignBytes: sb})
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := f.Apply(applyLog(data)).(fsm.Decision); !ok || d.Outcome != fsm.Allow {
			t.Fatalf("replicating %s: %v", hrs, d)
		}
	}
	later := func(v cmtproto.Vote) *cmtproto.Vote { v.Timestamp = ts.Add(2 * time.Second); return &v }
	laterProp := func(p cmtproto.Proposal) *cmtproto.Proposal { p.Timestamp = ts.Add(2 * time.Second); return &p }

	for _, c := range []struct {
		name string
		fail error
	}{
		// A leader cut off from its quorum: the entry does not commit.
		{"lease lost", fmt.Errorf("cluster: reserve: %w within 2s (is a quorum reachable?)", cluster.ErrNotCommitted)},
		// Leadership moved while it waited: the connection is dropped.
		{"not leader", fmt.Errorf("cluster: reserve: %w: leadership lost while committing", cluster.ErrNotLeader)},
	} {
		name, fail := c.name, c.fail
		fresh()
		for _, step := range []struct {
			what string
			hrs  fsm.HRS
			sb   []byte
			req  privvalproto.Message
		}{
			{"proposal, same bytes", fsm.HRS{Height: 7, Step: fsm.StepPropose}, types.ProposalSignBytes(chainID, prop), propReq(chainID, prop)},
			{"proposal, later timestamp", fsm.HRS{Height: 7, Step: fsm.StepPropose}, types.ProposalSignBytes(chainID, prop), propReq(chainID, laterProp(*prop))},
			{"precommit, same bytes", fsm.HRS{Height: 7, Step: fsm.StepPrecommit}, types.VoteSignBytes(chainID, vote), voteReq(chainID, vote)},
			{"precommit, later timestamp", fsm.HRS{Height: 7, Step: fsm.StepPrecommit}, types.VoteSignBytes(chainID, vote), voteReq(chainID, later(*vote))},
		} {
			if w, _ := f.Watermark(chainID); w.HRS.Compare(step.hrs) < 0 {
				replicate(step.hrs, step.sb)
			}
			if w, _ := f.Watermark(chainID); w.HRS != step.hrs || !bytes.Equal(w.SignBytes, step.sb) {
				t.Fatalf("%s: local watermark %s, want %s with the request's bytes", step.what, w.HRS, step.hrs)
			}
			r.mu.Lock()
			r.fail, r.calls = fail, 0
			r.mu.Unlock()
			resp := s.Handle(ctx, chainID, step.req)
			if got := respErr(resp); got == nil && resp.Sum != nil {
				t.Fatalf("%s, %s: answered with a signature from local state", name, step.what)
			}
			if r.calls != 1 {
				t.Fatalf("%s, %s: %d reservations, want the retry to go through Reserve once", name, step.what, r.calls)
			}
			if k.signs != 0 {
				t.Fatalf("%s, %s: the key signed although the reservation failed", name, step.what)
			}
		}
	}

	// Once the reservation commits, the retry is answered with the stored
	// bytes' signature: the requests above were good retries, refused only
	// for want of a committed reservation.
	r.mu.Lock()
	r.fail = nil
	r.mu.Unlock()
	got, rerr := signedVote(t, s.Handle(ctx, chainID, voteReq(chainID, later(*vote))))
	if rerr != nil {
		t.Fatalf("retry after the cluster recovered: %s", rerr.Description)
	}
	if !got.Timestamp.Equal(ts) || !k.PubKey().VerifySignature(types.VoteSignBytes(chainID, vote), got.Signature) {
		t.Fatalf("retry after the cluster recovered: timestamp %v, want the stored %v signed", got.Timestamp, ts)
	}
}
