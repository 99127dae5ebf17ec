//go:build chaos

package main

import (
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"
)

// LinkState is what the proxy does to the bytes flowing from one host to
// another: hold them (a one-way blackhole, healed by delivering what was
// held, as TCP retransmission would) or delay them.
type LinkState struct {
	Blocked bool
	Delay   time.Duration
	Jitter  time.Duration
}

// FaultProxy relays Raft traffic between kms-ha nodes inside the router
// namespace, one listener per ordered pair (the dialer's connections to
// the peer's Raft port are DNATed to it), and applies per-direction link
// states to both directions of every connection.
type FaultProxy struct {
	mu    sync.Mutex
	links map[[2]string]LinkState
	rng   *rand.Rand
	lns   []net.Listener
	logf  func(string, ...any)
}

func newFaultProxy(logf func(string, ...any)) *FaultProxy {
	return &FaultProxy{links: map[[2]string]LinkState{}, rng: rand.New(rand.NewPCG(1, 2)), logf: logf}
}

// Update changes the state of the direction from -> to.
func (p *FaultProxy) Update(from, to string, f func(*LinkState)) {
	p.mu.Lock()
	s := p.links[[2]string{from, to}]
	f(&s)
	p.links[[2]string{from, to}] = s
	p.mu.Unlock()
}

func (p *FaultProxy) state(from, to string) LinkState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.links[[2]string{from, to}]
}

func (p *FaultProxy) jitter(j time.Duration) time.Duration {
	if j <= 0 {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return time.Duration(p.rng.Int64N(int64(j)))
}

// Listen relays connections accepted on listen to target, as traffic
// from host "from" to host "to".
func (p *FaultProxy) Listen(listen, target, from, to string) error {
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("fault proxy %s->%s: %w", from, to, err)
	}
	p.lns = append(p.lns, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.relay(c, target, from, to)
		}
	}()
	return nil
}

func (p *FaultProxy) relay(client net.Conn, target, from, to string) {
	server, err := net.DialTimeout("tcp", target, 3*time.Second)
	if err != nil {
		client.Close()
		return
	}
	var once sync.Once
	closeBoth := func() { once.Do(func() { client.Close(); server.Close() }) }
	go p.pipe(server, client, from, to, closeBoth)
	go p.pipe(client, server, to, from, closeBoth)
}

type chunk struct {
	data []byte
	due  time.Time
}

// pipe copies src to dst, bytes travelling from -> to.
func (p *FaultProxy) pipe(dst, src net.Conn, from, to string, closeBoth func()) {
	q := make(chan chunk, 4096)
	go func() {
		defer closeBoth()
		for c := range q {
			for {
				st := p.state(from, to)
				if !st.Blocked {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if d := time.Until(c.due); d > 0 {
				time.Sleep(d)
			}
			if _, err := dst.Write(c.data); err != nil {
				closeBoth()
				for range q {
				}
				return
			}
		}
	}()
	var last time.Time
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			st := p.state(from, to)
			due := time.Now().Add(st.Delay + p.jitter(st.Jitter))
			if due.Before(last) { // keep the byte order of the stream
				due = last
			}
			last = due
			q <- chunk{data: append([]byte(nil), buf[:n]...), due: due}
		}
		if err != nil {
			close(q)
			closeBoth()
			return
		}
	}
}

// Close stops accepting; open relays end with their connections.
func (p *FaultProxy) Close() {
	for _, ln := range p.lns {
		ln.Close()
	}
}

// proxyPair relays from's connections to to's address at port through a
// proxy listener on the router's side of from's link (DNAT), so that the
// link from -> to can be delayed or held.
func (r *Run) proxyPair(from, to string, port, listenPort int) error {
	hf, ht := r.topo.Host(from), r.topo.Host(to)
	listen := fmt.Sprintf("%s:%d", hf.RouterIP, listenPort)
	if err := r.proxy.Listen(listen, fmt.Sprintf("%s:%d", ht.IP, port), from, to); err != nil {
		return err
	}
	return run("iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-i", hf.Link, "-p", "tcp",
		"-d", ht.IP, "--dport", strconv.Itoa(port), "-j", "DNAT", "--to-destination", listen)
}

// proxyValidatorLinks puts the kms-ha nodes' privval connections to val4
// and every validator's p2p connections through the proxy, for latency on
// those links (the kernel has no netem). The proxy dials the target from
// the router's address; allow_duplicate_ip is on in the testnet, so
// CometBFT accepts several peers behind that one address.
func (r *Run) proxyValidatorLinks() error {
	portOf := func(addr string) (int, error) {
		_, p, err := net.SplitHostPort(addr)
		if err != nil {
			return 0, err
		}
		return strconv.Atoi(p)
	}
	val4 := r.tn.Remote[0]
	pv, err := portOf(val4.PrivvalAddr)
	if err != nil {
		return fmt.Errorf("val4 privval address %q: %w", val4.PrivvalAddr, err)
	}
	for i, n := range r.c.Nodes {
		if err := r.proxyPair(n.ID, val4.Name, pv, 21000+i+1); err != nil {
			return err
		}
	}
	for i, a := range r.tn.Nodes {
		for j, b := range r.tn.Nodes {
			if i == j {
				continue
			}
			pp, err := portOf(b.P2PAddr)
			if err != nil {
				return fmt.Errorf("%s p2p address %q: %w", b.Name, b.P2PAddr, err)
			}
			if err := r.proxyPair(a.Name, b.Name, pp, 22000+10*(i+1)+(j+1)); err != nil {
				return err
			}
		}
	}
	return nil
}
