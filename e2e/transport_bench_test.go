//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// BenchEnv, set to 1, runs TestBlocksPerSecond.
const benchEnv = "KMSHA_E2E_BENCH"

// TestBlocksPerSecond is a measurement, not a test: it is skipped unless
// KMSHA_E2E_BENCH=1, and it fails only if a chain does not run at all or a
// slot is signed twice. It runs a one-validator chain with timeout_commit
// 1ms (timeout_propose and the vote timeouts 100ms, which a single healthy
// validator never waits for) signed in turn
//
//	(a) by cometbft's own file signer (priv_validator_laddr empty),
//	(b) by a 3-node kms-ha cluster over tcp:// (SecretConnection),
//	(c) over noise:// (libp2p Noise, shared cluster identity),
//	(d) over unix://,
//
// one after the other in the same run, each for the same measured window
// after a warm-up, and prints blocks per second and kms-ha signatures per
// second in a table. Run it with
//
//	KMSHA_E2E_BENCH=1 go test -tags e2e -count=1 -run TestBlocksPerSecond -v ./e2e/
//
// KMSHA_E2E_BENCH_DURATION (default 20s) and KMSHA_E2E_BENCH_WARMUP
// (default 5s) change the window and the warm-up. Without KMSHA_E2E_RACE:
// the race detector slows kms-ha down several times.
func TestBlocksPerSecond(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("a measurement, not a test: set %s=1 to run it", benchEnv)
	}
	requireBins(t)
	window := envDuration(t, "KMSHA_E2E_BENCH_DURATION", 20*time.Second)
	warmup := envDuration(t, "KMSHA_E2E_BENCH_WARMUP", 5*time.Second)
	opts := harness.CometOptions{
		TimeoutCommit:  time.Millisecond,
		TimeoutPropose: 100 * time.Millisecond,
		TimeoutVote:    100 * time.Millisecond,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*(window+warmup+90*time.Second))
	defer cancel()

	// The figures are the output: no progress lines in between.
	quiet := func(string, ...any) {}
	cases := []struct {
		name  string
		setup func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster)
	}{
		{"cometbft file signer", func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster) {
			o := opts
			o.LocalSigner = true
			n, err := harness.NewComet(ctx, bins.CometBFT, dir, o)
			if err != nil {
				t.Fatal(err)
			}
			if err := n.Proc.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = n.Proc.Kill() })
			return n, nil
		}},
		{"kms-ha tcp://", func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster) {
			c := newCluster(ctx, t, harness.Config{Dir: dir, Logf: quiet, Comet: opts})
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
			return c.Comet, c
		}},
		{"kms-ha noise://", func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster) {
			noise := &harness.Noise{CometBFT: bins.CometBFT}
			c := newCluster(ctx, t, harness.Config{Dir: dir, Logf: quiet, Comet: opts, Setup: noise.Setup})
			if err := noise.Finish(ctx, c); err != nil {
				t.Fatal(err)
			}
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
			return c.Comet, c
		}},
		{"kms-ha unix://", func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster) {
			sockDir, err := os.MkdirTemp("", "kmsha")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.RemoveAll(sockDir) })
			ux := &harness.Unix{Dir: sockDir}
			c := newCluster(ctx, t, harness.Config{Dir: dir, Logf: quiet, Comet: opts, Setup: ux.Setup})
			if err := ux.Finish(c); err != nil {
				t.Fatal(err)
			}
			if err := c.Start(ctx); err != nil {
				t.Fatal(err)
			}
			return c.Comet, c
		}},
	}

	type row struct {
		name          string
		blocks        int64
		elapsed       time.Duration
		sigs          int
		laterRounds   int
		leaderChanges int
		load          string
	}
	var rows []row
	top := workDir(t)
	for i, bc := range cases {
		ok := t.Run(strings.NewReplacer(" ", "_", ":", "", "/", "").Replace(bc.name), func(t *testing.T) {
			// workDir cannot take a subtest's name (it has a slash).
			dir := filepath.Join(top, fmt.Sprintf("case%d", i+1))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			n, c := bc.setup(ctx, t, dir)
			if _, err := n.WaitHeight(ctx, 1, 60*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := harness.Sleep(ctx, warmup); err != nil {
				t.Fatal(err)
			}
			s0, err := n.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			if err := harness.Sleep(ctx, window); err != nil {
				t.Fatal(err)
			}
			s1, err := n.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			r := row{name: bc.name, blocks: s1.Height - s0.Height, elapsed: time.Since(t0), load: loadAvg()}
			if r.blocks <= 0 {
				t.Fatalf("no block in %s (height %d)", window, s1.Height)
			}
			if c != nil {
				// Stop the chain first: the logs are then complete.
				_ = n.Proc.Kill()
				scan, err := c.Scan()
				if err != nil {
					t.Fatal(err)
				}
				if err := harness.CheckNoDoubleSign(scan.Signed); err != nil {
					t.Error(err)
				}
				for _, s := range scan.Signed {
					if s.Height > s0.Height && s.Height <= s1.Height {
						r.sigs++
						if s.Round > 0 && s.Step == harness.StepPrecommit {
							r.laterRounds++
						}
					}
				}
				for _, e := range scan.Events {
					if e.Msg == harness.MsgBecameLeader {
						r.leaderChanges++
					}
				}
			}
			rows = append(rows, r)
		})
		if !ok {
			t.Fatalf("%s failed; no figure", bc.name)
		}
	}

	var b strings.Builder
	race := ""
	if os.Getenv(harness.RaceEnv) == "1" {
		race = " (kms-ha built with -race: figures are not representative)"
	}
	fmt.Fprintf(&b, "one validator, timeout_commit 1ms, %s measured after %s of warm-up, loopback%s\n", window, warmup, race)
	fmt.Fprintf(&b, "%-22s %9s %9s %12s %8s %6s %s\n", "signer", "blocks", "blocks/s", "vs file pv", "sigs/s", "load", "notes")
	base := 0.0
	for i, r := range rows {
		bps := float64(r.blocks) / r.elapsed.Seconds()
		if i == 0 {
			base = bps
		}
		sigs, notes := "-", ""
		if r.name != rows[0].name {
			sigs = fmt.Sprintf("%.0f", float64(r.sigs)/r.elapsed.Seconds())
			notes = fmt.Sprintf("3 kms-ha nodes; %d precommits in round > 0; %d leader elections", r.laterRounds, r.leaderChanges)
		}
		fmt.Fprintf(&b, "%-22s %9d %9.1f %11.0f%% %8s %6s %s\n", r.name, r.blocks, bps, 100*bps/base, sigs, r.load, notes)
	}
	fmt.Fprintf(&b, "load: 1-minute load average at the end of each window, on %d CPUs; other work on the host skews the figures\n", runtime.NumCPU())
	t.Log("\n" + b.String())
}

// loadAvg is the 1-minute load average ("?" where /proc/loadavg is missing).
func loadAvg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(data))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration like 20s", name, v)
	}
	return d
}
