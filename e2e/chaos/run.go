//go:build chaos

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// The kms-ha node whose Raft data lives on a small tmpfs, for the full-disk
// fault.
const diskNode = "node3"

// Fault is one scheduled fault; its target is resolved when it starts
// (the leader, or a follower), so a seed fixes the schedule, not who leads.
type Fault struct {
	Kind     string
	Leader   bool // target the leader; else a follower
	Follower int  // which follower, when not the leader
	Dur      time.Duration
	Delay    time.Duration
	Jitter   time.Duration
	Loss     float64
}

// Step is one or two faults applied together and healed together.
type Step struct{ Faults []Fault }

type kindWeight struct {
	kind string
	w    int
}

var kindWeights = []kindWeight{
	{"partition-leader", 2},   // leader | both followers (leader in the minority)
	{"partition-follower", 1}, // one follower | leader + other follower
	{"leader-validator", 1},   // leader | validator node, Raft intact
	{"one-way", 1},            // followers do not hear the leader; it hears them
	{"pause", 2},              // SIGSTOP .. SIGCONT
	{"kill", 2},               // SIGKILL .. restart
	{"latency", 1},            // proxy delay + jitter on every Raft link of a node
	{"loss", 1},               // random packet loss on a node's link (iptables statistic)
	{"disk-full", 1},          // node3's tmpfs data dir filled
	{"validator-restart", 1},  // the kms-ha validator's cometbft node SIGKILLed and restarted
	{"validator-latency", 1},  // proxy delay + jitter on the leader's privval link to val4
	{"p2p-latency", 1},        // proxy delay + jitter on every p2p link of val4
}

func pickKind(rng *rand.Rand, kinds []string) string {
	total := 0
	for _, k := range kindWeights {
		if kinds == nil || contains(kinds, k.kind) {
			total += k.w
		}
	}
	x := rng.IntN(total)
	for _, k := range kindWeights {
		if kinds != nil && !contains(kinds, k.kind) {
			continue
		}
		if x < k.w {
			return k.kind
		}
		x -= k.w
	}
	panic("unreachable")
}

// kindList is -kinds split, nil for every kind.
func (o options) kindList() []string {
	if o.kinds == "" {
		return nil
	}
	return strings.Split(o.kinds, ",")
}

