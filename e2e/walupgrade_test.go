//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestRollingUpgradeIntoWAL is the upgrade from a release that kept the
// raft log in raft.db: a cluster runs with cluster.log_store: bolt (the
// file layout those releases wrote), then each node in turn, followers
// first and the leader last, is stopped, its kms.yaml loses the setting
// (the default, as after installing this release) and it starts again,
// moving its log into wal/ while the others sign. Validator 4 of a
// 4-validator testnet must miss no block, every signature must pass the
// safety scan, and each data dir must end with wal/ and no raft.db.
func TestRollingUpgradeIntoWAL(t *testing.T) {
	requireBins(t)
	const stall = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{Nodes: 3,
		Testnet: &harness.TestnetOptions{ChainID: "e2e-walupgrade", Powers: []int64{10, 10, 10, 10}, TimeoutCommit: time.Second},
		Raft:    harness.RaftTimings{LogStore: "bolt"},
	})
	tn := c.Testnet
	if err := c.StartSigners(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tn.StartLocal(); err != nil {
		t.Fatal(err)
	}
	if err := c.StartChain(ctx); err != nil {
		t.Fatal(err)
	}
	observer := tn.Local[0]
	from, err := observer.WaitHeight(ctx, 4, stall)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if _, err := os.Stat(filepath.Join(n.Home, "raft", "raft.db")); err != nil {
			t.Fatalf("%s runs with log_store: bolt but has no raft.db: %v", n.ID, err)
		}
	}
	leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	var order []*harness.KMSNode
	for _, n := range c.Nodes {
		if n != leader {
			order = append(order, n)
		}
	}
	for _, n := range append(order, leader) {
		upgradeNodeToWAL(ctx, t, c, n)
	}
	end, err := observer.WaitHeight(ctx, 0, stall)
	if err != nil {
		t.Fatal(err)
	}
	if end, err = observer.WaitHeight(ctx, end+3, stall); err != nil {
		t.Fatal(err)
	}
	scan := checkSafety(ctx, t, c, chainEnd{observer, end})
	rep, err := observer.CheckCommits(ctx, tn.RemoteKey, from, end-1, scan.Signed)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Errorf("the upgrade into the WAL missed blocks: %v", err)
	}
	t.Logf("heights %d..%d: validator 4's verified precommit in %d commits over the upgrade of all three nodes",
		from, end-1, rep.Present)
}

// upgradeNodeToWAL stops n with SIGTERM, drops log_store from its kms.yaml,
// starts it and waits until it has caught up, then checks its data dir and
// log say the log moved.
func upgradeNodeToWAL(ctx context.Context, t *testing.T, c *harness.Cluster, n *harness.KMSNode) {
	t.Helper()
	if err := n.Proc.Stop(15 * time.Second); err != nil {
		t.Fatalf("stop %s: %v", n.ID, err)
	}
	cfgPath := filepath.Join(n.Home, "kms.yaml")
	b, err := os.ReadFile(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	cfg := strings.Replace(string(b), "  log_store: bolt\n", "", 1)
	if cfg == string(b) {
		t.Fatalf("%s: kms.yaml has no log_store: bolt line to drop", n.ID)
	}
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(n); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WaitCaughtUp(ctx, n, 60*time.Second, 8); err != nil {
		t.Fatalf("%s after the move to the WAL: %v", n.ID, err)
	}
	dataDir := filepath.Join(n.Home, "raft")
	if _, err := os.Stat(filepath.Join(dataDir, "wal")); err != nil {
		t.Errorf("%s: no wal/ after the upgrade: %v", n.ID, err)
	}
	for _, gone := range []string{"raft.db", "raft.db.pre-wal", "wal.tmp"} {
		if _, err := os.Stat(filepath.Join(dataDir, gone)); !os.IsNotExist(err) {
			t.Errorf("%s: %s still in the data dir after the upgrade (stat: %v)", n.ID, gone, err)
		}
	}
	logText, err := os.ReadFile(n.Proc.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(logText), "raft log store migrated from raft.db to the WAL") {
		t.Errorf("%s: its log does not report the move to the WAL", n.ID)
	}
}
