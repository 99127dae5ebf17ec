//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestHotStandby runs validator 4 of a 4-validator testnet on two cometbft
// nodes at once, an active node and a hot standby, both served by one kms-ha
// cluster (two validators entries for the same chain in kms.yaml; the leader
// dials both). Both nodes ask for a signature at every height/round/step;
// kms-ha must sign each slot once (a repeat of the same vote is answered
// with the same signature, anything else is refused) so that the chain never
// sees two conflicting votes of validator 4. Transactions go to both nodes,
// so their proposals differ and conflicts really happen.
//
// Over a few hundred heights, with a SIGKILL of the kms-ha leader, later a
// SIGKILL of the active node and, later still, its restart (it comes back as
// the standby, replaying its WAL and catching up), the test checks: no block
// carries evidence; the audit logs hold one sign-bytes hash per slot;
// validator 4's verified precommit is in most commits, also while the active
// node was dead (signed through the standby); conflicting requests were
// refused with an error rather than by dropping a connection: every
// validator connection ends only because its kms-ha node stopped leading, or
// because its cometbft node was dead.
func TestHotStandby(t *testing.T) {
	requireBins(t)
	const (
		stall = 30 * time.Second
		// Heights at which the kms-ha leader, then the active node, are
		// killed, the active node is restarted, and the height to run to.
		killLeaderAt    = 80
		killActiveAt    = 150
		restartActiveAt = 220
		endAt           = 300
		// Heights after the active node's death in which validator 4 may
		// still be missing from commits while the standby takes over alone.
		takeover = 3
		// Share of commits that must hold validator 4's precommit, over the
		// whole run and while the active node was dead.
		minShare = 0.8
		maxLag   = 5
	)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	c := newCluster(ctx, t, harness.Config{
		Nodes: 3,
		Testnet: &harness.TestnetOptions{
			ChainID: "e2e-standby",
			// Validator 4 (kms-ha) has power 10 of 40: the chain does not
			// wait for it, so its presence in commits measures kms-ha alone.
			Powers:      []int64{10, 10, 10, 10},
			RemoteNodes: 2,
		},
	})
	tn := c.Testnet
	active, standby := tn.Remote[0], tn.Remote[1]
	observer := tn.Local[0]
	activeAddr, standbyAddr := "tcp://"+active.PrivvalAddr, "tcp://"+standby.PrivvalAddr
	yaml, err := os.ReadFile(filepath.Join(c.Nodes[0].Home, "kms.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(yaml), "chain_id: "+tn.ChainID); n != 2 {
		t.Fatalf("kms.yaml has %d validators entries for %s, want 2:\n%s", n, tn.ChainID, yaml)
	}
	t.Logf("validator 4 (%X) runs on %s (active, signer at %s) and %s (standby, signer at %s); %s kms.yaml:\n%s",
		tn.RemoteKey.Address, active.Name, activeAddr, standby.Name, standbyAddr, c.Nodes[0].ID, yaml)

	if err := c.StartSigners(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tn.StartLocal(); err != nil {
		t.Fatal(err)
	}
	if err := c.StartChain(ctx); err != nil {
		t.Fatal(err)
	}
	mon := observer.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()

	// Transactions to both nodes of validator 4, so that the blocks each
	// would propose differ.
	txCtx, stopTx := context.WithCancel(ctx)
	var txWG sync.WaitGroup
	sent := map[string]int{}
	var sentMu sync.Mutex
	for _, n := range tn.Remote {
		txWG.Add(1)
		go func() {
			defer txWG.Done()
			for i := 0; txCtx.Err() == nil; i++ {
				if n.Proc.Running() && n.BroadcastTxAsync(txCtx, fmt.Sprintf("%s-%d=%d", n.Name, i, i)) == nil {
					sentMu.Lock()
					sent[n.Name]++
					sentMu.Unlock()
				}
				select {
				case <-txCtx.Done():
				case <-time.After(25 * time.Millisecond):
				}
			}
		}()
	}
	defer func() { stopTx(); txWG.Wait() }()

	if _, err := observer.WaitHeight(ctx, killLeaderAt, stall); err != nil {
		t.Fatal(err)
	}
	f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	t.Logf("SIGKILL of kms-ha leader %s at height %d; %s became leader after %s; validator 4's precommit of height %d signed by %s",
		f.Killed, f.HeightAtKill, f.NewLeader, ms(f.Elected), f.HeightAtKill+1, orUnknown(f.NextSigner))
	killed := c.Node(f.Killed)
	if err := c.Restart(killed); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.WaitCaughtUp(ctx, killed, 30*time.Second, 20); err != nil {
		t.Fatal(err)
	}

	if _, err := observer.WaitHeight(ctx, killActiveAt, stall); err != nil {
		t.Fatal(err)
	}
	activeKilledHeight, err := observer.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	activeKilledAt := time.Now()
	if err := active.Proc.Kill(); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL of the active node %s at height %d; validator 4 now runs on %s alone", active.Name, activeKilledHeight, standby.Name)

	// The dead node comes back, as the standby now. It must find its
	// signer within 3 s (kms-ha has been redialing it all along), catch up
	// and be served again next to the other node.
	if _, err := observer.WaitHeight(ctx, restartActiveAt, stall); err != nil {
		t.Fatal(err)
	}
	restartHeight, err := observer.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	restartedAt := time.Now()
	if err := active.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	if err := waitCaughtUpNode(ctx, active, observer, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s restarted at height %d and caught up after %s", active.Name, restartHeight, ms(time.Since(restartedAt)))

	latest, err := observer.WaitHeight(ctx, endAt, stall)
	if err != nil {
		t.Fatal(err)
	}
	stopTx()
	txWG.Wait()
	if gap, after := mon.MaxGap(); gap > stall {
		t.Errorf("chain stalled for %s after height %d", gap.Round(time.Millisecond), after)
	} else {
		t.Logf("chain at height %d; longest gap between blocks %s (after height %d)", latest, ms(gap), after)
	}

	// No evidence in any block, and transactions did get in.
	txs := 0
	for h := int64(1); h <= latest; h++ {
		n, err := observer.TxCount(ctx, h)
		if err != nil {
			t.Fatal(err)
		}
		txs += n
	}
	t.Logf("transactions sent: %v; %d committed in blocks 1..%d", sent, txs, latest)
	if txs == 0 {
		t.Error("no transaction was committed; the proposals of the two nodes may not have differed")
	}

	// One sign-bytes hash per slot across every log; leader-only dialing.
	scan := checkSafety(ctx, t, c, chainEnd{observer, latest})
	checkMostPrecommits(ctx, t, observer, tn.RemoteKey, scan.Signed, 1, latest-1, minShare, "whole run")
	from := activeKilledHeight + takeover
	rep := checkMostPrecommits(ctx, t, observer, tn.RemoteKey, scan.Signed, from, restartHeight, minShare,
		fmt.Sprintf("while %s was dead (heights %d..%d)", active.Name, activeKilledHeight, restartHeight))
	// Signed while the active node was dead: through the standby, the only
	// validator 4 node left.
	var alone []harness.SignRecord
	for _, r := range scan.Signed {
		if r.Chain == tn.ChainID && r.Time.After(activeKilledAt) && r.Time.Before(restartedAt) && r.Height > activeKilledHeight {
			alone = append(alone, r)
		}
	}
	if len(alone) == 0 || rep.Present == 0 {
		t.Errorf("validator 4 did not sign through %s while %s was dead: %d signatures logged, %d commits with its precommit",
			standby.Name, active.Name, len(alone), rep.Present)
	} else {
		t.Logf("while %s was dead, kms-ha signed %d messages for validator 4, all requested by %s", active.Name, len(alone), standby.Name)
	}

	// Refusals, not dropped connections.
	audit, err := harness.ScanAudit(c.LogPaths()...)
	if err != nil {
		t.Fatal(err)
	}
	refusals := audit.RefusalsByReason(tn.ChainID)
	t.Logf("kms-ha answered validator 4's two nodes with: signed %s; refused %s",
		harness.FormatCounts(audit.Outcomes[tn.ChainID]), harness.FormatCounts(refusals))
	if refusals["conflict"]+refusals["regression"] == 0 {
		t.Errorf("no request was refused as a conflict or regression: the two nodes never asked for conflicting signatures, so the test proves nothing")
	}
	// The nodes' side of the refusals: each got the error as the answer to
	// its request (cometbft logs "failed signing ..." with kms-ha's
	// description), and none saw a conflicting vote of its own validator.
	nodeSaw := map[string]int{}
	for _, n := range tn.Nodes {
		checkNoConsensusFailure(t, n)
		data, err := os.ReadFile(n.Proc.LogPath)
		if err != nil {
			t.Fatal(err)
		}
		if i := strings.Index(string(data), "conflicting vote from ourselves"); i >= 0 {
			t.Errorf("%s saw a conflicting vote of its own validator: %s", n.Name, data[i:min(len(data), i+1000)])
		}
		for _, line := range strings.Split(string(data), "\n") {
			if strings.Contains(line, "failed signing") && strings.Contains(line, "kms-ha: refused to sign") {
				nodeSaw[n.Name]++
			}
		}
	}
	t.Logf("refusals received as signer errors: %v", nodeSaw)
	if nodeSaw[active.Name]+nodeSaw[standby.Name] == 0 {
		t.Errorf("neither node of validator 4 logged a refused signature")
	}
	checkConnections(t, audit, c, f, map[string]string{activeAddr: active.Name, standbyAddr: standby.Name},
		activeAddr, activeKilledAt, restartedAt)
}

// waitCaughtUpNode waits until n has started, is no further than two heights
// behind ref and is not catching up (block sync) any more.
func waitCaughtUpNode(ctx context.Context, n, ref *harness.CometNode, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if !n.Proc.Running() {
			return fmt.Errorf("%s exited (%v) while catching up", n.Name, n.Proc.ExitErr())
		}
		h, err := n.Height(ctx)
		rh, rerr := ref.Height(ctx)
		if err == nil && rerr == nil && h >= rh-2 && h > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s at height %d (err %v) did not catch up with %s at %d within %s", n.Name, h, err, ref.Name, rh, timeout)
		}
		if err := harness.Sleep(ctx, 200*time.Millisecond); err != nil {
			return err
		}
	}
}

// checkMostPrecommits checks the commits of heights from..to: validator
// key's precommit, where present, verifies and is in the audit log with the
// same bytes; and it is present in at least share of them.
func checkMostPrecommits(ctx context.Context, t *testing.T, n *harness.CometNode, key harness.ValidatorKey,
	recs []harness.SignRecord, from, to int64, share float64, what string,
) *harness.CommitReport {
	t.Helper()
	rep, err := n.CheckCommits(ctx, key, from, to, recs)
	if err != nil {
		t.Fatalf("%s: reading commits: %v", what, err)
	}
	total := int(to - from + 1)
	// Missing precommits are allowed here (the chain does not wait for this
	// validator); everything else CheckCommits reports is a failure.
	missing := rep.Missing
	rep.Missing = nil
	if err := rep.Err(); err != nil {
		t.Errorf("%s: %v", what, err)
	}
	rep.Missing = missing
	got := float64(rep.Present) / float64(total)
	t.Logf("%s: validator %X's precommit verified in %d of %d commits (%.0f%%, heights %d..%d), absent from %d; all of them in the audit log with the committed bytes",
		what, key.Address, rep.Present, total, 100*got, from, to, len(rep.Missing))
	if got < share {
		t.Errorf("%s: validator precommit in %.0f%% of commits, want at least %.0f%%; absent at %s",
			what, 100*got, 100*share, strings.Join(rep.Missing, "; "))
	}
	return rep
}

// checkConnections checks the validator connections in the kms-ha logs:
// each ends only because its kms-ha node stopped leading (reason "context
// done"), or because its cometbft node was dead (deadAddr, from deadAt
// until backAt); never because of a refusal. The leader elected in the
// failover serves both nodes, and the node at deadAddr again once it is
// back.
func checkConnections(t *testing.T, audit harness.AuditScan, c *harness.Cluster, f *harness.Failover,
	names map[string]string, deadAddr string, deadAt, backAt time.Time,
) {
	t.Helper()
	var unexplained []string
	connects := map[string]int{}
	ends := map[string]int{}
	newLeaderServes := map[string]bool{}
	servedAgain := false
	for _, e := range audit.Conns {
		name, ok := names[e.Addr]
		if !ok {
			unexplained = append(unexplained, "connection to an unknown address: "+e.String())
			continue
		}
		if !e.Ends() {
			connects[name]++
			if e.NodeID == f.NewLeader && e.Time.After(f.KilledAt) {
				newLeaderServes[name] = true
			}
			if e.Addr == deadAddr && e.Time.After(backAt) {
				servedAgain = true
			}
			continue
		}
		ends[name]++
		switch {
		case e.Msg == harness.MsgDisconnected && e.Reason == harness.ReasonContextDone:
		case e.Addr == deadAddr && !e.Time.Before(deadAt) && e.Time.Before(backAt):
		default:
			unexplained = append(unexplained, e.String())
		}
	}
	if len(unexplained) > 0 {
		t.Errorf("validator connections dropped while their kms-ha node led and their cometbft node ran:\n  %s", strings.Join(unexplained, "\n  "))
	}
	if !servedAgain {
		t.Errorf("%s was not served again after its restart", names[deadAddr])
	}
	for _, name := range names {
		if !newLeaderServes[name] {
			t.Errorf("new leader %s never connected to %s after the failover", f.NewLeader, name)
		}
	}
	terms := 0
	scan, err := c.Scan()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range scan.Events {
		if e.Msg == harness.MsgBecameLeader {
			terms++
		}
	}
	for addr, name := range names {
		allowed := terms
		if addr == deadAddr {
			allowed++ // its restart
		}
		if connects[name] > allowed {
			t.Errorf("%d connections to %s in %d leader terms: a connection was re-established within a term", connects[name], name, terms)
		}
	}
	t.Logf("validator connections over %d leader terms: connected %v, ended %v; every end explained by a leadership change or a killed node", terms, connects, ends)
}
