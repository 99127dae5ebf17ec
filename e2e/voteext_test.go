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

// TestVoteExtensions runs a chain with vote extensions on and an ABCI app
// (./cmd/abciapp) whose extensions are never empty: every precommit for a
// block that kms-ha signs must come back with the extension signature.
//
// Two views check it. CometBFT itself: a precommit without the extension
// signature halts it with CONSENSUS FAILURE, and one with a bad extension
// signature is rejected from its own vote set, so the chain would stop. And
// the app: the proposer's PrepareProposal receives the previous height's
// extended commit (LocalLastCommit: extension and extension signature per
// validator), which RPC does not show; the app verifies each extension
// signature under the validator's key over CometBFT's
// VoteExtensionSignBytes and records the result, line by line, for the test.
// Both views must hold before and after a SIGKILL of the signing leader.
func TestVoteExtensions(t *testing.T) {
	requireBins(t)
	runVoteExtensions(t, bins.CometBFT, abciApp(t), "", "e2e-voteext")
}

// TestVoteExtensionsV1 is TestVoteExtensions on a cometbft v1.0.1 chain
// with protocol v1: the node asks for the extension signature
// (skip_extension_signing false) once extensions are on, and gets it.
func TestVoteExtensionsV1(t *testing.T) {
	requireBins(t)
	runVoteExtensions(t, cometRelease(t, harness.ReleaseVersion(harness.CometBFTV1, harness.CometBFTV1Env)), abciAppV1(t),
		"v1", "e2e-voteext-v1")
}

// TestVoteExtensions038 is TestVoteExtensions on the most deployed line,
// a cometbft v0.38.26 chain.
func TestVoteExtensions038(t *testing.T) {
	requireBins(t)
	runVoteExtensions(t, cometBFT038(t), abciApp(t), "v0.38", "e2e-voteext-v038")
}

// enableHeight: extensions are on from height 2, so height 1 shows the
// switch.
const enableHeight = 2

