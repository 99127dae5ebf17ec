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

// BenchEnv, set to 1, runs TestBlocksPerSecond.
const benchEnv = "KMSHA_E2E_BENCH"

// TestBlocksPerSecond is a measurement, not a test: it is skipped unless
// KMSHA_E2E_BENCH=1, and it fails only if a chain does not run at all or a
// slot is signed twice. It runs a one-validator chain with timeout_commit
// 1ms (timeout_propose and the vote timeouts 100ms, which a single healthy
// validator never waits for) signed
//
//	(a) by cometbft's own file signer (priv_validator_laddr empty),
//	(b) by a 3-node kms-ha cluster over tcp:// (SecretConnection),
//	(c) by CometBFT's FilePV as a remote signer (the privval round trip
//	    without a cluster),
//	(d) by a 1-node kms-ha cluster over tcp:// (no quorum to wait for: the
//	    bound a cluster cannot beat on this host),
//	(e) by a 3-node cluster over noise:// (libp2p Noise, shared cluster
//	    identity),
//	(f) and over unix://,
//
// each for the same measured window after a warm-up, on a fresh chain and
// cluster. The windows are interleaved in rounds (a b c d e f, then f e d c b a,
// ...), so a drift of the machine's speed hits every signer alike: each
// kms-ha window is compared with the file signer's window of its own
// round, and the table gives the median of those ratios over the rounds.
// Run it with
//
//	KMSHA_E2E_BENCH=1 go test -tags e2e -count=1 -run TestBlocksPerSecond -v -timeout 30m ./e2e/
//
// KMSHA_E2E_BENCH_ROUNDS (default 3), KMSHA_E2E_BENCH_DURATION (default
// 15s) and KMSHA_E2E_BENCH_WARMUP (default 5s) change the number of rounds,
// the window and the warm-up. Without KMSHA_E2E_RACE: the race detector
// slows kms-ha down several times.
func TestBlocksPerSecond(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("a measurement, not a test: set %s=1 to run it", benchEnv)
	}
	requireBins(t)
	rounds := envInt(t, "KMSHA_E2E_BENCH_ROUNDS", 3)
	window := envDuration(t, "KMSHA_E2E_BENCH_DURATION", 15*time.Second)
	warmup := envDuration(t, "KMSHA_E2E_BENCH_WARMUP", 5*time.Second)
	opts := harness.CometOptions{
		TimeoutCommit:  time.Millisecond,
		TimeoutPropose: 100 * time.Millisecond,
		TimeoutVote:    100 * time.Millisecond,
	}
	cases := benchCases(opts)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rounds*len(cases))*(window+warmup+90*time.Second))
	defer cancel()

	rows := make([][]benchRow, len(cases)) // rows[case][round]
	top := workDir(t)
	for r := 0; r < rounds; r++ {
		order := make([]int, len(cases))
		for i := range order {
			order[i] = i
			if r%2 == 1 {
				order[i] = len(cases) - 1 - i
			}
		}
		for _, i := range order {
			bc := cases[i]
			name := fmt.Sprintf("%s_round%d", strings.NewReplacer(" ", "_", ":", "", "/", "").Replace(bc.name), r+1)
			ok := t.Run(name, func(t *testing.T) {
				// workDir cannot take a subtest's name (it has a slash).
				dir := filepath.Join(top, fmt.Sprintf("case%d-round%d", i+1, r+1))
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				n, c := bc.setup(ctx, t, dir)
				rows[i] = append(rows[i], measureCase(ctx, t, n, c, warmup, window))
			})
			if !ok {
				t.Fatalf("%s failed; no figure", bc.name)
			}
		}
	}
	t.Log("\n" + benchTable(cases, rows, window, warmup))
}

type benchCase struct {
	name  string
	setup func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster)
}

