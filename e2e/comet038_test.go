//go:build e2e

package e2e

import (
	"bytes"
	"os"
	"testing"

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
	// No protocol in the entry: v0.38 is the default.
	runLineFailover(t, cometBFT038(t), harness.CometBFT038Version(), "", "e2e-v038")
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
