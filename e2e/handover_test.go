//go:build e2e

package e2e

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// cuttableLink stands for the network between one kms-ha node and the
// validator: the node dials the link's address, which relays to the
// validator's priv_validator_laddr. Cut, it delivers nothing either way and
// answers no new connection, as a dropped route would (neither side gets
// a FIN or a reset); healed, it delivers what it held.
type cuttableLink struct {
	ln     net.Listener
	target string
	cut    atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func newCuttableLink(t *testing.T, target string) *cuttableLink {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &cuttableLink{ln: ln, target: target}
	t.Cleanup(l.close)
	go l.serve()
	return l
}

func (l *cuttableLink) addr() string { return l.ln.Addr().String() }

func (l *cuttableLink) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		l.track(c)
		go func() {
			// A connection made while cut waits for the heal, as a
			// dial whose SYN is dropped does, until the dialler gives up.
			l.waitHealed()
			up, err := net.DialTimeout("tcp", l.target, 2*time.Second)
			if err != nil {
				c.Close()
				return
			}
			l.track(up)
			go l.pipe(up, c)
			go l.pipe(c, up)
		}()
	}
}

func (l *cuttableLink) track(c net.Conn) {
	l.mu.Lock()
	l.conns = append(l.conns, c)
	l.mu.Unlock()
}

func (l *cuttableLink) waitHealed() {
	for l.cut.Load() {
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *cuttableLink) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			l.waitHealed()
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			// A FIN crosses a cut link no better than data.
			l.waitHealed()
			return
		}
	}
}

func (l *cuttableLink) close() {
	l.ln.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
}

// TestLeaderCutOffFromItsValidatorHandsOver: each kms-ha node reaches the
// one validator through a link of its own, and the leader's link is cut
// while raft between the nodes is untouched. The leader hears nothing from
// the validator for cluster.validator_handover_after (5 s by default) and
// hands leadership to a follower, whose link works: the chain goes on
// while the cut lasts, signed by the new leader, and nothing is signed
// twice.
func TestLeaderCutOffFromItsValidatorHandsOver(t *testing.T) {
	requireBins(t)
	const (
		stall = 20 * time.Second
		// The cut lasts well beyond the handover wait plus the
		// validator's own 5 s wait on the dead connection.
		cutFor = 25 * time.Second
	)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	links := map[string]*cuttableLink{}
	c := newCluster(ctx, t, harness.Config{Nodes: 3,
		Setup: func(n *harness.KMSNode, chains []harness.ChainConfig) []harness.ChainConfig {
			l := newCuttableLink(t, chains[0].ValidatorAddr)
			links[n.ID] = l
			chains[0].Addrs = []string{"tcp://" + l.addr()}
			return chains
		}})
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mon := c.Comet.Monitor(ctx, 100*time.Millisecond)
	defer mon.Stop()
	if _, err := c.Comet.WaitHeight(ctx, 5, stall); err != nil {
		t.Fatal(err)
	}
	old, _, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	h0, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cutAt := time.Now()
	links[old.ID].cut.Store(true)
	t.Logf("cut %s (leader) off from the validator at height %d; raft intact", old.ID, h0)

	next, _, err := c.WaitLeader(ctx, 15*time.Second, old.ID)
	if err != nil {
		t.Fatalf("the leader cut off from its validator kept leadership: %v", err)
	}
	handedOver := time.Since(cutAt)
	h1, err := c.Comet.WaitHeight(ctx, h0+3, stall)
	if err != nil {
		t.Fatalf("the chain did not go on under %s while %s was cut off: %v", next.ID, old.ID, err)
	}
	resumed := time.Since(cutAt)
	if resumed >= cutFor {
		t.Fatalf("the chain went on only %s after the cut, after the %s cut healed", resumed, cutFor)
	}
	if signer := waitPrecommitSigner(ctx, c, c.Comet.ChainID, h1); signer != next.ID {
		t.Fatalf("height %d precommit signed by %q, want the new leader %s", h1, signer, next.ID)
	}
	t.Logf("%s led %s after the cut; height %d (3 blocks on) %s after the cut, signed by %s", next.ID, ms(handedOver), h1, ms(resumed), next.ID)
	if err := harness.Sleep(ctx, cutFor-time.Since(cutAt)); err != nil {
		t.Fatal(err)
	}
	links[old.ID].cut.Store(false)

	latest, err := c.Comet.Height(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if latest, err = c.Comet.WaitHeight(ctx, latest+5, stall); err != nil {
		t.Fatal(err)
	}
	if gap, after := mon.MaxGap(); gap > stall {
		t.Errorf("chain stalled for %s after height %d", gap.Round(time.Millisecond), after)
	} else {
		t.Logf("longest gap between blocks: %s (after height %d): the cost of the cut", ms(gap), after)
	}
	scan := checkSafety(ctx, t, c, chainEnd{c.Comet, latest})
	checkCommits(ctx, t, c.Comet, scan, latest)
}
