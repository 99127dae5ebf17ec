package signer_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
)

// stuckFirstKey does not answer its first Sign until the request's
// deadline passes, then fails as a backend does on a timeout.
type stuckFirstKey struct {
	*hedgedKey
	mu    sync.Mutex
	calls int
}

func (k *stuckFirstKey) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	k.mu.Lock()
	k.calls++
	first := k.calls == 1
	k.mu.Unlock()
	if first {
		<-ctx.Done()
		return nil, fmt.Errorf("token did not answer: %w", ctx.Err())
	}
	return k.hedgedKey.Sign(ctx, msg)
}

// TestKeyTimeoutDropsTheConnection: a key that does not sign in time is
// not answered with a signer error (CometBFT never retries one, and the
// vote is lost) but by dropping the connection; the retry signs.
func TestKeyTimeoutDropsTheConnection(t *testing.T) {
	_, leader, _, stop := startRaft(t, 1, chainID)
	defer stop()
	k := &stuckFirstKey{hedgedKey: newHedgedKey(t)}
	s := quietSigner(t, leader, leader, leader.FSM(), k)
	vote := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 5, BlockID: bid(2), Timestamp: ts}
	dropped(t, "key timed out", s.Handle(context.Background(), chainID, voteReq(chainID, vote)))
	if _, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, vote))); rerr != nil {
		t.Fatalf("retry after the key's timeout: %s", rerr.Description)
	}
}