// runVoteExtensions is the scenario of TestVoteExtensions for a cometbft
// binary, the ABCI app built for its line, and a validators[].protocol.
func runVoteExtensions(t *testing.T, cometBin, appBin, protocol, chainID string) {
	t.Helper()
	const (
		stall = 20 * time.Second
		// Heights to commit before and after the failover.
		before, after = 8, 10
		maxLag        = 5
	)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	c := newCluster(ctx, t, harness.Config{
		Bin:   harness.Binaries{KMSHA: bins.KMSHA, CometBFT: cometBin},
		Nodes: 3,
		Comet: harness.CometOptions{ChainID: chainID},
		Setup: withProtocol(protocol),
	})
	app := startVoteExtApp(ctx, t, c, appBin)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	key, err := harness.LoadValidatorKey(c.Comet.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()

	if _, err := c.Comet.WaitHeight(ctx, enableHeight+before, stall); err != nil {
		t.Fatal(err)
	}
	latest, killHeight := failoverAndRejoin(ctx, t, c, stall, after, maxLag)
	checkLineEnd(ctx, t, c, mon, latest, stall)
	checkNoExtensionErrors(t, c.Comet)
	checkAppExtensions(t, app, key, latest, killHeight)
}

// startVoteExtApp turns vote extensions on from enableHeight in the chain's
// genesis and starts the ABCI app appBin that the node then uses.
func startVoteExtApp(ctx context.Context, t *testing.T, c *harness.Cluster, appBin string) *harness.ABCIApp {
	t.Helper()
	if err := c.Comet.SetVoteExtensionsEnableHeight(enableHeight); err != nil {
		t.Fatal(err)
	}
	// The app reads the chain id, the validator keys and the enable height
	// from the final genesis.
	app, err := harness.NewABCIApp(appBin, c.Dir, "abciapp", c.Comet.GenesisPath())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Comet.UseABCIApp(app.Addr); err != nil {
		t.Fatal(err)
	}
	// The chain and the signers stop before the app they depend on (this
	// cleanup runs before newCluster's, which then finds them stopped).
	t.Cleanup(func() {
		c.Close()
		_ = app.Proc.Kill()
	})
	if err := app.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("abciapp on %s, records to %s", app.Addr, app.RecordPath)
	return app
}

// checkNoExtensionErrors fails on any complaint of the node about an
// extension (a missing or bad extension signature on one of its own votes:
// ErrVoteExtensionInvalid, a vote not added to the vote set).
func checkNoExtensionErrors(t *testing.T, n *harness.CometNode) {
	t.Helper()
	logData, err := os.ReadFile(n.Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(logData), "\n") {
		if strings.HasPrefix(line, "E[") && strings.Contains(strings.ToLower(line), "extension") {
			t.Errorf("cometbft: %s", line)
		}
	}
}

// checkAppExtensions is the app's view. Block h+1 was proposed with the
// extended commit of h, so heights enableHeight..latest-1 must each have
// been checked; a proposal can be prepared more than once (rounds), each
// time checked.
func checkAppExtensions(t *testing.T, app *harness.ABCIApp, key harness.ValidatorKey, latest, killHeight int64) {
	t.Helper()
	recs, err := harness.ReadVoteExtRecords(app.RecordPath)
	if err != nil {
		t.Fatal(err)
	}
	addr := key.Address.String()
	checked := map[int64]int{}
	extended := map[int64]bool{}
	verified := 0
	var bad []string
	for _, r := range recs {
		switch r.Event {
		case harness.EventExtendVote:
			extended[r.Height] = true
		case harness.EventLocalLastCommit:
			if r.Validator != addr {
				bad = append(bad, fmt.Sprintf("height %d: vote of unknown validator %s", r.Height, r.Validator))
				continue
			}
			switch {
			case !r.OK:
				bad = append(bad, fmt.Sprintf("height %d round %d: %s", r.Height, r.Round, r.Err))
			case r.Height >= enableHeight && r.Flag == harness.BlockIDFlagCommit:
				checked[r.Height]++
			case r.Height >= enableHeight:
				bad = append(bad, fmt.Sprintf("height %d: our vote in the extended commit has block_id_flag %d", r.Height, r.Flag))
			}
		case harness.EventVerifyExtension:
			// v0.40 has the app verify the node's own extension before the
			// precommit goes to the signer (consensus/state.go signVote),
			// other validators' extensions after checking their signature.
			verified++
			if !r.OK || r.Validator != addr {
				bad = append(bad, fmt.Sprintf("height %d: VerifyVoteExtension of %s rejected %q", r.Height, r.Validator, r.Extension))
			}
		}
	}
	var missing []string
	beforeKill, afterKill := 0, 0
	for h := int64(enableHeight); h < latest; h++ {
		if !extended[h] {
			missing = append(missing, fmt.Sprintf("%d (ExtendVote never called)", h))
		}
		if checked[h] == 0 {
			missing = append(missing, fmt.Sprintf("%d (no verified extension signature)", h))
			continue
		}
		if h <= killHeight {
			beforeKill++
		} else {
			afterKill++
		}
	}
	if len(bad) > 0 {
		t.Errorf("abciapp found bad vote extensions:\n  %s", strings.Join(bad, "\n  "))
	}
	if len(missing) > 0 {
		t.Errorf("heights without a verified vote extension of validator %s: %s", addr, strings.Join(missing, ", "))
	}
	if beforeKill == 0 || afterKill == 0 {
		t.Errorf("verified extensions: %d heights up to the kill at %d, %d after; want both > 0", beforeKill, killHeight, afterKill)
	}
	t.Logf("vote extensions: %d app records; validator %s's extension \"ext-<height>\" and its signature verified by the app at every height %d..%d: %d up to the leader kill at height %d, %d after; VerifyVoteExtension accepted all %d extensions it saw",
		len(recs), addr, enableHeight, latest-1, beforeKill, killHeight, afterKill, verified)
}
