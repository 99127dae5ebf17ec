package signer_test

import (
	"context"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"

	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
)

// TestCheckerRejectsReleaseWithoutLeaderReservation checks the chaos
// checker itself: a history in which a node that did not commit the
// reservation (a follower, or a leader whose lease ran out, answering from
// its replicated state) releases a signature is rejected, even though the
// bytes are the ones the leader signed, so no double sign shows.
func TestCheckerRejectsReleaseWithoutLeaderReservation(t *testing.T) {
	key := file.New(ed25519.GenPrivKey())
	hrs := fsm.HRS{Height: 3, Step: fsm.StepPrecommit}
	sb := []byte("precommit at 3")
	sig, err := key.Sign(context.Background(), sb)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{key: key}
	for _, id := range []string{"node1", "node2"} {
		f := freshFSM(t, chains...)
		for _, ch := range chains {
			data, err := fsm.EncodeReserve(fsm.Reserve{ChainID: ch, HRS: hrs, SignBytes: sb})
			if err != nil {
				t.Fatal(err)
			}
			f.Apply(applyLog(data))
		}
		c.nodes = append(c.nodes, &testNode{id: id, fsm: f})
	}
	release := func(node string) signer.Release {
		return signer.Release{NodeID: node, ChainID: chains[0], HRS: hrs, SignBytes: sb, Signature: sig, Outcome: fsm.Allow}
	}

	h := &history{}
	h.reserve(reservation{node: "node1", chain: chains[0], hrs: hrs, signBytes: string(sb)})
	h.release(release("node1"))
	if p := historyProblems(c, h); len(p) != 0 {
		t.Fatalf("a release backed by the node's own reservation was rejected: %q", p)
	}

	h.release(release("node2"))
	p := historyProblems(c, h)
	if len(p) != 1 || !strings.Contains(p[0], "node2 released "+chains[0]) || !strings.Contains(p[0], "without a reservation it committed as leader") {
		t.Fatalf("a release by a node that committed no reservation: problems %q, want one naming node2", p)
	}
}