// checkKinds refuses a -kinds value naming a fault the nemesis lacks.
func checkKinds(kinds []string) error {
	for _, k := range kinds {
		if !slices.ContainsFunc(kindWeights, func(w kindWeight) bool { return w.kind == k }) {
			var all []string
			for _, w := range kindWeights {
				all = append(all, w.kind)
			}
			return fmt.Errorf("unknown fault kind %q in -kinds (CHAOS_KINDS); the kinds are %s", k, strings.Join(all, ", "))
		}
	}
	return nil
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func newFault(rng *rand.Rand, kind string, leaderP float64) Fault {
	f := Fault{Kind: kind, Leader: rng.Float64() < leaderP, Follower: rng.IntN(2),
		Dur: time.Duration(2000+rng.IntN(3000)) * time.Millisecond}
	switch kind {
	case "leader-validator":
		// A link cut lasts: shorter than the validator's own 5 s wait on
		// its connection, no handover could ever help.
		f.Leader, f.Dur = true, 3*f.Dur
	case "partition-leader", "one-way":
		f.Leader = true
	case "partition-follower":
		f.Leader = false
	case "pause":
		f.Dur = time.Duration(1500+rng.IntN(2500)) * time.Millisecond
	case "validator-latency":
		f.Leader = true
		fallthrough
	case "latency", "p2p-latency":
		f.Delay = time.Duration(50+rng.IntN(250)) * time.Millisecond
		f.Jitter = f.Delay / 2
	case "loss":
		f.Loss = 0.1 + 0.3*rng.Float64()
	}
	return f
}

// Schedule draws every step from the seed before the run starts: from
// every kind with overlaps, or, with kinds, one fault of those at a time.
func Schedule(seed uint64, n int, kinds []string) []Step {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var steps []Step
	for i := 0; i < n; i++ {
		s := Step{Faults: []Fault{newFault(rng, pickKind(rng, kinds), 0.6)}}
		if kinds == nil && rng.Float64() < 0.2 {
			second := newFault(rng, pickKind(rng, []string{"pause", "kill", "latency", "loss"}), 0)
			second.Leader = false
			s.Faults = append(s.Faults, second)
		}
		steps = append(steps, s)
	}
	return steps
}

// Window is one step as it happened.
type Window struct {
	Step        int
	Label       string // per-type key: kind (role), or "overlap"
	Detail      string
	Start, Heal time.Time
	HeightStart int64
	HeightHeal  int64
	Online      bool // a signed block followed the heal within the limit
	// Figures from the blocks, after the run.
	Missed     int
	Recovery   time.Duration
	Recovered  bool
	NextSigned int64
	// Stall is the longest time without a new block from the fault's
	// start to the recovery: with kms-ha's validator critical, the chain
	// halts instead of missing blocks.
	Stall time.Duration
}

// Run is the inner process's state.
type Run struct {
	o          options
	topo       *Topology
	c          *harness.Cluster
	tn         *harness.Testnet
	proxy      *FaultProxy
	obs        *harness.CometNode // a validator that signs for itself; never faulted
	mon        *harness.ChainMonitor
	remoteAddr string
	start      time.Time
	windows    []*Window
	events     []string
	violations []string
	wmLast     map[string]harness.Watermark

	mu     sync.Mutex
	signed map[int64]bool // height -> kms-ha validator's precommit is in its commit
	blocks map[int64]*harness.Block
}

func runInner(o options) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	defer harness.KillAll()
	r := &Run{o: o, topo: newTopologyDesc(o.prefix), wmLast: map[string]harness.Watermark{},
		signed: map[int64]bool{}, blocks: map[int64]*harness.Block{}}
	if err := r.setup(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: setup:", err)
		r.tails()
		return 2
	}
	steps := Schedule(o.seed, o.faults, o.kindList())
	r.start = time.Now()
	for i, s := range steps {
		if ctx.Err() != nil {
			break
		}
		if err := r.step(ctx, i+1, s); err != nil {
			fmt.Fprintln(os.Stderr, "chaos:", err)
			break
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "chaos: interrupted")
		return 3
	}
	return r.finish(ctx)
}

func (r *Run) tails() {
	if r.c == nil {
		return
	}
	for _, p := range r.c.LogPaths() {
		fmt.Fprintf(os.Stderr, "end of %s:\n%s\n", p, r.c.LogTail(p, 15))
	}
}

func (r *Run) setup(ctx context.Context) error {
	powers := []int64{10, 10, 10, 10}
	if r.o.critical {
		powers = []int64{10, 10, 10, 20}
	}
	hostIP := func(name string) string { return r.topo.Host(name).IP }
	c, err := harness.New(ctx, harness.Config{
		Dir:      r.o.work,
		Bin:      harness.Binaries{KMSHA: r.o.kmsha, CometBFT: r.o.cometbft},
		Nodes:    3,
		Testnet:  &harness.TestnetOptions{ChainID: "chaos-testnet", Powers: powers, Remote: 4, Host: hostIP, TimeoutCommit: r.o.commit},
		Raft:     harness.RaftTimings{ValidatorHandoverAfter: r.o.handover},
		NodeHost: hostIP,
		Logf:     logf,
	})
	if err != nil {
		return err
	}
	r.c, r.tn = c, c.Testnet
	r.remoteAddr = r.tn.RemoteKey.Address.String()
	for _, n := range c.Nodes {
		n.Proc.NetNS = r.topo.Host(n.ID).NS
	}
	for _, n := range r.tn.Nodes {
		n.Proc.NetNS = r.topo.Host(n.Name).NS
	}
	r.obs = r.tn.Local[0]

	// Raft between kms-ha nodes goes through the fault proxy: node a's
	// connections to node b's Raft port are DNATed to a listener of the
	// pair in the router namespace (this process's namespace).
	r.proxy = newFaultProxy(logf)
	for ai, a := range c.Nodes {
		for bi, b := range c.Nodes {
			if a == b {
				continue
			}
			ha, hb := r.topo.Host(a.ID), r.topo.Host(b.ID)
			port := 20000 + 10*(ai+1) + (bi + 1)
			if err := r.proxy.Listen(fmt.Sprintf("%s:%d", ha.RouterIP, port), hb.IP+":7000", a.ID, b.ID); err != nil {
				return err
			}
			if err := run("iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-i", ha.Link, "-p", "tcp",
				"-d", hb.IP, "--dport", "7000", "-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", ha.RouterIP, port)); err != nil {
				return err
			}
		}
	}

	if err := r.proxyValidatorLinks(); err != nil {
		return err
	}

	// node3's Raft data on a 256 MiB tmpfs: room for raft-wal's
	// preallocated 64 MiB segments (the one in use and the next, made at
	// a rotation) and the snapshots, which a smaller one would refuse at
	// the first start. This process has a mount
	// namespace of its own (ip netns exec made it), so the mount is seen
	// only by it and the processes it starts, and goes away with them.
	dataDir := filepath.Join(c.Node(diskNode).Home, "raft")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	if ents, _ := os.ReadDir(dataDir); len(ents) > 0 {
		return fmt.Errorf("%s is not empty before the tmpfs mount", dataDir)
	}
	if err := syscall.Mount("tmpfs", dataDir, "tmpfs", 0, "size=256m,mode=0700"); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dataDir, err)
	}
	logf("%s: Raft data on a 256 MiB tmpfs at %s", diskNode, dataDir)

	if err := c.StartSigners(ctx); err != nil {
		return err
	}
	if err := r.tn.StartLocal(); err != nil {
		return err
	}
	if err := c.StartChain(ctx); err != nil {
		return err
	}
	r.mon = r.obs.Monitor(ctx, 100*time.Millisecond)
	if _, err := r.obs.WaitHeight(ctx, 5, 30*time.Second); err != nil {
		return err
	}
	logf("testnet %s runs: 4 validators, kms-ha holds val4 (%X), powers %v", r.tn.ChainID, r.tn.RemoteKey.Address, powers)
	return nil
}

