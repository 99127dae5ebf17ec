package cluster

import (
	"net"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// A leader whose process dies (a crash, an OOM kill, SIGKILL) leaves its
// followers with every raft connection it opened to them closed by its
// kernel, at once. Waiting for the heartbeat timeout on top of that costs
// a failover one to three heartbeat timeouts, because raft's pre-vote and
// leader stickiness refuse a candidate until a quorum of followers has
// timed out by itself. So a follower that sees the last connection from
// its leader close, and hears nothing from it for two of the leader's
// heartbeat intervals, starts an election at once, as raft's own leadership
// transfer does (TimeoutNow: no pre-vote, and voters set their leader
// aside). The heartbeat timeout is then free to be long enough to ride out
// a busy machine, and still covers the failures that close no connection
// (a host gone, a partition).
//
// Only when an election starts changes here, never what it decides: a vote
// still goes only to a candidate whose log holds every committed entry, so
// the new leader holds every watermark, and a signature still waits for its
// own commit on a quorum. TimeoutNow skips pre-vote and makes the other
// voters set their live leader aside, so a false alarm deposes a leader
// even when only its link to this follower broke (a firewall REJECT, a
// conntrack flush) and it still holds a quorum. Hence the limits: a node
// stands once per silent leader and term and at most once per ten
// election timeouts, so a flapping link costs one election per window; it
// re-checks right before handing raft the request that it is still that
// leader's follower in the same term; and a follower whose turn comes
// gives it up only for a known other leader or a sign of life, not for a
// higher term alone (a lagging follower that stood first and lost leaves
// one, with no leader).

// trackedConn counts an inbound connection as open until it is closed.
type trackedConn struct {
	net.Conn
	once   sync.Once
	closed func()
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.closed)
	return err
}

// track counts conn among p's open connections and reports p gone when
// the last one closes.
func (t *authTransport) track(p *inboundPeer, conn net.Conn) net.Conn {
	p.open.Add(1)
	return &trackedConn{Conn: conn, closed: func() {
		if p.open.Add(-1) == 0 {
			if fn := t.gone.Load(); fn != nil {
				(*fn)(p.id)
			}
		}
	}}
}

// dialedConn is an outbound connection, which Close closes: raft's
// NetworkTransport keeps pooled connections open after its own Close, so
// without this a node that stops leaves its peers connected to nothing
// they can tell from a live leader.
type dialedConn struct {
	net.Conn
	t    *authTransport
	once sync.Once
}

func (c *dialedConn) Close() error {
	c.once.Do(func() {
		c.t.mu.Lock()
		delete(c.t.dialed, c)
		c.t.mu.Unlock()
	})
	return c.Conn.Close()
}

// keepDialed records conn for Close, or closes it if Close already ran.
func (t *authTransport) keepDialed(conn net.Conn) (net.Conn, error) {
	c := &dialedConn{Conn: conn, t: t}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.dialed == nil {
		conn.Close()
		return nil, raft.ErrTransportShutdown
	}
	t.dialed[c] = struct{}{}
	return c, nil
}

// closeDialed closes every outbound connection; no more are kept.
func (t *authTransport) closeDialed() {
	t.mu.Lock()
	cs := t.dialed
	t.dialed = nil
	t.mu.Unlock()
	for c := range cs {
		c.Conn.Close()
	}
}

// openConns is how many inbound connections from id are open.
func (t *authTransport) openConns(id string) int64 {
	t.mu.Lock()
	p := t.peers[id]
	t.mu.Unlock()
	if p == nil {
		return 0
	}
	return p.open.Load()
}

// timeoutNow hands raft the request a leader sends to the follower it
// transfers leadership to: become a candidate now. raft obeys it in any
// state, so it is handed over only while still() holds, checked right
// before each try, and only if raft's loop is waiting for an RPC at that
// very moment: a node that went from follower to leader in between (a
// vote round trip) must not step down for it. It gives up after within.
func (t *authTransport) timeoutNow(still func() bool, within time.Duration) (sent bool, err error) {
	resp := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{
		Command:  &raft.TimeoutNowRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax}},
		RespChan: resp,
	}
	for deadline := time.Now().Add(within); ; time.Sleep(time.Millisecond) {
		if !still() || time.Now().After(deadline) {
			return false, nil
		}
		select {
		case <-t.ctx.Done():
			return false, raft.ErrTransportShutdown
		case t.consume <- rpc:
		default:
			continue // raft is busy; look again before the next try
		}
		select {
		case r := <-resp:
			return true, r.Error
		case <-t.ctx.Done():
			return true, raft.ErrTransportShutdown
		}
	}
}

