package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

// Start forms the signer cluster, then starts the chains. The order matters:
// cometbft gives up after waiting 3 s for a signer at startup.
func (c *Cluster) Start(ctx context.Context) error {
	if err := c.StartSigners(ctx); err != nil {
		return err
	}
	return c.StartChain(ctx)
}

// StartSigners bootstraps node1 alone, waits until it leads, then starts and
// joins the others through node1's Cluster API: the documented way to grow a
// cluster, so the test exercises it.
func (c *Cluster) StartSigners(ctx context.Context) error {
	first := c.Nodes[0]
	if err := first.Bootstrap(ctx); err != nil {
		return err
	}
	c.logf("%s: bootstrapped a one-node Raft cluster", first.ID)
	if err := c.startNode(first); err != nil {
		return err
	}
	st, err := c.waitStatus(ctx, first, 30*time.Second, "become leader", func(s *Status) bool { return s.IsLeader() })
	if err != nil {
		return err
	}
	c.logf("%s: is the Raft leader (term %d)", first.ID, st.Term)
	for _, n := range c.Nodes[1:] {
		if err := c.startNode(n); err != nil {
			return err
		}
		if err := c.join(ctx, n, first.APIAddr, 30*time.Second); err != nil {
			return err
		}
		c.logf("%s: joined the cluster through %s", n.ID, first.ID)
	}
	want := len(c.Nodes)
	for _, n := range c.Nodes {
		_, err := c.waitStatus(ctx, n, 30*time.Second, fmt.Sprintf("see %d voters and a leader", want),
			func(s *Status) bool { return s.Voters() == want && s.LeaderID != "" })
		if err != nil {
			return err
		}
	}
	c.logf("signer cluster formed: %d voters, leader %s", want, first.ID)
	return nil
}

func (c *Cluster) startNode(n *KMSNode) error {
	if err := n.Proc.Start(); err != nil {
		return err
	}
	c.logf("%s: started (pid %d), log %s", n.ID, n.Proc.PID(), n.Proc.LogPath)
	return nil
}

// join retries because the joining node's Raft transport may not be listening
// yet right after its start.
func (c *Cluster) join(ctx context.Context, n *KMSNode, api string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := n.Join(ctx, api)
		if err == nil {
			return nil
		}
		if !n.Proc.Running() {
			return fmt.Errorf("%s exited while joining: %v\n%s", n.ID, n.Proc.ExitErr(), c.LogTail(n.Proc.LogPath, 30))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s could not join via %s: %w", n.ID, api, err)
		}
		if err := Sleep(ctx, 500*time.Millisecond); err != nil {
			return err
		}
	}
}

