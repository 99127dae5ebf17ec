//go:build e2e

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestUpgradeV038ToV1 follows a chain through a CometBFT upgrade, as an
// operator does it: a cometbft v0.38.26 chain signed with protocol v0.38
// stops at an "upgrade height" (its node is SIGKILLed, as a halt leaves
// it); kms-ha's validators entry switches to protocol v1 with a rolling
// restart (followers first, the leader last, each with SIGTERM); cometbft
// v1.0.1 starts on the same home and data (v1.0 reads v0.38's stores as
// they are). The chain goes on under the new line; every commit of both
// eras carries the validator's verified precommit, the watermark carries
// across the protocol switch (no double sign in any log), and no evidence.
func TestUpgradeV038ToV1(t *testing.T) {
	requireBins(t)
	const (
		stall  = 20 * time.Second
		maxLag = 8
	)
	v1 := cometRelease(t, harness.ReleaseVersion(harness.CometBFTV1, harness.CometBFTV1Env))
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{
		Bin:   harness.Binaries{KMSHA: bins.KMSHA, CometBFT: cometBFT038(t)},
		Nodes: 3,
		Comet: harness.CometOptions{ChainID: "e2e-upgrade"},
		Setup: withProtocol("v0.38"),
	})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	halt, err := c.Comet.WaitHeight(ctx, 8, stall)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Comet.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	<-c.Comet.Proc.Done()
	t.Logf("v0.38.26 node stopped at height %d or just above", halt)

	switchProtocol(ctx, t, c, "v1", maxLag)

	c.Comet.Proc.Bin = v1
	if err := c.Comet.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	if got, err := waitNodeVersion(ctx, c.Comet); err != nil || got != harness.ReportedVersion(harness.ReleaseVersion(harness.CometBFTV1, harness.CometBFTV1Env)) {
		t.Fatalf("the node after the upgrade reports %q (%v)", got, err)
	}
	latest, err := c.Comet.WaitHeight(ctx, halt+10, stall)
	if err != nil {
		t.Fatalf("the chain did not go on under v1.0.1: %v", err)
	}
	t.Logf("cometbft v1.0.1 on the same data: height %d -> %d, signed with protocol v1", halt, latest)

	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkPrecommitsLogged(t, scan, c.Comet.ChainID, latest, 1)
	rep := checkCommits(ctx, t, c.Comet, scan, latest)
	if want := int(rep.To - rep.From + 1); rep.Present != want {
		t.Errorf("validator precommit verified in %d of %d commits", rep.Present, want)
	}
	checkNoConsensusFailure(t, c.Comet)
}

// switchProtocol rewrites every node's validators entries to protocol and
// restarts the nodes one by one, the leader last (SIGTERM hands its
// leadership to an up-to-date follower), each caught up before the next.
func switchProtocol(ctx context.Context, t *testing.T, c *harness.Cluster, protocol string, maxLag uint64) {
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
	chain := c.Comet.ChainConfig()
	chain.Protocol = protocol
	for _, n := range append(order, leader) {
		if err := n.Proc.Stop(15 * time.Second); err != nil {
			t.Fatalf("stop %s: %v", n.ID, err)
		}
		if err := n.WriteConfig([]harness.ChainConfig{chain}, harness.RaftTimings{}); err != nil {
			t.Fatal(err)
		}
		if err := c.Restart(n); err != nil {
			t.Fatal(err)
		}
		fs, _, err := c.WaitCaughtUp(ctx, n, 60*time.Second, maxLag)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s restarted with protocol %s (was leader: %v), following %s", n.ID, protocol, n == leader, fs.LeaderID)
	}
}

// waitNodeVersion waits for a just started node's RPC and returns the
// version it reports.
func waitNodeVersion(ctx context.Context, n *harness.CometNode) (string, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		v, err := n.NodeVersion(ctx)
		if err == nil || time.Now().After(deadline) {
			return v, err
		}
		if err := harness.Sleep(ctx, 200*time.Millisecond); err != nil {
			return "", err
		}
	}
}
