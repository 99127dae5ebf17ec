//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestFiveNode runs the largest cluster the docs recommend as an operator
// forms and maintains it: five kms-ha processes (node1 bootstrapped, the
// other four through `kms-ha join`) signing for a cometbft v0.40
// validator; the leader is SIGKILLed and the chain goes on under a new one;
// then every node is restarted in turn with SIGTERM, followers first and
// the leader last (it hands leadership over), each caught up before the
// next. The chain must keep committing throughout, every commit must carry
// the validator's verified precommit, and nothing may be signed twice.
func TestFiveNode(t *testing.T) {
	const (
		nodes = 5
		stall = 20 * time.Second
		// The longest the chain may go without a block: a failover and a
		// handover each cost well under a second.
		maxGap = 3 * time.Second
		maxLag = 8
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{Nodes: nodes})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mon := c.Comet.Monitor(ctx, 50*time.Millisecond)
	defer mon.Stop()
	if _, err := c.Comet.WaitHeight(ctx, 5, stall); err != nil {
		t.Fatal(err)
	}

	f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("failover: SIGKILL of leader %s at height %d -> height %d %s later, under %s (elected after %s)",
		f.Killed, f.HeightAtKill, f.NextHeight, ms(f.NextBlock), f.NewLeader, ms(f.Elected))
	if _, err := c.Comet.WaitHeight(ctx, f.HeightAtKill+5, stall); err != nil {
		t.Fatalf("chain did not go on under %s: %v", f.NewLeader, err)
	}
	killed := c.Node(f.Killed)
	if err := c.Restart(killed); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WaitCaughtUp(ctx, killed, 60*time.Second, maxLag); err != nil {
		t.Fatal(err)
	}

	rollingRestart(ctx, t, c, maxLag)

	latest, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if latest, err = c.Comet.WaitHeight(ctx, latest+3, stall); err != nil {
		t.Fatal(err)
	}
	_, st, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	if st.Voters() != nodes {
		t.Errorf("after the rolling restart the leader sees %d voters, want %d: %+v", st.Voters(), nodes, st.Members)
	}
	gap, after := mon.MaxGap()
	if gap > maxGap {
		t.Errorf("the chain went %s without a block after height %d (at most %s allowed)", ms(gap), after, maxGap)
	} else {
		t.Logf("longest gap between blocks over the failover and the rolling restart: %s (after height %d)", ms(gap), after)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkPrecommitsLogged(t, scan, c.Comet.ChainID, latest, 1)
	rep := checkCommits(ctx, t, c.Comet, scan, latest)
	if want := int(rep.To - rep.From + 1); rep.Present != want {
		t.Errorf("validator precommit verified in %d of %d commits", rep.Present, want)
	}
}

// rollingRestart stops every node with SIGTERM and starts it again, the
// followers first and the leader last, each caught up before the next, and
// checks that the chain committed a block while each node was down or
// restarting.
func rollingRestart(ctx context.Context, t *testing.T, c *harness.Cluster, maxLag uint64) {
	t.Helper()
	leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	var order []*harness.KMSNode
	for _, n := range c.Nodes {
		if n != leader {
			order = append(order, n)
		}
	}
	for _, n := range append(order, leader) {
		before, err := c.Comet.Height(ctx)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := n.Proc.Stop(15 * time.Second); err != nil {
			t.Fatalf("stop %s: %v", n.ID, err)
		}
		if err := c.Restart(n); err != nil {
			t.Fatal(err)
		}
		fs, _, err := c.WaitCaughtUp(ctx, n, 60*time.Second, maxLag)
		if err != nil {
			t.Fatal(err)
		}
		h, err := c.Comet.WaitHeight(ctx, before+1, 20*time.Second)
		if err != nil {
			t.Fatalf("no block while %s restarted: %v", n.ID, err)
		}
		t.Logf("%s restarted with SIGTERM (was leader: %v) and follows %s after %s; chain %d -> %d",
			n.ID, n == leader, fs.LeaderID, ms(time.Since(start)), before, h)
	}
}
