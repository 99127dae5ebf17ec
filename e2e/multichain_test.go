//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// TestMultiChain runs one kms-ha cluster for two independent chains at once,
// as an operator running one cluster for several chains would: each chain has
// its own validator node and its own key, and every kms.yaml lists both. Both
// chains must keep going through a crash of the signing leader, and the
// audit log must attribute every signature to the right chain.
func TestMultiChain(t *testing.T) {
	requireBins(t)
	const (
		stall    = 20 * time.Second
		progress = 5 // heights each chain must add under the new leader
		maxLag   = 5
	)
	chainIDs := []string{"e2e-chain-a", "e2e-chain-b"}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	var opts []harness.CometOptions
	for _, id := range chainIDs {
		opts = append(opts, harness.CometOptions{ChainID: id})
	}
	c := newCluster(ctx, t, harness.Config{Nodes: 3, Chains: opts})

	// Distinct keys, or "verifies under its own chain's key" below would
	// prove nothing about kms-ha picking the right key.
	keys := map[string]harness.ValidatorKey{}
	for _, n := range c.Comets {
		k, err := harness.LoadValidatorKey(n.KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		for id, other := range keys {
			if bytes.Equal(k.Address, other.Address) {
				t.Fatalf("chains %s and %s have the same validator key %X", id, n.ChainID, k.Address)
			}
		}
		keys[n.ChainID] = k
		t.Logf("chain %s: validator %X, key %s, signer address %s", n.ChainID, k.Address, n.KeyFile, n.PrivvalAddr)
	}
	yaml, err := os.ReadFile(filepath.Join(c.Nodes[0].Home, "kms.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s kms.yaml:\n%s", c.Nodes[0].ID, yaml)

	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mons := map[string]*harness.ChainMonitor{}
	for _, n := range c.Comets {
		mons[n.ChainID] = n.Monitor(ctx, 100*time.Millisecond)
		defer mons[n.ChainID].Stop()
	}
	for _, n := range c.Comets {
		h, err := n.WaitHeight(ctx, 5, stall)
		if err != nil {
			t.Fatalf("chain %s: %v", n.ChainID, err)
		}
		t.Logf("chain %s at height %d, signed through the kms-ha cluster", n.ChainID, h)
	}

	f, err := c.KillLeader(ctx, harness.FailoverOptions{Stall: stall})
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	t.Logf("SIGKILL of leader %s; %s became leader after %s", f.Killed, f.NewLeader, ms(f.Elected))
	for _, cf := range f.Chains {
		t.Logf("chain %s: at height %d at the kill -> height %d committed %s later; that block's precommit signed by %s",
			cf.ChainID, cf.HeightAtKill, cf.NextHeight, ms(cf.NextBlock), orUnknown(cf.NextSigner))
	}
	for i, n := range c.Comets {
		target := f.Chains[i].HeightAtKill + progress
		if _, err := n.WaitHeight(ctx, target, stall); err != nil {
			t.Fatalf("chain %s did not go on under %s: %v", n.ChainID, f.NewLeader, err)
		}
		if signer := waitPrecommitSigner(ctx, c, n.ChainID, target); signer != f.NewLeader {
			t.Fatalf("chain %s: height %d precommit signed by %q, want new leader %s", n.ChainID, target, signer, f.NewLeader)
		}
		t.Logf("chain %s reached height %d under %s", n.ChainID, target, f.NewLeader)
	}

	killed := c.Node(f.Killed)
	if err := c.Restart(killed); err != nil {
		t.Fatal(err)
	}
	fs, ls, err := c.WaitCaughtUp(ctx, killed, 30*time.Second, maxLag)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s restarted and follows %s: applied index %d, leader commit index %d", killed.ID, fs.LeaderID, fs.AppliedIndex, ls.CommitIndex)

	// A few more blocks of each chain with the full cluster back, so that a
	// late conflicting signature from the restarted node would be logged.
	latest := map[string]int64{}
	for _, n := range c.Comets {
		h, err := n.Height(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if latest[n.ChainID], err = n.WaitHeight(ctx, h+3, stall); err != nil {
			t.Fatalf("chain %s: %v", n.ChainID, err)
		}
	}

	// Every member, the restarted one included, holds a watermark of each
	// chain: both are replicated through the same Raft log.
	for _, n := range c.Nodes {
		st, err := n.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for i, id := range chainIDs {
			var wm *harness.Watermark
			for j := range st.Chains {
				if st.Chains[j].ChainID == id {
					wm = &st.Chains[j]
				}
			}
			switch passed := f.Chains[i].HeightAtKill + progress; {
			case wm == nil:
				t.Errorf("%s: status lists no watermark of chain %s: %+v", n.ID, id, st.Chains)
			case wm.Height < passed:
				t.Errorf("%s: watermark of chain %s at height %d, chain passed %d", n.ID, id, wm.Height, passed)
			}
		}
		if len(st.Chains) != len(chainIDs) {
			t.Errorf("%s: status lists %d chains, want %d: %+v", n.ID, len(st.Chains), len(chainIDs), st.Chains)
		}
	}

	for _, n := range c.Comets {
		if gap, after := mons[n.ChainID].MaxGap(); gap > stall {
			t.Errorf("chain %s stalled for %s after height %d", n.ChainID, gap.Round(time.Millisecond), after)
		} else {
			t.Logf("chain %s: longest gap between blocks %s (after height %d)", n.ChainID, ms(gap), after)
		}
	}

	var ends []chainEnd
	for _, n := range c.Comets {
		ends = append(ends, chainEnd{n, latest[n.ChainID]})
	}
	scan := checkSafety(ctx, t, c, ends...)
	// Which chain ids each signed hash was logged under.
	loggedUnder := map[string]map[string]bool{}
	perChain := map[string]int{}
	for _, r := range scan.Signed {
		perChain[r.Chain]++
		if loggedUnder[r.SHA] == nil {
			loggedUnder[r.SHA] = map[string]bool{}
		}
		loggedUnder[r.SHA][r.Chain] = true
	}
	for id := range perChain {
		if !slices.Contains(chainIDs, id) {
			t.Errorf("audit log has %d signatures for chain %q, which is not configured", perChain[id], id)
		}
	}
	for _, n := range c.Comets {
		checkPrecommitsLogged(t, scan, n.ChainID, latest[n.ChainID], 1)
		// The commit check rebuilds each committed precommit's sign bytes
		// with this chain's id, verifies the signature under this chain's
		// key and finds the same hash logged under this chain's id.
		rep := checkCommits(ctx, t, n, scan, latest[n.ChainID])
		if rep.Present == 0 {
			t.Errorf("chain %s: no verified commit signature", n.ChainID)
		}
		// And under no other chain's id.
		var crossed []string
		for slot, sha := range rep.Hashes {
			for id := range loggedUnder[sha] {
				if id != n.ChainID {
					crossed = append(crossed, slot.String()+" also under "+id)
				}
			}
		}
		sort.Strings(crossed)
		if len(crossed) > 0 {
			t.Errorf("chain %s: committed precommits logged under another chain id: %s", n.ChainID, strings.Join(crossed, "; "))
		} else {
			t.Logf("chain %s: each of its %d committed precommits is logged under %s only", n.ChainID, len(rep.Hashes), n.ChainID)
		}
	}
}
