package cluster_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/pki"
)

// flooder keeps up to perTarget idle TCP connections open from one source
// address to each target, redialling the ones the server closes, as an
// attacker who wants to hold every handshake slot would. Redials share a
// rate limit so that the flood itself does not starve a loaded test
// machine of CPU.
type flooder struct {
	src     *net.TCPAddr
	stop    chan struct{}
	halting sync.Once
	wg      sync.WaitGroup
	mu      sync.Mutex
	open    map[net.Conn]time.Time
	target  map[net.Conn]string
	longest time.Duration // longest life of a connection the server closed
	dials   atomic.Int64
}

func startFlood(t *testing.T, src string, targets []string, perTarget int, redialEvery time.Duration) *flooder {
	t.Helper()
	f := &flooder{
		src:    &net.TCPAddr{IP: net.ParseIP(src)},
		stop:   make(chan struct{}),
		open:   map[net.Conn]time.Time{},
		target: map[net.Conn]string{},
	}
	for _, target := range targets {
		tokens := time.NewTicker(redialEvery)
		t.Cleanup(tokens.Stop)
		for i := 0; i < perTarget; i++ {
			f.wg.Add(1)
			go f.hold(target, tokens.C)
		}
	}
	return f
}

// hold keeps one connection to target open until stopped. Only the first
// dial of each goroutine skips the rate limit, so the flood is in place at
// once.
func (f *flooder) hold(target string, tokens <-chan time.Time) {
	defer f.wg.Done()
	d := net.Dialer{LocalAddr: f.src, Timeout: time.Second}
	first := true
	for {
		if !first {
			select {
			case <-tokens:
			case <-f.stop:
				return
			}
		}
		first = false
		// A select with a token and the stop both ready picks either: a
		// halted flood must not dial again (it did, and the new socket
		// counted as one the server failed to close).
		select {
		case <-f.stop:
			return
		default:
		}
		c, err := d.Dial("tcp", target)
		if err != nil {
			continue
		}
		f.dials.Add(1)
		opened := time.Now()
		f.mu.Lock()
		f.open[c] = opened
		f.target[c] = target
		f.mu.Unlock()
		// Nothing is ever written; a read returns when the server closes.
		io.Copy(io.Discard, c)
		f.mu.Lock()
		_, ours := f.open[c]
		delete(f.open, c)
		if life := time.Since(opened); ours && life > f.longest {
			f.longest = life
		}
		f.mu.Unlock()
		c.Close()
	}
}

// halt stops redialling; connections already open stay open.
func (f *flooder) halt() { f.halting.Do(func() { close(f.stop) }) }

func (f *flooder) stillOpen() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.open)
}

