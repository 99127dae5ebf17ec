//go:build e2e

package e2e

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestCometBFTV1 runs the cluster against a released cometbft of the v1.0
// line (cometbft.privval.v1) with validators[].protocol v1, over tcp://:
// blocks, a SIGKILL of the signing leader, no evidence, every commit's
// precommit verified. A v1 node halts on a precommit whose extension
// signature does not match its chain's setting, so the chain going on also
// shows skip_extension_signing honoured (kvstore's genesis leaves
// extensions off).
func TestCometBFTV1(t *testing.T) {
	requireBins(t)
	version := harness.ReleaseVersion(harness.CometBFTV1, harness.CometBFTV1Env)
	runLineFailover(t, cometRelease(t, version), version, "v1", "e2e-v1")
}

// TestCometBFT037 is TestCometBFTV1 for the v0.37 line (no vote
// extensions) with validators[].protocol v0.37.
func TestCometBFT037(t *testing.T) {
	requireBins(t)
	version := harness.ReleaseVersion(harness.CometBFT037, harness.CometBFT037Env)
	runLineFailover(t, cometRelease(t, version), version, "v0.37", "e2e-v037")
}

// abciAppV1 returns ./cmd/abciapp-v1 (the vote-extension app built against
// CometBFT v1.0), built next to the other binaries of this run.
func abciAppV1(t *testing.T) string {
	return abciAppV1Build.get(t, "abciapp-v1", harness.BuildABCIAppV1)
}

// releaseBins caches, per cometbft module version, the binary installed
// from the module proxy (harness.BuildCometBFTRelease), built on first use.
var releaseBins sync.Map // version -> *releaseBin

type releaseBin struct {
	once sync.Once
	path string
	err  error
}

func cometRelease(t *testing.T, version string) string {
	t.Helper()
	return cachedComet(t, version, harness.BuildCometBFTRelease)
}

// cachedComet returns the binary of version, built by build into the e2e
// cache directory on first use.
func cachedComet(t *testing.T, version string, build func(ctx context.Context, version, cacheDir string) (string, error)) string {
	t.Helper()
	v, _ := releaseBins.LoadOrStore(version, &releaseBin{})
	b := v.(*releaseBin)
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		dir, err := harness.CacheDir()
		if err != nil {
			b.err = err
			return
		}
		start := time.Now()
		b.path, b.err = build(ctx, version, dir)
		t.Logf("cometbft %s: %s (ready after %s)", version, b.path, time.Since(start).Round(time.Millisecond))
	})
	if b.err != nil {
		t.Fatalf("cometbft %s: %v", version, b.err)
	}
	return b.path
}

// runLineFailover is the compatibility scenario of one CometBFT line: a
// one-validator chain of cometbft cometBin (module version version) signed
// by a 3-node cluster whose validators entry says protocol ("" for the
// default) over tcp://. The chain must make blocks, go on through a
// SIGKILL of the signing leader, carry no evidence, and every commit must
// hold the validator's precommit, verified under its key and found in the
// audit log.
func runLineFailover(t *testing.T, cometBin, version, protocol, chainID string) {
	t.Helper()
	const (
		stall    = 20 * time.Second
		progress = 5
		maxLag   = 5
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	c := newCluster(ctx, t, harness.Config{
		Bin:   harness.Binaries{KMSHA: bins.KMSHA, CometBFT: cometBin},
		Nodes: 3,
		Comet: harness.CometOptions{ChainID: chainID},
		Setup: withProtocol(protocol),
	})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := c.Comet.NodeVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := harness.ReportedVersion(version); got != want {
		t.Fatalf("the node reports version %q, want %q: not the cometbft under test", got, want)
	}
	t.Logf("cometbft %s (reports %s) signed for by kms-ha over tcp://%s with protocol %q", version, got, c.Comet.PrivvalAddr, protocol)
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()

	h, err := c.Comet.WaitHeight(ctx, 5, stall)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chain at height %d", h)
	latest, _ := failoverAndRejoin(ctx, t, c, stall, progress, maxLag)
	checkLineEnd(ctx, t, c, mon, latest, stall)
}

// withProtocol is a harness.Config.Setup that gives every validators entry
// protocol ("" keeps kms-ha's default).
func withProtocol(protocol string) func(*harness.KMSNode, []harness.ChainConfig) []harness.ChainConfig {
	return func(_ *harness.KMSNode, chains []harness.ChainConfig) []harness.ChainConfig {
		for i := range chains {
			chains[i].Protocol = protocol
		}
		return chains
	}
}

// checkLineEnd is the end of a one-chain line test: no stall longer than
// stall, the safety checks, every committed height's precommit logged and
// verified in the chain's commits, and no CONSENSUS FAILURE.
func checkLineEnd(ctx context.Context, t *testing.T, c *harness.Cluster, mon *harness.ChainMonitor, latest int64, stall time.Duration) {
	t.Helper()
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

// failoverAndRejoin SIGKILLs the signing leader, checks that the chain goes
// on under the new leader, restarts the killed node and waits for it to
// catch up; it returns a height the chain reached afterwards and the height
// at the kill.
func failoverAndRejoin(ctx context.Context, t *testing.T, c *harness.Cluster, stall time.Duration, progress int64, maxLag uint64) (latest, killHeight int64) {
	t.Helper()
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
	latest, err = c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if latest, err = c.Comet.WaitHeight(ctx, latest+3, stall); err != nil {
		t.Fatal(err)
	}
	return latest, f.HeightAtKill
}

// TestCometBFT034 is TestCometBFTV1 for the v0.34 line (no vote
// extensions) with validators[].protocol v0.34; its binary is built from
// the module source (harness.BuildCometBFTFromSource).
func TestCometBFT034(t *testing.T) {
	requireBins(t)
	version := harness.ReleaseVersion(harness.CometBFT034, harness.CometBFT034Env)
	runLineFailover(t, cachedComet(t, version, harness.BuildCometBFTFromSource), version, "v0.34", "e2e-v034")
}
