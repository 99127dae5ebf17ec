//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestLinesBlocksPerSecond is a measurement, not a test (KMSHA_E2E_BENCH=1
// runs it, as TestBlocksPerSecond): for each CometBFT line, a one-validator
// chain with timeout_commit 1ms signed by the line's own file signer and by
// a 3-node kms-ha cluster over tcp:// with the line's protocol, each for
// the same window after a warm-up, on a fresh chain. The two alternate in
// rounds (file, kms-ha, then kms-ha, file, ...), and each line's figure is
// the median over the rounds of kms-ha's blocks per second over the file
// signer's in the same round, so the machine's drift cancels out.
// KMSHA_E2E_BENCH_ROUNDS (default 3), KMSHA_E2E_BENCH_DURATION (default
// 10s) and KMSHA_E2E_BENCH_WARMUP (default 3s) change the rounds, the window
// and the warm-up.
//
//	KMSHA_E2E_BENCH=1 go test -tags e2e -count=1 -run TestLinesBlocksPerSecond -v -timeout 30m ./e2e/
func TestLinesBlocksPerSecond(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("a measurement, not a test: set %s=1 to run it", benchEnv)
	}
	requireBins(t)
	rounds := envInt(t, "KMSHA_E2E_BENCH_ROUNDS", 3)
	window := envDuration(t, "KMSHA_E2E_BENCH_DURATION", 10*time.Second)
	warmup := envDuration(t, "KMSHA_E2E_BENCH_WARMUP", 3*time.Second)
	lines := []struct{ name, bin, protocol string }{
		{"v0.34.33", cachedComet(t, harness.CometBFT034, harness.BuildCometBFTFromSource), "v0.34"},
		{"v0.37.18", cometRelease(t, harness.CometBFT037), "v0.37"},
		{"v0.38.26", cometBFT038(t), "v0.38"},
		{"v0.40.0", bins.CometBFT, "v0.38"},
		{"v1.0.1", cometRelease(t, harness.CometBFTV1), "v1"},
	}
	opts := harness.CometOptions{TimeoutCommit: time.Millisecond, TimeoutPropose: 100 * time.Millisecond, TimeoutVote: 100 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(2*rounds*len(lines))*(window+warmup+60*time.Second))
	defer cancel()
	top := workDir(t)
	var b strings.Builder
	fmt.Fprintf(&b, "one validator, timeout_commit 1ms, %s measured after %s of warm-up, loopback, %d interleaved rounds per line\n",
		window, warmup, rounds)
	fmt.Fprintf(&b, "%-10s %-9s %16s %16s %10s  %s\n", "cometbft", "protocol", "file pv blocks/s", "kms-ha blocks/s", "vs file pv", "per round")
	for i, l := range lines {
		var file, kms, ratios []float64
		for r := 0; r < rounds; r++ {
			// Alternate which signer goes first, so neither always runs on
			// the warmer (or busier) machine.
			order := []bool{true, false}
			if r%2 == 1 {
				order = []bool{false, true}
			}
			var bps [2]float64 // file, kms-ha
			for _, local := range order {
				dir := filepath.Join(top, fmt.Sprintf("line%d-round%d-local%v", i, r, local))
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				o := opts
				o.LocalSigner = local
				n, c := startBenchChain(ctx, t, dir, l.bin, l.protocol, o)
				x := measureBlocks(ctx, t, n, warmup, window)
				_ = n.Proc.Kill()
				if c != nil {
					c.Close()
				}
				if local {
					bps[0] = x
				} else {
					bps[1] = x
				}
			}
			file, kms, ratios = append(file, bps[0]), append(kms, bps[1]), append(ratios, bps[1]/bps[0])
		}
		sort.Float64s(file)
		sort.Float64s(kms)
		sort.Float64s(ratios)
		fmt.Fprintf(&b, "%-10s %-9s %16.1f %16.1f %9.0f%%  %s\n", l.name, l.protocol, medianFloat(file), medianFloat(kms),
			100*medianFloat(ratios), percents(ratios))
	}
	fmt.Fprintf(&b, "blocks/s columns: medians over the rounds; vs file pv: the median of the per-round ratios\n")
	fmt.Fprintf(&b, "load at the end: %s on %d CPUs; other work on the host skews the figures\n", loadAvg(), runtime.NumCPU())
	t.Log("\n" + b.String())
}

// startBenchChain starts a chain of cometBin in dir: with its own file
// signer when o.LocalSigner, else behind a 3-node cluster with protocol
// (returned, to be closed after the window).
func startBenchChain(ctx context.Context, t *testing.T, dir, cometBin, protocol string, o harness.CometOptions) (*harness.CometNode, *harness.Cluster) {
	t.Helper()
	if o.LocalSigner {
		n, err := harness.NewComet(ctx, cometBin, dir, o)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Proc.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = n.Proc.Kill() })
		return n, nil
	}
	c := newCluster(ctx, t, harness.Config{Dir: dir, Logf: func(string, ...any) {},
		Bin: harness.Binaries{KMSHA: bins.KMSHA, CometBFT: cometBin}, Comet: o, Setup: withProtocol(protocol)})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return c.Comet, c
}

// measureBlocks waits for the first block and the warm-up, then returns the
// blocks per second over window.
func measureBlocks(ctx context.Context, t *testing.T, n *harness.CometNode, warmup, window time.Duration) float64 {
	t.Helper()
	if _, err := n.WaitHeight(ctx, 1, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := harness.Sleep(ctx, warmup); err != nil {
		t.Fatal(err)
	}
	h0, err := n.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := harness.Sleep(ctx, window); err != nil {
		t.Fatal(err)
	}
	h1, err := n.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if h1 <= h0 {
		t.Fatalf("no block in %s (height %d)", window, h1)
	}
	return float64(h1-h0) / time.Since(t0).Seconds()
}