// waitStatus polls n's status until ok holds. It gives up early when the
// node exits, quoting its log, because then waiting longer cannot help.
func (c *Cluster) waitStatus(ctx context.Context, n *KMSNode, timeout time.Duration, what string, ok func(*Status) bool) (*Status, error) {
	deadline := time.Now().Add(timeout)
	var last *Status
	var lastErr error
	for {
		if !n.Proc.Running() {
			return nil, fmt.Errorf("%s exited (%v) while waiting to %s; end of its log:\n%s",
				n.ID, n.Proc.ExitErr(), what, c.LogTail(n.Proc.LogPath, 30))
		}
		s, err := n.Status(ctx)
		if err == nil && ok(s) {
			return s, nil
		}
		if err == nil {
			last = s
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, fmt.Errorf("%s did not %s within %s (last status %+v, last error %v)", n.ID, what, timeout, last, lastErr)
		}
		if err := Sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// StartChain starts every chain's cometbft and waits for the first block of
// each. All are started before any is waited for: the leader dials each
// validator on its own schedule, and each must find its signer within 3 s.
func (c *Cluster) StartChain(ctx context.Context) error {
	for _, n := range c.Comets {
		if err := n.Proc.Start(); err != nil {
			return err
		}
		c.logf("%s: started (pid %d), log %s", n.Name, n.Proc.PID(), n.Proc.LogPath)
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, n := range c.Comets {
		for {
			if !n.Proc.Running() {
				return fmt.Errorf("%s exited (%v) before its first block; end of its log:\n%s",
					n.Name, n.Proc.ExitErr(), c.LogTail(n.Proc.LogPath, 30))
			}
			if h, err := n.Height(ctx); err == nil && h >= 1 {
				c.logf("%s: first block of chain %q committed", n.Name, n.ChainID)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s made no block within 60s; end of its log:\n%s", n.Name, c.LogTail(n.Proc.LogPath, 30))
			}
			if err := Sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// Node returns the node with the given id, or nil.
func (c *Cluster) Node(id string) *KMSNode {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}

// Statuses asks every running node for its status; nodes that do not answer
// are left out.
func (c *Cluster) Statuses(ctx context.Context) map[string]*Status {
	out := map[string]*Status{}
	for _, n := range c.Nodes {
		if !n.Proc.Running() {
			continue
		}
		if s, err := n.Status(ctx); err == nil {
			out[n.ID] = s
		}
	}
	return out
}

// ErrNoLeader means no running node claims leadership.
var ErrNoLeader = errors.New("no leader")

// Leader returns the running node that reports itself as leader. Asking each
// node about itself, rather than trusting one node's leader_id, avoids
// naming a node that already crashed. If two nodes claim leadership (an old
// leader that has not noticed yet), the higher term wins.
func (c *Cluster) Leader(ctx context.Context) (*KMSNode, *Status, error) {
	var best *Status
	for _, s := range c.Statuses(ctx) {
		if s.IsLeader() && (best == nil || s.Term > best.Term) {
			best = s
		}
	}
	if best == nil {
		return nil, nil, ErrNoLeader
	}
	return c.Node(best.NodeID), best, nil
}

// WaitLeader waits for a leader other than except ("" for any).
func (c *Cluster) WaitLeader(ctx context.Context, timeout time.Duration, except string) (*KMSNode, *Status, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, s, err := c.Leader(ctx)
		if err == nil && n != nil && n.ID != except {
			return n, s, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, nil, fmt.Errorf("no leader other than %q within %s", except, timeout)
		}
		if err := Sleep(ctx, 100*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}
}

// WaitCaughtUp waits until n is a follower of the current leader and has
// applied the log up to within maxLag entries of what the leader had
// committed just before.
func (c *Cluster) WaitCaughtUp(ctx context.Context, n *KMSNode, timeout time.Duration, maxLag uint64) (fol, lead *Status, err error) {
	deadline := time.Now().Add(timeout)
	why := ""
	lastNote := time.Now()
	for {
		if !n.Proc.Running() {
			return nil, nil, fmt.Errorf("%s exited (%v); end of its log:\n%s", n.ID, n.Proc.ExitErr(), c.LogTail(n.Proc.LogPath, 30))
		}
		// Leader first: the follower's applied index, read afterwards, must
		// reach the leader's earlier commit index, give or take maxLag.
		ln, ls, lerr := c.Leader(ctx)
		fs, ferr := n.Status(ctx)
		switch {
		case lerr != nil:
			why = lerr.Error()
		case ferr != nil:
			why = ferr.Error()
		case ln.ID == n.ID:
			why = n.ID + " is the leader"
		case fs.LeaderID != ln.ID:
			why = fmt.Sprintf("%s follows %q, leader is %s", n.ID, fs.LeaderID, ln.ID)
		case selfRole(fs) != "follower":
			why = fmt.Sprintf("%s reports role %q", n.ID, selfRole(fs))
		case fs.AppliedIndex == 0 || fs.AppliedIndex+maxLag < ls.CommitIndex:
			why = fmt.Sprintf("%s applied %d, leader committed %d", n.ID, fs.AppliedIndex, ls.CommitIndex)
		default:
			return fs, ls, nil
		}
		// Catching up normally takes about one block; say why it takes
		// longer, for whoever is watching.
		if time.Since(lastNote) > 5*time.Second {
			c.logf("%s: not caught up yet: %s", n.ID, why)
			lastNote = time.Now()
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return nil, nil, fmt.Errorf("%s did not catch up as a follower within %s: %s", n.ID, timeout, why)
		}
		if err := Sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, nil, err
		}
	}
}

func selfRole(s *Status) string {
	m, ok := s.Member(s.NodeID)
	if !ok {
		return "(not a member)"
	}
	return m.Role
}

// Failover is one measured leader crash. Its top-level height and timing
// fields are those of the first chain (Cluster.Comet); Chains has the same
// figures for every chain, the first one included.
type Failover struct {
	Killed       string
	NewLeader    string
	HeightAtKill int64 // last committed height when the leader was killed
	NextHeight   int64 // first height seen after the kill
	KilledAt     time.Time
	// NextBlock is the headline figure: SIGKILL of the leader until the next
	// committed height.
	NextBlock time.Duration
	// Elected is SIGKILL until the new leader logged "became leader"; zero
	// when the line was not found.
	Elected time.Duration
	// NextSigner signed the precommit of the first block after the kill; it
	// should be the new leader, otherwise the block was signed before the
	// kill and NextBlock understates the failover.
	NextSigner string
	// Chains are the per-chain figures, in Cluster.Comets order.
	Chains []ChainFailover
}

// ChainFailover is one chain's view of a leader crash.
type ChainFailover struct {
	ChainID      string
	HeightAtKill int64
	NextHeight   int64
	NextBlock    time.Duration
	NextSigner   string
}

// FailoverOptions tune KillLeader.
type FailoverOptions struct {
	// Stall fails the measurement when no block follows the kill in time.
	Stall time.Duration // default 20s
	// BeforeKill runs right before the SIGKILL, with the leader and the last
	// committed height, so the demo can announce the kill in order.
	BeforeKill func(leader *KMSNode, height int64)
}

// KillLeader crashes the current leader with SIGKILL and measures how long
// each chain takes to commit its next block. The kill is timed just after a
// block of the first chain commits, so that its next block needs signatures
// that the killed node cannot have given; the measurement is then the full
// failover. The other chains are wherever they are at that moment: their
// next block may already have been signed by the killed node, which their
// NextSigner then shows.
//
// One function so the failover measurement reads in the order it happens
// (over 80 lines for that reason).
func (c *Cluster) KillLeader(ctx context.Context, opt FailoverOptions) (*Failover, error) {
	if opt.Stall == 0 {
		opt.Stall = 20 * time.Second
	}
	leader, _, err := c.WaitLeader(ctx, 10*time.Second, "")
	if err != nil {
		return nil, err
	}
	h, err := c.Comet.Height(ctx)
	if err != nil {
		return nil, err
	}
	h0, err := c.waitHeightFast(ctx, c.Comet, h+1, opt.Stall)
	if err != nil {
		return nil, fmt.Errorf("before killing %s: %w", leader.ID, err)
	}
	if opt.BeforeKill != nil {
		opt.BeforeKill(leader, h0)
	}
	f := &Failover{Killed: leader.ID, HeightAtKill: h0, Chains: make([]ChainFailover, len(c.Comets))}
	for i, n := range c.Comets {
		f.Chains[i] = ChainFailover{ChainID: n.ChainID, HeightAtKill: h0}
		if i == 0 {
			continue
		}
		if f.Chains[i].HeightAtKill, err = n.Height(ctx); err != nil {
			return nil, fmt.Errorf("%s: before killing %s: %w", n.Name, leader.ID, err)
		}
	}
	f.KilledAt = time.Now()
	if err := leader.Proc.Kill(); err != nil {
		return nil, err
	}
	errs := make([]error, len(c.Comets))
	var wg sync.WaitGroup
	for i, n := range c.Comets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cf := &f.Chains[i]
			h1, err := c.waitHeightFast(ctx, n, cf.HeightAtKill+1, opt.Stall)
			if err != nil {
				errs[i] = fmt.Errorf("chain %s: after killing leader %s at height %d: %w", n.ChainID, leader.ID, cf.HeightAtKill, err)
				return
			}
			cf.NextHeight, cf.NextBlock = h1, time.Since(f.KilledAt)
		}()
	}
	wg.Wait()
	f.NextHeight, f.NextBlock = f.Chains[0].NextHeight, f.Chains[0].NextBlock
	if err := errors.Join(errs...); err != nil {
		return f, err
	}
	nl, _, err := c.WaitLeader(ctx, opt.Stall, leader.ID)
	if err != nil {
		return f, err
	}
	f.NewLeader = nl.ID
	// The signing node writes its log line around the time the block
	// commits; give it a moment before concluding it is missing.
	for deadline := time.Now().Add(2 * time.Second); ; {
		scan, _ := ScanLogs(c.LogPaths()...)
		signersKnown := true
		for i := range f.Chains {
			cf := &f.Chains[i]
			if cf.NextSigner == "" {
				cf.NextSigner, _, _ = PrecommitSigner(scan.Signed, cf.ChainID, cf.HeightAtKill+1)
			}
			signersKnown = signersKnown && cf.NextSigner != ""
		}
		f.NextSigner = f.Chains[0].NextSigner
		if f.Elected == 0 {
			for _, e := range scan.Events {
				if e.Msg == MsgBecameLeader && e.File == nl.Proc.LogPath && !e.Time.Before(f.KilledAt) {
					f.Elected = e.Time.Sub(f.KilledAt)
					break
				}
			}
		}
		if (signersKnown && f.Elected != 0) || time.Now().After(deadline) {
			break
		}
		if err := Sleep(ctx, 100*time.Millisecond); err != nil {
			return f, err
		}
	}
	return f, nil
}

// waitHeightFast polls more often than WaitHeight, because here the poll
// interval is part of the measurement.
func (c *Cluster) waitHeightFast(ctx context.Context, n *CometNode, target int64, stall time.Duration) (int64, error) {
	start := time.Now()
	for {
		if h, err := n.Height(ctx); err == nil && h >= target {
			return h, nil
		}
		if time.Since(start) > stall {
			return 0, fmt.Errorf("%w: height %d not reached within %s", ErrStalled, target, stall)
		}
		if !n.Proc.Running() {
			return 0, fmt.Errorf("%s exited (%v); end of its log:\n%s", n.Name, n.Proc.ExitErr(), c.LogTail(n.Proc.LogPath, 30))
		}
		if err := Sleep(ctx, 10*time.Millisecond); err != nil {
			return 0, err
		}
	}
}

// Restart starts a killed node again with the same home: it must rejoin as a
// follower from its own Raft state, without another join.
func (c *Cluster) Restart(n *KMSNode) error {
	return c.startNode(n)
}

// LogPaths are the kms-ha logs, whose signed lines the safety check reads.
func (c *Cluster) LogPaths() []string {
	var ps []string
	for _, n := range c.Nodes {
		ps = append(ps, n.Proc.LogPath)
	}
	return ps
}

// Scan parses every kms-ha log from the beginning.
func (c *Cluster) Scan() (Scan, error) { return ScanLogs(c.LogPaths()...) }

// Close SIGKILLs the chains first, so they stop asking for signatures, then
// every signer, then the testnet's validators that sign for themselves.
func (c *Cluster) Close() {
	for _, n := range c.Comets {
		if n != nil && n.Proc != nil {
			_ = n.Proc.Kill()
		}
	}
	for _, n := range c.Nodes {
		_ = n.Proc.Kill()
	}
	if c.Testnet != nil {
		c.Testnet.Close()
	}
}

// LogTail returns the last n lines of a log file, for error messages.
func (c *Cluster) LogTail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// Summary describes the signatures in the logs per node, for test output.
func Summary(recs []SignRecord) string {
	per := map[string]int{}
	var maxH int64
	for _, r := range recs {
		per[r.NodeID]++
		if r.Height > maxH {
			maxH = r.Height
		}
	}
	var ids []string
	for id := range per {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d signatures up to height %d:", len(recs), maxH)
	for _, id := range ids {
		fmt.Fprintf(&b, " %s=%d", id, per[id])
	}
	return b.String()
}

// Sleep waits for d, or less if ctx ends first (then it returns ctx's
// error).
func Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
