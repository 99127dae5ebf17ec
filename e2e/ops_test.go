//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestRollingRestart upgrades the cluster the documented way, one node at a
// time with SIGTERM, followers first and the leader last, while it signs
// for validator 4 of a 4-validator testnet. The chain does not wait for
// validator 4 (10 of 40 power), so every block whose commit lacks its
// precommit is a block missed by the restarts: there must be none.
// KMSHA_E2E_ROLLING sets the number of rolling restarts (default 2).
func TestRollingRestart(t *testing.T) {
	requireBins(t)
	rounds := 2
	if v, err := strconv.Atoi(os.Getenv("KMSHA_E2E_ROLLING")); err == nil && v > 0 {
		rounds = v
	}
	// timeout_commit: a second, as on production chains (the Hub's blocks
	// take about 6 s). The handover happens right after a precommit, so
	// the next leader connects during this wait. KMSHA_E2E_ROLLING_COMMIT
	// overrides it to measure faster chains.
	commit := time.Second
	if d, err := time.ParseDuration(os.Getenv("KMSHA_E2E_ROLLING_COMMIT")); err == nil && d > 0 {
		commit = d
	}
	const stall = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(3+2*rounds)*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{Nodes: 3,
		Testnet: &harness.TestnetOptions{ChainID: "e2e-rolling", Powers: []int64{10, 10, 10, 10}, TimeoutCommit: commit},
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
	mon := observer.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()
	// Validator 4 signs from its first heights once its node has caught up.
	from, err := observer.WaitHeight(ctx, 4, stall)
	if err != nil {
		t.Fatal(err)
	}
	var missedPerRound []int
	for r := 1; r <= rounds; r++ {
		start, err := observer.Height(ctx)
		if err != nil {
			t.Fatal(err)
		}
		leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
		if err != nil {
			t.Fatal(err)
		}
		order := []*harness.KMSNode{}
		for _, n := range c.Nodes {
			if n != leader {
				order = append(order, n)
			}
		}
		order = append(order, leader)
		for _, n := range order {
			began := time.Now()
			// SIGTERM: a leader hands leadership to an up-to-date follower
			// before it exits.
			if err := n.Proc.Stop(15 * time.Second); err != nil {
				t.Fatalf("round %d: stop %s: %v", r, n.ID, err)
			}
			stopped := time.Since(began)
			if err := c.Restart(n); err != nil {
				t.Fatal(err)
			}
			fs, _, err := c.WaitCaughtUp(ctx, n, 60*time.Second, 8)
			if err != nil {
				t.Fatalf("round %d: %v", r, err)
			}
			t.Logf("round %d: %s stopped in %s (was leader: %v), restarted and caught up in %s, following %s",
				r, n.ID, ms(stopped), n == leader, ms(time.Since(began)), fs.LeaderID)
		}
		end, err := observer.WaitHeight(ctx, 0, stall)
		if err != nil {
			t.Fatal(err)
		}
		if end, err = observer.WaitHeight(ctx, end+3, stall); err != nil {
			t.Fatal(err)
		}
		rep, err := observer.CheckCommits(ctx, tn.RemoteKey, start, end-1, nil)
		if err != nil {
			t.Fatal(err)
		}
		missedPerRound = append(missedPerRound, len(rep.Missing))
		t.Logf("round %d: heights %d..%d: validator 4's precommit in %d commits, missing from %d %v",
			r, start, end-1, rep.Present, len(rep.Missing), rep.Missing)
	}
	latest, err := observer.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	scan := checkSafety(ctx, t, c, chainEnd{observer, latest})
	rep, err := observer.CheckCommits(ctx, tn.RemoteKey, from, latest-1, scan.Signed)
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Err(); err != nil {
		t.Errorf("rolling restarts missed blocks: %v", err)
	}
	gap, after := mon.MaxGap()
	t.Logf("ROLLING RESTART FIGURES (timeout_commit %s): %d rounds, missed blocks per round %v, heights %d..%d all carry validator 4's verified precommit: %d of %d; longest block gap %s after height %d",
		commit, rounds, missedPerRound, from, latest-1, rep.Present, latest-from, ms(gap), after)
	if path := os.Getenv("KMSHA_E2E_REPORT"); path != "" {
		f, _ := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		fmt.Fprintf(f, "rolling restart: commit=%s rounds=%d missed=%v commits=%d/%d maxgap=%s\n", commit, rounds, missedPerRound, rep.Present, latest-from, ms(gap))
		f.Close()
	}
}

// kmsha runs a kms-ha command and returns its combined output.
func kmsha(ctx context.Context, t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, bins.KMSHA, args...).CombinedOutput()
	return string(out), err
}

