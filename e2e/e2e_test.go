//go:build e2e

// The end-to-end tests run real processes: three kms-ha nodes and one
// cometbft v0.40 validator (TestFailover), or two validators of two chains
// signed for by the same cluster (TestMultiChain), all on loopback. Run them
// with
//
//	go test -tags e2e ./e2e/ -v -timeout 15m
//
// Set KMSHA_E2E_REPORT=path to also write the failover figures to a file, and
// KMSHA_E2E_KEEP=1 to keep the working directory (it is always kept when a
// test fails).
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

var (
	bins        harness.Binaries
	kmsBuildErr error

	// workDirs are named on an interrupt, which skips the test cleanups
	// that would otherwise report or remove them.
	workDirsMu sync.Mutex
	workDirs   []string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := harness.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	binDir, err := os.MkdirTemp("", "kms-ha-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(binDir)

	// go test does not run cleanups when interrupted; without this a Ctrl-C
	// would leave signers running and holding their ports.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "e2e: %s: killing all child processes\n", s)
		harness.KillAll()
		os.RemoveAll(binDir)
		workDirsMu.Lock()
		for _, d := range workDirs {
			fmt.Fprintf(os.Stderr, "e2e: working directory kept: %s\n", d)
		}
		workDirsMu.Unlock()
		os.Exit(130)
	}()
	defer harness.KillAll()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	if bins.CometBFT, err = harness.BuildCometBFT(ctx, root, binDir); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	// A kms-ha that does not build fails the tests that need it, while the
	// harness self-check still runs.
	bins.KMSHA, kmsBuildErr = harness.BuildKMSHA(ctx, root, binDir)
	fmt.Fprintf(os.Stderr, "e2e: built binaries in %s\n", time.Since(start).Round(time.Millisecond))
	return m.Run()
}

// TestCometBFTAlone checks the harness's cometbft setup on its own, with the
// node signing through its own key file: when this fails, the failure of
// TestFailover says nothing about kms-ha.
func TestCometBFTAlone(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	comet, err := harness.NewComet(ctx, bins.CometBFT, workDir(t), harness.CometOptions{LocalSigner: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := comet.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	defer comet.Proc.Kill()
	h, err := comet.WaitHeight(ctx, 3, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := comet.ScanEvidence(ctx, 1, h); err != nil {
		t.Fatal(err)
	}
	b, err := comet.Block(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.LastCommit) != 1 || b.LastCommit[0].BlockIDFlag != harness.BlockIDFlagCommit {
		t.Fatalf("block %d: last_commit %+v, want one commit signature", h, b.LastCommit)
	}
}

// TestFailover is the acceptance test: the chain keeps going through
// repeated crashes of the signing leader, and nothing is ever double-signed.
func TestFailover(t *testing.T) {
	requireBins(t)
	const (
		failovers = 3
		// The definition of a stall: a failover takes seconds at most, so a
		// 20 s gap between blocks means the signer cluster is stuck.
		stall = 20 * time.Second
		// Blocks the chain must add under each new leader.
		progress = 5
		// How far a restarted follower may trail the leader's commit index:
		// the entries of about one block (a watermark per step), which can
		// be in flight between the two status calls.
		maxLag = 5
	)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dir := workDir(t)
	c := newCluster(ctx, t, harness.Config{Dir: dir, Nodes: 3})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()

	h, err := c.Comet.WaitHeight(ctx, 5, stall)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("chain at height %d, signed through the kms-ha cluster", h)

	var results []*harness.Failover
	for i := 1; i <= failovers; i++ {
		f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
		if err != nil {
			t.Fatalf("failover %d: %v", i, err)
		}
		results = append(results, f)
		t.Logf("failover %d: SIGKILL of leader %s at height %d -> height %d committed %s later; %s became leader after %s; first block after the kill signed by %s",
			i, f.Killed, f.HeightAtKill, f.NextHeight, ms(f.NextBlock), f.NewLeader, ms(f.Elected), orUnknown(f.NextSigner))
		if f.NextSigner == f.Killed {
			// Not a failure: the killed node had signed the precommit just
			// before dying. The figure then understates this failover.
			t.Logf("failover %d: note: the first block after the kill was signed by the killed node before it died", i)
		}

		target := f.HeightAtKill + progress
		if _, err := c.Comet.WaitHeight(ctx, target, stall); err != nil {
			t.Fatalf("failover %d: chain did not go on under %s: %v", i, f.NewLeader, err)
		}
		if signer := waitPrecommitSigner(ctx, c, c.Comet.ChainID, target); signer != f.NewLeader {
			// Another failover in between would also explain this, but none
			// is expected with two healthy nodes.
			t.Fatalf("failover %d: height %d precommit signed by %q, want new leader %s", i, target, signer, f.NewLeader)
		}

		killed := c.Node(f.Killed)
		if err := c.Restart(killed); err != nil {
			t.Fatal(err)
		}
		fs, ls, err := c.WaitCaughtUp(ctx, killed, 60*time.Second, maxLag)
		if err != nil {
			t.Fatalf("failover %d: %v", i, err)
		}
		t.Logf("failover %d: %s restarted and follows %s: applied index %d, leader commit index %d",
			i, killed.ID, fs.LeaderID, fs.AppliedIndex, ls.CommitIndex)
	}

	// A few more blocks with the full cluster back, so that a late
	// conflicting signature from a restarted node would be in the logs.
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
	checkPrecommitsLogged(t, scan, c.Comet.ChainID, latest, len(results))
	checkCommits(ctx, t, c.Comet, scan, latest)
	report(t, results)
}

func report(t *testing.T, results []*harness.Failover) {
	t.Helper()
	if len(results) == 0 {
		return
	}
	var ds []time.Duration
	for _, f := range results {
		ds = append(ds, f.NextBlock)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	median := ds[len(ds)/2]
	if len(ds)%2 == 0 {
		median = (ds[len(ds)/2-1] + ds[len(ds)/2]) / 2
	}
	worst := ds[len(ds)-1]

	var b strings.Builder
	fmt.Fprintf(&b, "kms-ha e2e failover report, %s\n", time.Now().UTC().Format(time.RFC3339))
	fmt.Fprintf(&b, "SIGKILL of the Raft leader -> next committed block (3 kms-ha nodes, 1 cometbft validator, loopback)\n")
	for i, f := range results {
		fmt.Fprintf(&b, "failover %d: killed %s at height %d, next block after %s, new leader %s (elected after %s)\n",
			i+1, f.Killed, f.HeightAtKill, ms(f.NextBlock), f.NewLeader, ms(f.Elected))
	}
	fmt.Fprintf(&b, "median %s, worst %s over %d failovers\n", ms(median), ms(worst), len(results))
	t.Log("\n" + b.String())
	if p := os.Getenv("KMSHA_E2E_REPORT"); p != "" {
		if dir := filepath.Dir(p); dir != "" {
			_ = os.MkdirAll(dir, 0o755)
		}
		if err := os.WriteFile(p, []byte(b.String()), 0o644); err != nil {
			t.Errorf("write report: %v", err)
		}
	}
}
