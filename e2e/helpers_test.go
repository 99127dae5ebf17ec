//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// requireBins fails a test that needs kms-ha when it did not build (the
// harness self-checks still run).
func requireBins(t *testing.T) {
	t.Helper()
	if kmsBuildErr != nil {
		t.Fatalf("kms-ha does not build: %v", kmsBuildErr)
	}
}

// newCluster is the preamble of a cluster test: the binaries built, the
// homes of cfg prepared (Dir, Bin and Logf default to a fresh workDir, the
// binaries built for this run and the test log), and every process stopped
// after the test. Nothing is started.
func newCluster(ctx context.Context, t *testing.T, cfg harness.Config) *harness.Cluster {
	t.Helper()
	requireBins(t)
	if cfg.Dir == "" {
		cfg.Dir = workDir(t)
	}
	if cfg.Bin == (harness.Binaries{}) {
		cfg.Bin = bins
	}
	if cfg.Logf == nil {
		cfg.Logf = logf(t)
	}
	c, err := harness.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, c)
	return c
}

// workDir returns a fresh directory that is removed after a passing test and
// kept, with its logs, after a failing one.
func workDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kms-ha-e2e-"+t.Name()+"-")
	if err != nil {
		t.Fatal(err)
	}
	workDirsMu.Lock()
	workDirs = append(workDirs, dir)
	workDirsMu.Unlock()
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("KMSHA_E2E_KEEP") != "" {
			t.Logf("working directory kept: %s", dir)
			return
		}
		os.RemoveAll(dir)
	})
	return dir
}

// logf timestamps the harness's progress messages in the test log.
func logf(t *testing.T) func(string, ...any) {
	return func(f string, a ...any) {
		t.Logf("%s  "+f, append([]any{time.Now().Format("15:04:05.000")}, a...)...)
	}
}

// closeOnCleanup stops every process of c after the test and, when it
// failed, quotes the end of every log.
func closeOnCleanup(t *testing.T, c *harness.Cluster) {
	t.Cleanup(func() {
		c.Close()
		if t.Failed() {
			paths := c.LogPaths()
			for _, n := range c.Comets {
				paths = append(paths, n.Proc.LogPath)
			}
			for _, p := range paths {
				t.Logf("end of %s:\n%s", p, c.LogTail(p, 25))
			}
		}
	})
}

// chainEnd is a chain, seen through one of its nodes, and the last height
// the end-of-test checks read.
type chainEnd struct {
	node   *harness.CometNode
	latest int64
}

// checkSafety is the end of every cluster test: no evidence in blocks
// 1..latest of each chain named, and the invariants over every signature of
// every chain in every kms-ha log: no (chain, height, round, step) signed
// twice with different bytes, every validator connection and signature
// inside the node's own leadership, no data race reported, every log line
// parsed. It returns what the logs hold for the checks that follow.
func checkSafety(ctx context.Context, t *testing.T, c *harness.Cluster, ends ...chainEnd) harness.Scan {
	t.Helper()
	if len(ends) == 0 {
		t.Fatal("checkSafety: name the chains whose blocks to read for evidence")
	}
	for _, e := range ends {
		if err := e.node.ScanEvidence(ctx, 1, e.latest); err != nil {
			t.Errorf("chain %s: %v", e.node.ChainID, err)
		} else {
			t.Logf("chain %s: no evidence in blocks 1..%d", e.node.ChainID, e.latest)
		}
	}
	scan, err := c.Scan()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range scan.Errors {
		t.Error(e)
	}
	if err := harness.CheckNoRace(c.LogPaths()...); err != nil {
		t.Error(err)
	} else if os.Getenv(harness.RaceEnv) == "1" {
		t.Logf("race detector: no data race reported by any kms-ha process")
	}
	connects, err := harness.CheckLeaderOnly(c.LogPaths()...)
	if err != nil {
		t.Errorf("invariant 3: %v", err)
	} else if connects == 0 {
		t.Error("invariant 3: no validator connection in any log; the check proves nothing")
	} else {
		t.Logf("invariant 3: all %d validator connections and every signature fall inside the node's own leadership", connects)
	}
	if err := harness.CheckNoDoubleSign(scan.Signed); err != nil {
		t.Error(err)
	} else {
		t.Logf("safety: no (chain, height, round, step) signed twice with different bytes across %d signatures in %d logs",
			len(scan.Signed), len(c.LogPaths()))
	}
	return scan
}

// checkPrecommitsLogged checks that the logs really cover the chain, so that
// the safety invariant cannot pass vacuously on missing or unparsable lines.
func checkPrecommitsLogged(t *testing.T, scan harness.Scan, chainID string, latest int64, failovers int) {
	t.Helper()
	var missing []string
	signers := map[string]bool{}
	for h := int64(1); h <= latest; h++ {
		node, _, ok := harness.PrecommitSigner(scan.Signed, chainID, h)
		if !ok {
			missing = append(missing, fmt.Sprint(h))
			continue
		}
		signers[node] = true
	}
	if len(missing) > 0 {
		t.Errorf("chain %s: committed heights without a logged precommit signature: %s", chainID, strings.Join(missing, " "))
	}
	if failovers > 0 && len(signers) < 2 {
		t.Errorf("chain %s: after %d failovers only %v signed precommits", chainID, failovers, signers)
	}
	t.Logf("chain %s: %s", chainID, harness.Summary(chainRecords(scan.Signed, chainID)))
}

// checkCommits reads every block's last_commit up to latest: the validator's
// own precommit must be in each (a single-validator chain cannot commit
// without it), its signature must verify under the validator's key, and the
// audit log must hold the same sign bytes for that slot under this chain's
// id.
func checkCommits(ctx context.Context, t *testing.T, n *harness.CometNode, scan harness.Scan, latest int64) *harness.CommitReport {
	t.Helper()
	key, err := harness.LoadValidatorKey(n.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	// Block latest is the last one known to exist; its last_commit is the
	// commit of latest-1.
	rep, err := n.CheckCommits(ctx, key, 1, latest-1, scan.Signed)
	if err != nil {
		t.Fatalf("chain %s: reading commits: %v", n.ChainID, err)
	}
	if err := rep.Err(); err != nil {
		t.Error(err)
	}
	t.Logf("chain %s: validator %X's precommit present and verified in %d of %d commits (heights %d..%d), missing from %d; %d not in the audit log, %d with other bytes there",
		n.ChainID, key.Address, rep.Present, rep.To-rep.From+1, rep.From, rep.To, len(rep.Missing), len(rep.NotLogged), len(rep.LogMismatch))
	return rep
}

func chainRecords(recs []harness.SignRecord, chainID string) []harness.SignRecord {
	var out []harness.SignRecord
	for _, r := range recs {
		if r.Chain == chainID {
			out = append(out, r)
		}
	}
	return out
}

// waitPrecommitSigner waits briefly for the log line of height h, which the
// signer may write just after cometbft commits the block.
func waitPrecommitSigner(ctx context.Context, c *harness.Cluster, chainID string, h int64) string {
	for deadline := time.Now().Add(3 * time.Second); ; {
		scan, err := c.Scan()
		if err == nil {
			if node, _, ok := harness.PrecommitSigner(scan.Signed, chainID, h); ok {
				return node
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return ""
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func ms(d time.Duration) string {
	if d == 0 {
		return "?"
	}
	return d.Round(time.Millisecond).String()
}

func orUnknown(s string) string {
	if s == "" {
		return "(not found in the logs)"
	}
	return s
}