// benchCases are the signers TestBlocksPerSecond compares; the file signer
// first, as the reference of each round.
func benchCases(opts harness.CometOptions) []benchCase {
	// The figures are the output: no progress lines in between.
	quiet := func(string, ...any) {}
	return []benchCase{
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
		// CometBFT's FilePV as a remote signer: what the privval round trip
		// alone costs, without a cluster.
		{"cometbft filepv remote", func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster) {
			return startFilePVRemote(ctx, t, dir, opts), nil
		}},
		// One node: the privval round trip and one log append, no quorum;
		// the bound a cluster cannot beat on this host.
		{"kms-ha tcp:// 1 node", func(ctx context.Context, t *testing.T, dir string) (*harness.CometNode, *harness.Cluster) {
			c := newCluster(ctx, t, harness.Config{Dir: dir, Logf: quiet, Comet: opts, Nodes: 1})
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
}

// benchRow is one measured window.
type benchRow struct {
	blocks        int64
	elapsed       time.Duration
	sigs          int
	laterRounds   int
	leaderChanges int
	nodes         int
	load          string
}

func (r benchRow) bps() float64 { return float64(r.blocks) / r.elapsed.Seconds() }

// measureCase waits for the first block and the warm-up, counts blocks
// over window, then, for a kms-ha cluster (c not nil), stops the chain and
// reads the signers' logs: every slot signed once, signatures in the
// window, precommits in a later round and leader elections.
func measureCase(ctx context.Context, t *testing.T, n *harness.CometNode, c *harness.Cluster, warmup, window time.Duration) benchRow {
	t.Helper()
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
	r := benchRow{blocks: s1.Height - s0.Height, elapsed: time.Since(t0), load: loadAvg()}
	if r.blocks <= 0 {
		t.Fatalf("no block in %s (height %d)", window, s1.Height)
	}
	// Stop the chain first: the logs are then complete, and the next
	// window runs alone.
	_ = n.Proc.Kill()
	if c == nil {
		return r
	}
	r.nodes = len(c.Nodes)
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
	c.Close()
	return r
}

// benchTable prints each window, then per kms-ha transport the median of
// its ratios to the file signer's window of the same round.
func benchTable(cases []benchCase, rows [][]benchRow, window, warmup time.Duration) string {
	var b strings.Builder
	race := ""
	if os.Getenv(harness.RaceEnv) == "1" {
		race = " (kms-ha built with -race: figures are not representative)"
	}
	fmt.Fprintf(&b, "one validator, timeout_commit 1ms, %s measured after %s of warm-up, loopback, %d interleaved rounds%s\n",
		window, warmup, len(rows[0]), race)
	fmt.Fprintf(&b, "%-22s %5s %9s %12s %8s %6s %s\n", "signer", "round", "blocks/s", "vs file pv", "sigs/s", "load", "notes")
	for i, bc := range cases {
		for r, row := range rows[i] {
			ratio, sigs, notes := 100*row.bps()/rows[0][r].bps(), "-", ""
			switch {
			case i > 0 && row.nodes == 0:
				notes = "FilePV behind cometbft's remote-signer loop, one process"
			case i > 0:
				sigs = fmt.Sprintf("%.0f", float64(row.sigs)/row.elapsed.Seconds())
				notes = fmt.Sprintf("%d kms-ha nodes; %d precommits in round > 0; %d leader elections", row.nodes, row.laterRounds, row.leaderChanges)
			}
			fmt.Fprintf(&b, "%-22s %5d %9.1f %11.0f%% %8s %6s %s\n", bc.name, r+1, row.bps(), ratio, sigs, row.load, notes)
		}
	}
	b.WriteString("median ratio to cometbft's file signer over the rounds (each against the file signer's window of its round):\n")
	for i, bc := range cases[1:] {
		var ratios []float64
		for r, row := range rows[i+1] {
			ratios = append(ratios, row.bps()/rows[0][r].bps())
		}
		sort.Float64s(ratios)
		fmt.Fprintf(&b, "  %-20s %4.0f%% (rounds: %s)\n", bc.name, 100*medianFloat(ratios), percents(ratios))
	}
	fmt.Fprintf(&b, "load: 1-minute load average at the end of each window, on %d CPUs; other work on the host skews the figures\n", runtime.NumCPU())
	return b.String()
}

// medianFloat is the median of sorted xs.
func medianFloat(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	if len(xs)%2 == 1 {
		return xs[len(xs)/2]
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
}

func percents(xs []float64) string {
	var ps []string
	for _, x := range xs {
		ps = append(ps, fmt.Sprintf("%.0f%%", 100*x))
	}
	return strings.Join(ps, " ")
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