// closeAll closes the flood's remaining connections from the client side.
func (f *flooder) closeAll() {
	f.halt()
	f.mu.Lock()
	for c := range f.open {
		delete(f.open, c)
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func freePort(t *testing.T, host string) string {
	t.Helper()
	ln, err := net.Listen("tcp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestFailoverDuringHandshakeFlood floods the raft port of every node of a
// three-node cluster with idle sockets from one address (127.0.0.99),
// kills the leader during the flood, and expects the two others to elect
// a leader within a few election timeouts. The flood's sockets must be
// closed by the first-byte timeout, well before the handshake timeout.
func TestFailoverDuringHandshakeFlood(t *testing.T) {
	const election = 300 * time.Millisecond
	ca := newTLSCA(t)
	quietLog := slog.New(slog.DiscardHandler)
	var cfgs []cluster.Config
	var servers []cluster.Server
	var drops [3]atomic.Int64
	dir := t.TempDir()
	for i := range 3 {
		host := fmt.Sprintf("127.0.0.%d", i+1)
		id := fmt.Sprintf("n%d", i+1)
		srv, cli := ca.node(id, host)
		addr := freePort(t, host)
		cfgs = append(cfgs, cluster.Config{
			NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: addr, Logger: quietLog,
			HeartbeatTimeout: election, ElectionTimeout: election, LeaderLeaseTimeout: election / 2,
			TLS:              &cluster.TLS{Server: srv, Client: cli, PeerID: pki.PeerNodeID},
			OnHandshakeError: func(net.Addr, error) { drops[i].Add(1) },
		})
		servers = append(servers, cluster.Server{ID: id, Address: addr})
	}
	// Only n1 holds the configuration: it wins the first election alone, so
	// n2 and n3 have never dialled each other and the failover needs new
	// connections through the flood.
	if err := cluster.Bootstrap(cfgs[0], servers); err != nil {
		t.Fatal(err)
	}
	// n2 and n3 are as after `kms-ha join`: they accept the members named.
	for _, c := range cfgs[1:] {
		if err := cluster.MarkJoined(c, time.Second, []string{"n1", "n2", "n3"}); err != nil {
			t.Fatal(err)
		}
	}
	nodes := make([]*cluster.Node, 3)
	for i, c := range cfgs {
		n, err := cluster.Open(c, fsm.New())
		if err != nil {
			t.Fatal(err)
		}
		nodes[i] = n
		t.Cleanup(func() { n.Shutdown() })
	}
	waitFor(t, 10*time.Second, "n1 leads a replicated configuration", func() bool {
		if !nodes[0].IsLeader() {
			return false
		}
		want := nodes[0].Raft().LastIndex()
		return nodes[1].Raft().AppliedIndex() >= want && nodes[2].Raft().AppliedIndex() >= want
	})

	var targets []string
	for _, c := range cfgs {
		targets = append(targets, c.BindAddr)
	}
	flood := startFlood(t, "127.0.0.99", targets, 300, 5*time.Millisecond)
	t.Cleanup(flood.closeAll)
	// The flood is in place once every node has turned some of it away.
	waitFor(t, 10*time.Second, "every node drops part of the flood", func() bool {
		return drops[0].Load() > 0 && drops[1].Load() > 0 && drops[2].Load() > 0
	})

	killed := time.Now()
	if err := nodes[0].Shutdown(); err != nil {
		t.Fatal(err)
	}
	deadline := 10 * election
	waitFor(t, deadline, "a new leader during the flood", func() bool {
		return nodes[1].IsLeader() || nodes[2].IsLeader()
	})
	t.Logf("new leader %v after the leader was killed; the flood made %d connections; drops per node %d %d %d",
		time.Since(killed).Round(time.Millisecond), flood.dials.Load(), drops[0].Load(), drops[1].Load(), drops[2].Load())

	// Idle sockets that hold a handshake slot are closed by the first-byte
	// timeout (1 s by default), not the 5 s handshake timeout. The bound
	// leaves room for a loaded machine and still tells the two apart.
	flood.halt()
	held := flood.stillOpen()
	if held == 0 {
		t.Fatal("no flood socket was holding a handshake slot; the test floods nothing")
	}
	const closeBound = 4500 * time.Millisecond
	if !waitUntil(closeBound, func() bool { return flood.stillOpen() == 0 }) {
		flood.mu.Lock()
		per := map[string]int{}
		var oldest time.Duration
		for c, opened := range flood.open {
			per[flood.target[c]]++
			oldest = max(oldest, time.Since(opened))
		}
		flood.mu.Unlock()
		t.Fatalf("the server did not close every idle flood socket within %v: still open per target %v (oldest %v); targets %v",
			closeBound, per, oldest.Round(time.Millisecond), targets)
	}
	flood.mu.Lock()
	longest := flood.longest
	flood.mu.Unlock()
	if longest > closeBound {
		t.Errorf("a flood socket stayed open %v; want it closed after the first-byte timeout", longest)
	}
	t.Logf("%d idle flood sockets held slots when the flood stopped; the longest-lived flood socket lasted %v", held, longest.Round(time.Millisecond))
}

// waitFor polls cond until it holds or within passes.
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), within)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v", what, within)
		case <-tick.C:
		}
	}
}

// waitUntil polls cond until it holds (true) or within passes (false).
func waitUntil(within time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}