// TestLostQuorumRecovery loses two of three nodes for good, recovers the
// survivor as a one-node cluster with `kms-ha recover --force`, and grows
// the cluster back with new members: the chain resumes from the watermark
// the cluster had, with no double sign. It also backs the state up before
// the loss and restores it afterwards (which must change nothing), and
// checks the metrics and health endpoints of a live node.
func TestLostQuorumRecovery(t *testing.T) {
	requireBins(t)
	const stall = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := workDir(t)
	c := newCluster(ctx, t, harness.Config{Dir: dir, Nodes: 3, Metrics: true})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Comet.WaitHeight(ctx, 8, stall); err != nil {
		t.Fatal(err)
	}
	leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	checkMetrics(ctx, t, c, leader)

	backup := filepath.Join(dir, "backup.json")
	out, err := kmsha(ctx, t, "snapshot", "save", "--home", leader.Home, backup)
	if err != nil {
		t.Fatalf("snapshot save: %v\n%s", err, out)
	}
	t.Logf("kms-ha snapshot save: %s", strings.TrimSpace(out))

	// The survivor is a follower; the leader and the other follower are lost.
	var survivor *harness.KMSNode
	for _, n := range c.Nodes {
		if n != leader {
			survivor = n
			break
		}
	}
	for _, n := range c.Nodes {
		if n != survivor {
			if err := n.Proc.Kill(); err != nil {
				t.Fatal(err)
			}
		}
	}
	lostAt, _ := c.Comet.Height(ctx)
	time.Sleep(2 * time.Second)
	if h, _ := c.Comet.Height(ctx); h > lostAt+1 {
		t.Fatalf("chain went from %d to %d without a signer quorum", lostAt, h)
	}
	// Without a quorum the survivor cannot confirm anything.
	if out, err := kmsha(ctx, t, "status", "--home", survivor.Home, "--linearizable"); err == nil {
		t.Fatalf("linearizable status answered without a quorum:\n%s", out)
	}
	if err := survivor.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	out, err = kmsha(ctx, t, "recover", "--home", survivor.Home)
	if err != nil || !strings.Contains(out, "nothing changed") {
		t.Fatalf("recover (inspect): %v\n%s", err, out)
	}
	t.Logf("kms-ha recover (inspect):\n%s", out)
	out, err = kmsha(ctx, t, "recover", "--home", survivor.Home, "--force")
	if err != nil || !strings.Contains(out, "one-node cluster") {
		t.Fatalf("recover --force: %v\n%s", err, out)
	}
	if err := c.Restart(survivor); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WaitLeader(ctx, 20*time.Second, ""); err != nil {
		t.Fatal(err)
	}
	h, err := c.Comet.WaitHeight(ctx, lostAt+5, stall)
	if err != nil {
		t.Fatalf("chain did not resume under the recovered node: %v", err)
	}
	t.Logf("chain resumed under the recovered one-node cluster: height %d (lost quorum at %d)", h, lostAt)

	// The lost members come back as new incarnations: wiped, then joined.
	for _, n := range c.Nodes {
		if n == survivor {
			continue
		}
		if err := os.RemoveAll(filepath.Join(n.Home, "raft")); err != nil {
			t.Fatal(err)
		}
		if err := c.Restart(n); err != nil {
			t.Fatal(err)
		}
		if out, err := kmsha(ctx, t, "join", "--home", n.Home, "--cluster", survivor.APIAddr, "--timeout", "60s"); err != nil {
			t.Fatalf("join %s: %v\n%s", n.ID, err, out)
		}
		if _, _, err := c.WaitCaughtUp(ctx, n, 60*time.Second, 8); err != nil {
			t.Fatal(err)
		}
	}
	out, err = kmsha(ctx, t, "status", "--home", survivor.Home, "--linearizable")
	if err != nil || strings.Count(out, " voter ") != 3 {
		t.Fatalf("after regrowing: %v\n%s", err, out)
	}
	// Restoring the older backup raises nothing.
	out, err = kmsha(ctx, t, "snapshot", "restore", "--home", survivor.Home, backup)
	if err != nil || !strings.Contains(out, "kept") {
		t.Fatalf("snapshot restore of an older backup: %v\n%s", err, out)
	}
	t.Logf("kms-ha snapshot restore: %s", strings.TrimSpace(out))
	latest, err := c.Comet.WaitHeight(ctx, h+5, stall)
	if err != nil {
		t.Fatal(err)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkCommits(ctx, t, c.Comet, scan, latest)
}

// checkMetrics scrapes a live leader and a follower: the leader is ready
// with its validator connected and exports its signatures and watermark;
// every node answers /healthz.
func checkMetrics(ctx context.Context, t *testing.T, c *harness.Cluster, leader *harness.KMSNode) {
	t.Helper()
	get := func(addr, path string) (int, string) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET %s%s: %v", addr, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get(leader.MetricsAddr, "/readyz"); code != http.StatusOK {
		t.Errorf("leader /readyz: %d %s", code, body)
	}
	_, body := get(leader.MetricsAddr, "/metrics")
	for _, want := range []string{
		`kmsha_signatures_total{chain="` + c.Comet.ChainID + `",step="precommit"}`,
		`kmsha_watermark_height{chain="` + c.Comet.ChainID + `"}`,
		`kmsha_reserve_duration_seconds_bucket{chain="` + c.Comet.ChainID + `"`,
		`kmsha_key_sign_duration_seconds_bucket{backend="file",chain="` + c.Comet.ChainID + `"`,
		`kmsha_validator_connected{addr="tcp://` + c.Comet.PrivvalAddr + `",chain="` + c.Comet.ChainID + `"} 1`,
		`kmsha_is_leader 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("leader /metrics lacks %s", want)
		}
	}
	for _, n := range c.Nodes {
		if code, _ := get(n.MetricsAddr, "/healthz"); code != http.StatusOK {
			t.Errorf("%s /healthz: %d", n.ID, code)
		}
		if n != leader {
			if code, body := get(n.MetricsAddr, "/readyz"); code != http.StatusOK {
				t.Errorf("follower %s /readyz: %d %s", n.ID, code, body)
			}
			_, body := get(n.MetricsAddr, "/metrics")
			if !strings.Contains(body, "kmsha_is_leader 0") {
				t.Errorf("follower %s /metrics: kmsha_is_leader is not 0", n.ID)
			}
		}
	}
}

// TestAddressChange restarts a follower on a new raft port, as after a
// move to another address: it updates its own entry in the cluster through
// the cluster API, without anyone wiping raft data, and catches up.
func TestAddressChange(t *testing.T) {
	requireBins(t)
	const stall = 30 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{Nodes: 3})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Comet.WaitHeight(ctx, 5, stall); err != nil {
		t.Fatal(err)
	}
	leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	var n *harness.KMSNode
	for _, m := range c.Nodes {
		if m != leader {
			n = m
		}
	}
	if err := n.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	ports, err := harness.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	old := n.RaftAddr
	n.RaftAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	if err := n.WriteConfig([]harness.ChainConfig{c.Comet.ChainConfig()}, harness.RaftTimings{}); err != nil {
		t.Fatal(err)
	}
	if err := c.Restart(n); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := leader.Status(ctx)
		if err == nil {
			if m, ok := st.Member(n.ID); ok && m.RaftAddr == n.RaftAddr {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's entry still not at %s (was %s): %v %+v", n.ID, n.RaftAddr, old, err, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, _, err := c.WaitCaughtUp(ctx, n, 60*time.Second, 8); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s moved from %s to %s and follows again", n.ID, old, n.RaftAddr)

	// The leader leaves: it hands leadership over, then is removed.
	out, err := kmsha(ctx, t, "leave", "--home", leader.Home)
	if err != nil || !strings.Contains(out, "left the cluster") {
		t.Fatalf("leave: %v\n%s", err, out)
	}
	t.Logf("kms-ha leave --home %s: %s", leader.ID, strings.TrimSpace(out))
	st, err := n.Status(ctx)
	if err != nil || len(st.Members) != 2 || st.LeaderID == leader.ID {
		t.Fatalf("after leave: %v %+v", err, st)
	}
	if err := leader.Proc.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	h, _ := c.Comet.Height(ctx)
	latest, err := c.Comet.WaitHeight(ctx, h+5, stall)
	if err != nil {
		t.Fatal(err)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkCommits(ctx, t, c.Comet, scan, latest)
}

// TestTransferToAStalledNode hands leadership to a follower that is paused
// (SIGSTOP): the transfer fails after an election timeout, and the
// validator's requests during it must not be lost. Raft refuses new
// entries while a transfer runs; CometBFT never retries a signer error, and
// a one-validator chain whose own prevote is lost waits forever.
func TestTransferToAStalledNode(t *testing.T) {
	requireBins(t)
	const stall = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{Nodes: 3,
		// Short consensus timeouts, so that the proposal and the prevote of a
		// height both fall inside the transfer window (an election timeout).
		Comet: harness.CometOptions{TimeoutCommit: 50 * time.Millisecond, TimeoutPropose: 100 * time.Millisecond}})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Comet.WaitHeight(ctx, 5, stall); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 3; round++ {
		leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
		if err != nil {
			t.Fatal(err)
		}
		var target *harness.KMSNode
		for _, n := range c.Nodes {
			if n != leader {
				target = n
				break
			}
		}
		if err := target.Proc.Pause(); err != nil {
			t.Fatal(err)
		}
		h, _ := c.Comet.Height(ctx)
		out, terr := leader.TransferLeadership(ctx, leader.APIAddr, target.ID)
		if err := target.Proc.Resume(); err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: transfer-leadership --to paused %s at height %d: err=%v %s", round, target.ID, h, terr, strings.TrimSpace(out))
		if _, err := c.Comet.WaitHeight(ctx, h+5, stall); err != nil {
			t.Fatalf("round %d: the chain stopped after a transfer to a paused node: %v", round, err)
		}
		// The paused node is back in the cluster (as follower, or as
		// leader if the transfer completed once it woke up).
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if st, err := target.Status(ctx); err == nil && st.LeaderID != "" && st.Voters() == 3 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %s did not rejoin the cluster", round, target.ID)
			}
		}
	}
	latest, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkCommits(ctx, t, c.Comet, scan, latest)
}
