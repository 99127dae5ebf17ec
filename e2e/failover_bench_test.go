//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestFailoverTimes is a measurement, not a test (KMSHA_E2E_BENCH=1 runs
// it): a kms-ha cluster signing for one cometbft v0.40 validator, whose
// leader is SIGKILLed again and again, each time just after a block
// commits, and restarted once the chain goes on. It prints, per failover,
// the time from the SIGKILL to the new leader's "became leader" (election
// and barrier), to its validator connection, to its first signature and
// to the next committed block, then the median and the worst. It fails
// only if the chain stops or a slot is signed twice.
//
//	KMSHA_E2E_BENCH=1 go test -tags e2e -count=1 -run TestFailoverTimes -v ./e2e/
//
// KMSHA_E2E_FAILOVERS (default 10), KMSHA_E2E_NODES (default 3),
// KMSHA_E2E_TIMEOUT_COMMIT (default the harness's 200ms) and
// KMSHA_E2E_RAFT ("heartbeat/election/lease", e.g. 1s/3s/500ms; default
// kms-ha's own defaults) shape the run.
func TestFailoverTimes(t *testing.T) {
	if os.Getenv(benchEnv) != "1" {
		t.Skipf("a measurement, not a test: set %s=1 to run it", benchEnv)
	}
	requireBins(t)
	failovers := envInt(t, "KMSHA_E2E_FAILOVERS", 10)
	nodes := envInt(t, "KMSHA_E2E_NODES", 3)
	timings := envRaft(t, "KMSHA_E2E_RAFT")
	opts := harness.CometOptions{TimeoutCommit: envDuration(t, "KMSHA_E2E_TIMEOUT_COMMIT", 200*time.Millisecond)}
	const stall = 20 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(failovers)*time.Minute+2*time.Minute)
	defer cancel()

	c := newCluster(ctx, t, harness.Config{Nodes: nodes, Comet: opts, Raft: timings, Logf: func(string, ...any) {}})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	interval, err := blockInterval(ctx, c.Comet, 10, stall)
	if err != nil {
		t.Fatal(err)
	}
	var rows []failoverRow
	for i := 1; i <= failovers; i++ {
		f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
		if err != nil {
			t.Fatalf("failover %d: %v", i, err)
		}
		rows = append(rows, failoverBreakdown(c, f))
		if _, err := c.Comet.WaitHeight(ctx, f.HeightAtKill+3, stall); err != nil {
			t.Fatalf("failover %d: chain did not go on under %s: %v", i, f.NewLeader, err)
		}
		killed := c.Node(f.Killed)
		if err := c.Restart(killed); err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.WaitCaughtUp(ctx, killed, 60*time.Second, 8); err != nil {
			t.Fatalf("failover %d: %v", i, err)
		}
	}
	latest, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkSafety(ctx, t, c, chainEnd{c.Comet, latest})

	var b strings.Builder
	fmt.Fprintf(&b, "SIGKILL of the raft leader just after a block -> next block: %d kms-ha nodes, 1 cometbft v0.40 validator, timeout_commit %s, raft %s, loopback\n",
		nodes, opts.TimeoutCommit, raftLabel(timings))
	fmt.Fprintf(&b, "%-3s %-7s %-7s %10s %10s %12s %11s\n", "#", "killed", "leader", "elected", "connected", "first sign", "next block")
	var next []time.Duration
	for i, r := range rows {
		fmt.Fprintf(&b, "%-3d %-7s %-7s %10s %10s %12s %11s\n", i+1, r.killed, r.leader, ms(r.elected), ms(r.connected), ms(r.signed), ms(r.next))
		next = append(next, r.next)
	}
	med, worst := medianWorst(next)
	fmt.Fprintf(&b, "next block: median %s, worst %s over %d failovers (target: median <= 500ms, worst <= 1s)\n", ms(med), ms(worst), len(next))
	fmt.Fprintf(&b, "without a failover a block takes %s here: a failover delays the chain by about %s (median) and %s (worst)\n",
		ms(interval), ms(med-interval), ms(worst-interval))
	fmt.Fprintf(&b, "elected: SIGKILL to the new leader's \"became leader\" (failure detection, pre-vote, vote, barrier); connected: to its validator connection; load %s on %d CPUs\n",
		loadAvg(), runtime.NumCPU())
	t.Log("\n" + b.String())
}

// blockInterval waits for blocks+3 blocks and returns the mean time between
// the last blocks by their header times (BFT time: the median of the
// precommits' timestamps, here the one validator's clock).
func blockInterval(ctx context.Context, n *harness.CometNode, blocks int64, stall time.Duration) (time.Duration, error) {
	h, err := n.WaitHeight(ctx, blocks+3, stall)
	if err != nil {
		return 0, err
	}
	first, err := n.Block(ctx, h-blocks)
	if err != nil {
		return 0, err
	}
	last, err := n.Block(ctx, h)
	if err != nil {
		return 0, err
	}
	return last.Time.Sub(first.Time) / time.Duration(blocks), nil
}

type failoverRow struct {
	killed, leader                   string
	elected, connected, signed, next time.Duration
}

// failoverBreakdown reads the new leader's log for the moments between the
// kill and the next block.
func failoverBreakdown(c *harness.Cluster, f *harness.Failover) failoverRow {
	r := failoverRow{killed: f.Killed, leader: f.NewLeader, elected: f.Elected, next: f.NextBlock}
	n := c.Node(f.NewLeader)
	if n == nil {
		return r
	}
	if at, ok := firstLogLine(n.Proc.LogPath, "transport: connected", f.KilledAt); ok {
		r.connected = at.Sub(f.KilledAt)
	}
	if at, ok := firstLogLine(n.Proc.LogPath, harness.MsgSigned, f.KilledAt); ok {
		r.signed = at.Sub(f.KilledAt)
	}
	return r
}

// firstLogLine is the time of the first JSON log line with message msg at
// or after since.
func firstLogLine(path, msg string, since time.Time) (time.Time, bool) {
	fh, err := os.Open(path)
	if err != nil {
		return time.Time{}, false
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var h struct {
			Time time.Time `json:"time"`
			Msg  string    `json:"msg"`
		}
		if json.Unmarshal(line, &h) == nil && h.Msg == msg && !h.Time.Before(since) {
			return h.Time, true
		}
	}
	return time.Time{}, false
}

func medianWorst(ds []time.Duration) (median, worst time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	median = s[len(s)/2]
	if len(s)%2 == 0 {
		median = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return median, s[len(s)-1]
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// envRaft reads "heartbeat/election/lease" timings; unset means kms-ha's
// defaults.
func envRaft(t *testing.T, name string) harness.RaftTimings {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return harness.RaftTimings{}
	}
	parts := strings.Split(v, "/")
	var ds []time.Duration
	for _, p := range parts {
		d, err := time.ParseDuration(p)
		if err != nil || d <= 0 {
			break
		}
		ds = append(ds, d)
	}
	if len(parts) != 3 || len(ds) != 3 {
		t.Fatalf("%s=%q: want heartbeat/election/lease, like 1s/3s/500ms", name, v)
	}
	return harness.RaftTimings{HeartbeatTimeout: ds[0], ElectionTimeout: ds[1], LeaderLeaseTimeout: ds[2]}
}

func raftLabel(r harness.RaftTimings) string {
	if r == (harness.RaftTimings{}) {
		return "kms-ha defaults"
	}
	return fmt.Sprintf("heartbeat %s, election %s, lease %s", r.HeartbeatTimeout, r.ElectionTimeout, r.LeaderLeaseTimeout)
}
