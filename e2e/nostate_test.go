//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestNoStateChainResumes: a cluster started without --allow-fresh-state
// holds no watermark for the chain, and its validator asks to sign block 1.
// The request is not answered with a RemoteSignerError (which CometBFT never
// retries: the chain stayed at 1/0 until cometbft was restarted) but by
// dropping the connection, so the validator retries. Once the operator
// imports the validator's state (here cometbft's own fresh
// priv_validator_state.json), the chain makes blocks without restarting
// cometbft.
func TestNoStateChainResumes(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, harness.Config{Nodes: 3, Metrics: true})
	for _, n := range c.Nodes {
		n.Proc.Args = withoutFlag(n.Proc.Args, "--allow-fresh-state")
	}
	if err := c.StartSigners(ctx); err != nil {
		t.Fatal(err)
	}
	comet := c.Comets[0]
	if err := comet.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	leader, _, err := c.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The validator asked, and the leader refused for want of a state.
	series := `kmsha_sign_refusals_total{chain="` + comet.ChainID + `",reason="no_state"}`
	for deadline := time.Now().Add(60 * time.Second); scrapeValue(t, leader.MetricsAddr, series) < 2; time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) || !comet.Proc.Running() {
			t.Fatalf("no repeated no_state refusal on leader %s within 60s (cometbft running: %v)", leader.ID, comet.Proc.Running())
		}
	}
	if h, err := comet.Height(ctx); err == nil && h > 0 {
		t.Fatalf("chain at height %d before any state was imported", h)
	}
	t.Logf("leader %s refused %v sign requests for want of a state; cometbft still runs and waits", leader.ID, scrapeValue(t, leader.MetricsAddr, series))

	alice, _, err := c.IssueOperator(ctx, "alice", false)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(comet.Home, "data", "priv_validator_state.json")
	r := alice.Run(ctx, leader.APIAddr, []string{"state", "import"}, "--chain", comet.ChainID, state)
	if r.Err != nil {
		t.Fatalf("%s: %v\n%s", r.Command, r.Err, r.Output)
	}
	t.Logf("%s: %s", r.Command, strings.TrimSpace(r.Output))
	h, err := comet.WaitHeight(ctx, 5, 60*time.Second)
	if err != nil {
		t.Fatalf("chain did not resume after the import, without restarting cometbft: %v", err)
	}
	if !comet.Proc.Running() {
		t.Fatal("cometbft exited")
	}
	t.Logf("chain %s reached height %d after the import, same cometbft process (pid %d)", comet.ChainID, h, comet.Proc.PID())
	if got := scrapeValue(t, leader.MetricsAddr, `kmsha_last_signed_height{chain="`+comet.ChainID+`",step="precommit"}`); got < 4 {
		t.Errorf("kmsha_last_signed_height for precommits = %v, want >= 4", got)
	}
	checkSafety(ctx, t, c, chainEnd{node: comet, latest: h})
}

func withoutFlag(args []string, flag string) []string {
	for i := slices.Index(args, flag); i >= 0; i = slices.Index(args, flag) {
		args = slices.Delete(args, i, i+2)
	}
	return args
}

// scrapeValue reads one series from a node's /metrics (0 when absent).
func scrapeValue(t *testing.T, addr, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}
