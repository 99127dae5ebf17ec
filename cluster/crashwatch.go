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
// own commit on a quorum. A false alarm (a live leader whose connections
// all closed and whose heartbeats all stalled) costs one election, as a
// heartbeat timeout would.

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
// transfers leadership to: become a candidate now.
func (t *authTransport) timeoutNow() error {
	resp := make(chan raft.RPCResponse, 1)
	rpc := raft.RPC{
		Command:  &raft.TimeoutNowRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax}},
		RespChan: resp,
	}
	select {
	case t.consume <- rpc:
	case <-t.ctx.Done():
		return raft.ErrTransportShutdown
	}
	select {
	case r := <-resp:
		return r.Error
	case <-t.ctx.Done():
		return raft.ErrTransportShutdown
	}
}

// watchLeaderCrash makes t report closed peers to n.
func (n *Node) watchLeaderCrash(t *authTransport) {
	fn := func(id string) { n.peerGone(t, id) }
	t.gone.Store(&fn)
}

// peerGone runs when the last raft connection from id closed. If id is
// this voter's leader, it waits out two of the leader's longest heartbeat
// intervals (raft sends one every tenth to fifth of the heartbeat timeout;
// a live leader whose connection broke redials for the next one) and
// starts an election if id sent nothing since and is still the leader.
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
		select {
		case <-time.After(time.Duration(rank+2) * n.cfg.HeartbeatTimeout / 5):
		case <-n.done:
			return
		}
		_, leader := n.raft.LeaderWithID()
		switch {
		case string(leader) != id, n.raft.State() != raft.Follower, n.raft.CurrentTerm() != term:
			return // an election already happened, or another leader spoke
		case n.raft.LastContact().After(since), t.openConns(id) > 0:
			return // the leader is alive: it reconnected
		}
		n.log.Warn("leader's raft connections closed and no heartbeat since: starting an election now",
			"leader", id, "silent_for", time.Since(since).Round(time.Millisecond))
		if err := t.timeoutNow(); err != nil {
			n.log.Warn("could not start an election; the heartbeat timeout will", "err", err)
		}
	}()
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
