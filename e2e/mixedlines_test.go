//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestMixedLines runs one kms-ha cluster for two chains on different
// CometBFT lines at once: a cometbft v0.38.26 chain (protocol v0.38, the
// default) and a cometbft v1.0.1 chain (protocol v1), each with its own
// key. Both must keep going through a SIGKILL of the signing leader, with
// no evidence, and every commit of each must carry its validator's
// precommit, verified under its own key.
func TestMixedLines(t *testing.T) {
	requireBins(t)
	const (
		stall    = 20 * time.Second
		progress = 5
		maxLag   = 5
	)
	v038, v1 := cometBFT038(t), cometRelease(t, harness.ReleaseVersion(harness.CometBFTV1, harness.CometBFTV1Env))
	protocols := map[string]string{"e2e-mixed-v038": "v0.38", "e2e-mixed-v1": "v1"}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	c := newCluster(ctx, t, harness.Config{
		Bin:   harness.Binaries{KMSHA: bins.KMSHA, CometBFT: bins.CometBFT},
		Nodes: 3,
		Chains: []harness.CometOptions{
			{ChainID: "e2e-mixed-v038", Bin: v038},
			{ChainID: "e2e-mixed-v1", Bin: v1},
		},
		Setup: func(_ *harness.KMSNode, chains []harness.ChainConfig) []harness.ChainConfig {
			for i := range chains {
				chains[i].Protocol = protocols[chains[i].ChainID]
			}
			return chains
		},
	})
	yaml, err := os.ReadFile(filepath.Join(c.Nodes[0].Home, "kms.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s kms.yaml:\n%s", c.Nodes[0].ID, yaml)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Comets {
		v, err := n.NodeVersion(ctx)
		if err != nil {
			t.Fatal(err)
		}
		h, err := n.WaitHeight(ctx, 5, stall)
		if err != nil {
			t.Fatalf("chain %s: %v", n.ChainID, err)
		}
		t.Logf("chain %s: cometbft %s, protocol %s, at height %d", n.ChainID, v, protocols[n.ChainID], h)
	}

	f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	t.Logf("SIGKILL of leader %s; %s became leader after %s", f.Killed, f.NewLeader, ms(f.Elected))
	for i, n := range c.Comets {
		target := f.Chains[i].HeightAtKill + progress
		if _, err := n.WaitHeight(ctx, target, stall); err != nil {
			t.Fatalf("chain %s did not go on under %s: %v", n.ChainID, f.NewLeader, err)
		}
		if signer := waitPrecommitSigner(ctx, c, n.ChainID, target); signer != f.NewLeader {
			t.Fatalf("chain %s: height %d precommit signed by %q, want new leader %s", n.ChainID, target, signer, f.NewLeader)
		}
	}
	if err := c.Restart(c.Node(f.Killed)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WaitCaughtUp(ctx, c.Node(f.Killed), 30*time.Second, maxLag); err != nil {
		t.Fatal(err)
	}

	checkChainsEnd(ctx, t, c, stall)
}

// checkChainsEnd lets every chain of c commit 3 more heights, then checks
// them all: no evidence, the safety checks, every committed height's
// precommit logged and verified in the chain's commits, no CONSENSUS
// FAILURE.
func checkChainsEnd(ctx context.Context, t *testing.T, c *harness.Cluster, stall time.Duration) {
	t.Helper()
	var ends []chainEnd
	for _, n := range c.Comets {
		h, err := n.Height(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if h, err = n.WaitHeight(ctx, h+3, stall); err != nil {
			t.Fatalf("chain %s: %v", n.ChainID, err)
		}
		ends = append(ends, chainEnd{n, h})
	}
	scan := checkSafety(ctx, t, c, ends...)
	for _, e := range ends {
		checkPrecommitsLogged(t, scan, e.node.ChainID, e.latest, 1)
		rep := checkCommits(ctx, t, e.node, scan, e.latest)
		if want := int(rep.To - rep.From + 1); rep.Present != want {
			t.Errorf("chain %s: validator precommit verified in %d of %d commits", e.node.ChainID, rep.Present, want)
		}
		checkNoConsensusFailure(t, e.node)
	}
}
