//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestCometBFT038 runs the cluster against a released cometbft of the v0.38
// line (harness.CometBFT038, installed from the Go module proxy), the most
// deployed one, over tcp://: kms-ha is built against v0.40, whose privval
// protocol v0.38 shares. The chain must make blocks, go on through a SIGKILL
// of the signing leader, carry no evidence, and every commit must hold the
// validator's precommit, verified under its key and found in the audit log.
// v0.38 ignores SIGTERM while its signer is gone, so the harness stops it
// with SIGKILL (Cluster.Close).
func TestCometBFT038(t *testing.T) {
	requireBins(t)
	const (
		stall    = 20 * time.Second
		progress = 5
		maxLag   = 5
	)
	cometBin := cometBFT038(t)
	version := harness.CometBFT038Version()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	c := newCluster(ctx, t, harness.Config{
		Bin:   harness.Binaries{KMSHA: bins.KMSHA, CometBFT: cometBin},
		Nodes: 3,
		Comet: harness.CometOptions{ChainID: "e2e-v038"},
	})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := c.Comet.NodeVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimPrefix(version, "v"); got != want {
		t.Fatalf("the node reports version %q, want %q: not the cometbft under test", got, want)
	}
	t.Logf("cometbft %s (reports %s) signed for by kms-ha over tcp://%s", version, got, c.Comet.PrivvalAddr)
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()

	h, err := c.Comet.WaitHeight(ctx, 5, stall)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chain at height %d", h)

	f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	t.Logf("SIGKILL of leader %s at height %d -> height %d committed %s later; %s became leader after %s; first block after the kill signed by %s",
		f.Killed, f.HeightAtKill, f.NextHeight, ms(f.NextBlock), f.NewLeader, ms(f.Elected), orUnknown(f.NextSigner))
	target := f.HeightAtKill + progress
	if _, err := c.Comet.WaitHeight(ctx, target, stall); err != nil {
		t.Fatalf("chain did not go on under %s: %v", f.NewLeader, err)
	}
	if signer := waitPrecommitSigner(ctx, c, c.Comet.ChainID, target); signer != f.NewLeader {
		t.Fatalf("height %d precommit signed by %q, want new leader %s", target, signer, f.NewLeader)
	}

	killed := c.Node(f.Killed)
	if err := c.Restart(killed); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WaitCaughtUp(ctx, killed, 30*time.Second, maxLag); err != nil {
		t.Fatal(err)
	}
	latest, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if latest, err = c.Comet.WaitHeight(ctx, latest+3, stall); err != nil {
		t.Fatal(err)
	}

	if gap, after := mon.MaxGap(); gap > stall {
		t.Errorf("chain stalled for %s after height %d", gap.Round(time.Millisecond), after)
	} else {
		t.Logf("longest gap between blocks: %s (after height %d)", ms(gap), after)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkPrecommitsLogged(t, scan, c.Comet.ChainID, latest, 1)
	rep := checkCommits(ctx, t, c.Comet, scan, latest)
	if want := int(rep.To - rep.From + 1); rep.Present != want {
		t.Errorf("validator precommit verified in %d of %d commits", rep.Present, want)
	}
	checkNoConsensusFailure(t, c.Comet)
}

// checkNoConsensusFailure fails on the line cometbft logs when its
// consensus goroutine panics (for instance on a precommit returned without
// its extension signature while extensions are on).
func checkNoConsensusFailure(t *testing.T, n *harness.CometNode) {
	t.Helper()
	data, err := os.ReadFile(n.Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if i := bytes.Index(data, []byte("CONSENSUS FAILURE")); i >= 0 {
		t.Errorf("%s: %s", n.Proc.LogPath, data[i:min(len(data), i+2000)])
	}
}