// watchLeaderCrash makes t report closed peers to n.
func (n *Node) watchLeaderCrash(t *authTransport) {
	fn := func(id string) { n.peerGone(t, id) }
	t.gone.Store(&fn)
}

// standEvery is how many election timeouts apart this node stands at
// most: a link to the leader that flaps costs one election per window.
const standEvery = 10

// peerGone runs when the last raft connection from id closed. If id is
// this voter's leader, it waits out two of the leader's longest heartbeat
// intervals (raft sends one every tenth to fifth of the heartbeat timeout;
// a live leader whose connection broke redials for the next one) and
// starts an election if id sent nothing since and no other leader is known.
// The followers take turns, one such interval apart in the order of their
// ids: two that stood at once would split the vote and leave the election
// to the election timeout.
func (n *Node) peerGone(t *authTransport, id string) {
	if _, leader := n.raft.LeaderWithID(); string(leader) != id || n.raft.State() != raft.Follower {
		return
	}
	term, since := n.raft.CurrentTerm(), time.Now()
	go func() {
		rank, ok := n.voterRank(id)
		if !ok {
			return
		}
		interval := n.cfg.HeartbeatTimeout / 5
		select {
		case <-time.After(time.Duration(rank+2) * interval):
		case <-n.done:
			return
		}
		n.standFor(t, id, term, since, interval)
	}()
}

// standFor starts an election if leader id of term, silent since since,
// still looks dead and this node has not stood lately.
func (n *Node) standFor(t *authTransport, id string, term uint64, since time.Time, within time.Duration) {
	now, view := n.raft.CurrentTerm(), n.watchView(t, id)
	if !shouldStand(view, id, since) {
		return
	}
	if !n.stood.take(id, term, standEvery*n.cfg.ElectionTimeout, time.Now()) {
		n.log.Warn("leader's raft connections closed again; leaving it to the heartbeat timeout, this node stood lately",
			"leader", id)
		return
	}
	still := func() bool {
		v := n.watchView(t, id)
		return shouldStand(v, id, since) && v.leader == view.leader && n.raft.CurrentTerm() == now
	}
	n.log.Warn("leader's raft connections closed and no heartbeat since: starting an election now",
		"leader", id, "silent_for", time.Since(since).Round(time.Millisecond))
	if sent, err := t.timeoutNow(still, within); err != nil || !sent {
		n.log.Warn("did not start an election; the heartbeat timeout will", "err", err)
	}
}

// watchView is what the crash watch decides on.
type watchView struct {
	state   raft.RaftState
	leader  string // this node's leader; "" when it knows none
	contact time.Time
	open    int64 // inbound raft connections from the silent leader
}

func (n *Node) watchView(t *authTransport, id string) watchView {
	_, leader := n.raft.LeaderWithID()
	return watchView{state: n.raft.State(), leader: string(leader), contact: n.raft.LastContact(), open: t.openConns(id)}
}

// shouldStand reports whether a follower should stand now for leader id,
// silent since since. A term change alone is no reason to give up: a
// lagging follower that stood first and lost raised the term and left no
// leader, and this one must then stand. A known other leader, a heartbeat,
// a reconnection, or a vote granted (raft counts it as contact) are.
func shouldStand(v watchView, id string, since time.Time) bool {
	switch {
	case v.state != raft.Follower:
		return false // this node is already a candidate or the leader
	case v.leader != "" && v.leader != id:
		return false // another node leads
	case v.contact.After(since), v.open > 0:
		return false // the leader is alive, or a candidate got this node's vote
	}
	return true
}

// standLimit lets a node stand once per silent leader and term, and at
// most once per window.
type standLimit struct {
	mu     sync.Mutex
	leader string
	term   uint64
	at     time.Time
}

// take reports whether the node may stand for leader of term at now, and
// if so records it.
func (l *standLimit) take(leader string, term uint64, window time.Duration, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.at.IsZero() && (leader == l.leader && term == l.term || now.Sub(l.at) < window) {
		return false
	}
	l.leader, l.term, l.at = leader, term, now
	return true
}

// voterRank is this node's place among the voters other than leader, in
// the order of their ids; ok is false for a non-voter, which must never
// stand for election.
func (n *Node) voterRank(leader string) (rank int, ok bool) {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0, false
	}
	var ids []string
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter && string(s.ID) != leader {
			ids = append(ids, string(s.ID))
		}
	}
	slices.Sort(ids)
	rank = slices.Index(ids, n.cfg.NodeID)
	return rank, rank >= 0
}