// statuses asks every running node at once, with a short timeout: a
// paused or cut-off node must not stall the nemesis.
func (r *Run) statuses(ctx context.Context) map[string]*harness.Status {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var mu sync.Mutex
	out := map[string]*harness.Status{}
	var wg sync.WaitGroup
	for _, n := range r.c.Nodes {
		if !n.Proc.Running() {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s, err := n.Status(ctx); err == nil {
				mu.Lock()
				out[n.ID] = s
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

func (r *Run) leader(ctx context.Context) string {
	var best *harness.Status
	for _, s := range r.statuses(ctx) {
		if s.IsLeader() && (best == nil || s.Term > best.Term) {
			best = s
		}
	}
	if best == nil {
		return ""
	}
	return best.NodeID
}

func (r *Run) violation(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.violations = append(r.violations, msg)
	r.mu.Unlock()
	logf("!!! %s", msg)
}

func (r *Run) event(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	r.events = append(r.events, msg)
	r.mu.Unlock()
	logf("event: %s", msg)
}

func (r *Run) step(ctx context.Context, i int, s Step) error {
	leader := r.leader(ctx)
	if leader == "" {
		leader = "node1"
		r.event("step %d: no leader known at the start; treating node1 as leader", i)
	}
	var followers []string
	for _, n := range r.c.Nodes {
		if n.ID != leader {
			followers = append(followers, n.ID)
		}
	}
	w := &Window{Step: i}
	var heals []func()
	var details, labels []string
	used := map[string]bool{}
	var dur time.Duration
	h0, _ := r.obs.Height(ctx)
	w.HeightStart = h0
	w.Start = time.Now()
	for k, f := range s.Faults {
		target := leader
		if !f.Leader {
			target = followers[f.Follower%len(followers)]
		}
		if k > 0 && used[target] {
			for _, fl := range followers {
				if !used[fl] {
					target = fl
				}
			}
		}
		if f.Kind == "disk-full" {
			target = diskNode
		}
		if f.Kind == "validator-restart" || f.Kind == "p2p-latency" {
			target = "val4"
		}
		used[target] = true
		role := "follower"
		if target == leader {
			role = "leader"
		} else if target == "val4" {
			role = "validator"
		}
		d, heal, err := r.apply(f, target, leader)
		heals = append(heals, heal)
		if err != nil {
			all(heals)()
			return fmt.Errorf("step %d: %s on %s: %w", i, f.Kind, target, err)
		}
		details = append(details, d)
		labels = append(labels, fmt.Sprintf("%s (%s)", f.Kind, role))
		dur = max(dur, f.Dur)
	}
	w.Label = labels[0]
	if len(labels) > 1 {
		w.Label = "overlap: " + strings.Join(labels, " + ")
	}
	w.Detail = strings.Join(details, "; ")
	logf("step %d/%d: %s: %s (leader %s, height %d)", i, r.o.faults, w.Label, w.Detail, leader, h0)
	if err := harness.Sleep(ctx, dur); err != nil {
		all(heals)()
		return err
	}
	all(heals)()
	w.Heal = time.Now()
	w.HeightHeal, _ = r.obs.Height(ctx)
	r.windows = append(r.windows, w)
	w.Online = r.waitRecovery(ctx, w, 30*time.Second)
	r.sampleWatermarks(ctx, i)
	return harness.Sleep(ctx, time.Second)
}

// ensureRunning restarts any process that exited on its own (a crash on a
// full disk, a validator that gave up waiting for its signer) and records
// it.
func (r *Run) ensureRunning() {
	for _, n := range r.c.Nodes {
		if !n.Proc.Running() {
			r.event("%s had exited (%v); restarted. End of its log:\n%s", n.ID, n.Proc.ExitErr(), r.c.LogTail(n.Proc.LogPath, 5))
			_ = n.Proc.Start()
		}
	}
	for _, n := range r.tn.Nodes {
		if !n.Proc.Running() {
			r.event("%s (cometbft) had exited (%v); restarted. End of its log:\n%s", n.Name, n.Proc.ExitErr(), r.c.LogTail(n.Proc.LogPath, 5))
			_ = n.Proc.Start()
		}
	}
}

// waitRecovery waits for a block after the heal that carries the kms-ha
// validator's precommit.
func (r *Run) waitRecovery(ctx context.Context, w *Window, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	next := w.HeightHeal + 1
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r.ensureRunning()
		h, err := r.obs.Height(ctx)
		for err == nil && next < h {
			ok, ferr := r.signedAt(ctx, next)
			if ferr != nil {
				break
			}
			if ok {
				return true
			}
			next++
		}
		_ = harness.Sleep(ctx, 200*time.Millisecond)
	}
	r.event("step %d (%s): no block signed by kms-ha within %s of the heal", w.Step, w.Label, limit)
	return false
}

// signedAt reports whether the commit of height h (in block h+1) has the
// kms-ha validator's precommit for the block.
func (r *Run) signedAt(ctx context.Context, h int64) (bool, error) {
	r.mu.Lock()
	v, ok := r.signed[h]
	r.mu.Unlock()
	if ok {
		return v, nil
	}
	b, err := r.obs.Block(ctx, h+1)
	if err != nil {
		return false, err
	}
	signed := false
	for _, s := range b.LastCommit {
		if strings.EqualFold(s.ValidatorAddress, r.remoteAddr) && s.BlockIDFlag == harness.BlockIDFlagCommit {
			signed = true
		}
	}
	r.mu.Lock()
	r.signed[h] = signed
	r.blocks[h+1] = b
	r.mu.Unlock()
	return signed, nil
}

func hrsLess(a, b harness.Watermark) bool {
	if a.Height != b.Height {
		return a.Height < b.Height
	}
	if a.Round != b.Round {
		return a.Round < b.Round
	}
	return a.Step < b.Step
}

// sampleWatermarks checks that no node's watermark moved back since the
// previous sample.
func (r *Run) sampleWatermarks(ctx context.Context, step int) {
	for id, s := range r.statuses(ctx) {
		for _, wm := range s.Chains {
			key := id + "/" + wm.ChainID
			if last, ok := r.wmLast[key]; ok && hrsLess(wm, last) {
				r.violation("WATERMARK MOVED BACK on %s after step %d: %+v -> %+v (seed %d)", id, step, last, wm, r.o.seed)
			}
			r.wmLast[key] = wm
		}
	}
}

// windowAt returns the step whose window (start .. next step's start)
// holds t.
func (r *Run) windowAt(t time.Time) string {
	for i := len(r.windows) - 1; i >= 0; i-- {
		if !t.Before(r.windows[i].Start) {
			w := r.windows[i]
			return fmt.Sprintf("step %d (%s: %s)", w.Step, w.Label, w.Detail)
		}
	}
	return "before the first fault"
}

func sortedKeys[M ~map[string]V, V any](m M) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
