package cluster

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
)

// TestUncommittedWritesAreTyped: every way a reservation or a signature
// record fails before this node saw it commit is ErrNotCommitted (or
// ErrNotLeader), with its cause kept: the signer drops the validator's
// connection on those so that CometBFT retries. A bare context error was
// answered as a signer error instead, and CometBFT never retries one.
func TestUncommittedWritesAreTyped(t *testing.T) {
	ms := startThree(t, func(c *Config) {
		// A long lease: the isolated leader below keeps leading while it
		// tries to commit.
		c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = time.Second, time.Second, time.Second
		c.ApplyTimeout = 2 * time.Second
	})
	a := ms[0].node
	seed(t, a, []string{"a", "b", "c"}, "c")
	hrs := fsm.HRS{Height: 1, Step: fsm.StepPrevote}

	past, cancelPast := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelPast()
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	for name, c := range map[string]struct {
		ctx   context.Context
		cause error
	}{
		"deadline already passed": {past, context.DeadlineExceeded},
		"context cancelled":       {cancelled, context.Canceled},
	} {
		_, err := a.Reserve(c.ctx, "c", hrs, []byte("A"))
		if !errors.Is(err, ErrNotCommitted) || !errors.Is(err, c.cause) {
			t.Errorf("reserve, %s: %v; want ErrNotCommitted wrapping %v", name, err, c.cause)
		}
		_, err = a.RecordSignature(c.ctx, fsm.RecordSignature{ChainID: "c", HRS: hrs, SignBytes: []byte("A"), Signature: []byte("s")})
		if !errors.Is(err, ErrNotCommitted) || !errors.Is(err, c.cause) {
			t.Errorf("record, %s: %v; want ErrNotCommitted wrapping %v", name, err, c.cause)
		}
	}

	// The leader loses its followers: nothing commits. A request whose
	// deadline is shorter than the apply timeout cuts the wait to that
	// deadline, so the timer and the context end together; whichever the
	// select picks, the answer is ErrNotCommitted.
	for _, m := range ms {
		m.trans.DisconnectAll()
	}
	committed := 0
	for i := 0; i < 40 && a.IsLeader(); i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		_, err := a.Reserve(ctx, "c", fsm.HRS{Height: int64(2 + i), Step: fsm.StepPrevote}, []byte("A"))
		cancel()
		switch {
		case errors.Is(err, ErrNotCommitted):
			committed++
		case errors.Is(err, ErrNotLeader):
		default:
			t.Fatalf("attempt %d without a quorum: %v; want ErrNotCommitted (or ErrNotLeader once it stepped down)", i, err)
		}
	}
	if committed < 5 {
		t.Fatalf("only %d attempts ran while the isolated node still led; the test proves nothing", committed)
	}
}

// TestRaftFutureErrorsAreTyped: errors raft reports for an entry that was
// not committed (a full queue, a shutdown, a restore) are ErrNotCommitted;
// a lost leadership is ErrNotLeader. The raft error stays in the chain.
func TestRaftFutureErrorsAreTyped(t *testing.T) {
	for _, c := range []struct {
		raftErr error
		want    error
	}{
		{raft.ErrEnqueueTimeout, ErrNotCommitted},
		{raft.ErrRaftShutdown, ErrNotCommitted},
		{raft.ErrAbortedByRestore, ErrNotCommitted},
		{raft.ErrLeadershipLost, ErrNotLeader},
		{raft.ErrNotLeader, ErrNotLeader},
	} {
		err := futureError(c.raftErr)
		if !errors.Is(err, c.want) || !errors.Is(err, c.raftErr) {
			t.Errorf("%v: got %v, want %v wrapping it", c.raftErr, err, c.want)
		}
	}
}
