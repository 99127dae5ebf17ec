//go:build e2e

package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// A validators entry whose protocol does not match the node's CometBFT
// line is what an operator sees right away, not a chain that signs wrongly:
// the node exits at start with "can't get pubkey", and kms-ha signs
// nothing. Both ways: a v1.0.1 node behind a v0.38 entry, and a v0.38.26
// node behind a v1 entry.
func TestWrongProtocolV1NodeV038Entry(t *testing.T) {
	requireBins(t)
	checkWrongProtocol(t, cometRelease(t, harness.ReleaseVersion(harness.CometBFTV1, harness.CometBFTV1Env)), "v0.38")
}

func TestWrongProtocolV038NodeV1Entry(t *testing.T) {
	requireBins(t)
	checkWrongProtocol(t, cometBFT038(t), "v1")
}

func checkWrongProtocol(t *testing.T, cometBin, protocol string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{
		Bin:   harness.Binaries{KMSHA: bins.KMSHA, CometBFT: cometBin},
		Nodes: 1,
		Comet: harness.CometOptions{ChainID: "e2e-wrong-protocol"},
		Setup: withProtocol(protocol),
	})
	if err := c.StartSigners(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Comet.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-c.Comet.Proc.Done():
	case <-time.After(30 * time.Second):
		h, _ := c.Comet.Height(ctx)
		t.Fatalf("the node still runs after 30 s (height %d)", h)
	}
	data, err := os.ReadFile(c.Comet.Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(data), "can't get pubkey")
	if i < 0 {
		t.Fatalf("the node exited (%v) without saying \"can't get pubkey\":\n%s", c.Comet.Proc.ExitErr(), c.LogTail(c.Comet.Proc.LogPath, 20))
	}
	line, _, _ := strings.Cut(string(data[i:]), "\n")
	t.Logf("cometbft exited (%v): %s", c.Comet.Proc.ExitErr(), line)
	scan, err := c.Scan()
	if err != nil {
		t.Fatal(err)
	}
	if len(scan.Signed) != 0 {
		t.Fatalf("kms-ha signed %d messages for a node it cannot serve", len(scan.Signed))
	}
}
