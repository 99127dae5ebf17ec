package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// ErrNotAMember is the refusal of a raft connection or RPC from a node that
// is not in this node's raft configuration.
var ErrNotAMember = errors.New("not a member of this cluster")

// ErrNotAVoter is the refusal of a raft RPC from a non-voter: only a
// leader or a candidate sends RPCs, and both are voters.
var ErrNotAVoter = errors.New("not a voter of this cluster")

// ErrRewritesHistory is the refusal of an append or snapshot that would
// replace entries this node has already applied: a correct leader never
// sends one, and accepting it could lower a watermark.
var ErrRewritesHistory = errors.New("would replace entries this node has applied")

// ErrWrongPeerID is the refusal of a raft RPC whose header names another
// node than the certificate of the connection it came on.
var ErrWrongPeerID = errors.New("raft RPC header names another node than the certificate")

// PeerIDFunc returns the node id in the verified certificate of a finished
// TLS handshake, or an error for a certificate that names no node (an
// operator's). Package node passes pki.PeerNodeID.
type PeerIDFunc func(tls.ConnectionState) (string, error)

// authTransport is the raft transport over the TLS stream layer, bound to
// membership. raft's NetworkTransport does not tell which connection an RPC
// came on, so each peer's inbound connections get a NetworkTransport of
// their own: every RPC then arrives labelled with the node id of the
// certificate it came with, and is refused unless that node is a member
// and the RPC's header names that same node. Outbound RPCs go through one
// NetworkTransport whose dials check that the peer reached is the member
// the configuration names at that address.
type authTransport struct {
	stream    raft.StreamLayer
	gate      *peerGate
	peerID    PeerIDFunc
	log       *slog.Logger
	onRefused func(err error)
	timeout   time.Duration
	// reached, if set, hears of each peer that answered an append.
	reached func(raft.ServerAddress)

	out     *raft.NetworkTransport
	consume chan raft.RPC
	hb      atomic.Pointer[func(raft.RPC)]

	// gone, if set, hears of a peer whose last inbound connection closed
	// (crashwatch.go).
	gone atomic.Pointer[func(id string)]

	mu     sync.Mutex
	peers  map[string]*inboundPeer
	dialed map[*dialedConn]struct{} // outbound connections, closed by Close
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	once   sync.Once
}

// inboundPeer is the NetworkTransport serving one node's connections.
type inboundPeer struct {
	id    string
	conns *connQueue
	trans *raft.NetworkTransport
	// open counts the peer's inbound connections not closed yet.
	open atomic.Int64
}

func newAuthTransport(stream raft.StreamLayer, gate *peerGate, peerID PeerIDFunc, log *slog.Logger,
	onRefused func(error),
) *authTransport {
	t := &authTransport{stream: stream, gate: gate, peerID: peerID, log: log, onRefused: onRefused,
		timeout: 2 * time.Second, consume: make(chan raft.RPC), peers: map[string]*inboundPeer{},
		dialed: map[*dialedConn]struct{}{}}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.out = raft.NewNetworkTransportWithLogger(&dialOnly{t: t, done: t.ctx.Done()}, 5, t.timeout,
		newHCLogAdapter(log.With("component", "raft-transport")))
	t.wg.Add(1)
	go t.acceptLoop()
	return t
}

func (t *authTransport) acceptLoop() {
	defer t.wg.Done()
	for {
		conn, err := t.stream.Accept()
		if err != nil {
			if t.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		id, err := t.identify(conn)
		if err == nil && !t.gate.allowed(id) {
			err = fmt.Errorf("node %s: %w", id, ErrNotAMember)
		}
		if err != nil {
			conn.Close()
			t.refused(fmt.Errorf("cluster: raft connection from %s refused: %w", conn.RemoteAddr(), err))
			continue
		}
		p := t.inbound(id)
		if p == nil {
			conn.Close()
			return
		}
		if tc := t.track(p, conn); !p.conns.put(tc) {
			tc.Close()
			return
		}
	}
}

func (t *authTransport) identify(conn net.Conn) (string, error) {
	tc, ok := conn.(*tls.Conn)
	if !ok {
		return "", errors.New("not a TLS connection")
	}
	id, err := t.peerID(tc.ConnectionState())
	if err != nil {
		return "", fmt.Errorf("only node certificates of members speak raft: %w", err)
	}
	return id, nil
}

func (t *authTransport) refused(err error) {
	if t.onRefused != nil {
		t.onRefused(err)
	}
}

// inbound returns the NetworkTransport for id's connections, starting it
// on first use.
func (t *authTransport) inbound(id string) *inboundPeer {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.peers[id]; ok {
		return p
	}
	if t.peers == nil {
		return nil // closed
	}
	p := &inboundPeer{id: id, conns: newConnQueue(t.stream.Addr(), t.ctx.Done())}
	p.trans = raft.NewNetworkTransportWithLogger(p.conns, 1, t.timeout,
		newHCLogAdapter(t.log.With("component", "raft-transport", "peer", id)))
	p.trans.SetHeartbeatHandler(func(rpc raft.RPC) { t.heartbeat(id, rpc) })
	t.peers[id] = p
	t.wg.Add(1)
	go t.serve(p)
	return p
}

// serve passes id's checked RPCs on to raft.
func (t *authTransport) serve(p *inboundPeer) {
	defer t.wg.Done()
	for {
		select {
		case rpc := <-p.trans.Consumer():
			if err := t.check(p.id, rpc); err != nil {
				rpc.Respond(nil, err)
				continue
			}
			select {
			case t.consume <- rpc:
			case <-t.ctx.Done():
				rpc.Respond(nil, raft.ErrTransportShutdown)
				return
			}
		case <-t.ctx.Done():
			return
		}
	}
}

func (t *authTransport) heartbeat(id string, rpc raft.RPC) {
	if err := t.check(id, rpc); err != nil {
		rpc.Respond(nil, err)
		return
	}
	if fn := t.hb.Load(); fn != nil {
		(*fn)(rpc)
		return
	}
	select {
	case t.consume <- rpc:
	case <-t.ctx.Done():
		rpc.Respond(nil, raft.ErrTransportShutdown)
	}
}

// check refuses an RPC from a node that is not a member (now: it may
// have been removed since it connected) or whose header claims to be
// another node: raft believes the header, so a member could otherwise
// vote or lead in another's name.
func (t *authTransport) check(id string, rpc raft.RPC) error {
	h, ok := rpc.Command.(raft.WithRPCHeader)
	if !ok {
		return fmt.Errorf("cluster: raft RPC %T from node %s has no header", rpc.Command, id)
	}
	var err error
	if got := string(h.GetRPCHeader().ID); got != id {
		err = fmt.Errorf("cluster: raft %s from node %s claims to come from %q: %w", rpcName(rpc), id, got, ErrWrongPeerID)
	} else if !t.gate.allowed(id) {
		err = fmt.Errorf("cluster: raft %s from node %s: %w", rpcName(rpc), id, ErrNotAMember)
	} else if t.gate.nonvoter(id) && !t.gate.isVouched(id) {
		// Every raft RPC is sent by a leader or a candidate: a voter. (A
		// stale configuration may still call a promoted leader a
		// non-voter: the voters this node knows vouch for it then.)
		err = fmt.Errorf("cluster: raft %s from node %s, which is not a voter: %w", rpcName(rpc), id, ErrNotAVoter)
	} else if g := t.gate.history.Load(); g != nil {
		err = (*g)(rpc.Command)
	}
	if err != nil {
		t.refused(err)
	}
	return err
}

func rpcName(rpc raft.RPC) string {
	switch rpc.Command.(type) {
	case *raft.AppendEntriesRequest:
		return "AppendEntries"
	case *raft.RequestVoteRequest:
		return "RequestVote"
	case *raft.RequestPreVoteRequest:
		return "RequestPreVote"
	case *raft.InstallSnapshotRequest:
		return "InstallSnapshot"
	case *raft.TimeoutNowRequest:
		return "TimeoutNow"
	}
	return fmt.Sprintf("%T", rpc.Command)
}

// dial connects to a peer for an outbound RPC and checks that the node
// answering is the member raft meant to reach: a node that holds a valid
// certificate for that host but is not that member must not answer votes
// or appends in its place.
func (t *authTransport) dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	conn, err := t.stream.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	id, err := t.identify(conn)
	if err == nil {
		if want, ok := t.gate.idAt(string(addr)); ok && want != id {
			err = fmt.Errorf("node %s answers at %s, where the configuration has %s: %w", id, addr, want, ErrWrongPeerID)
		} else if !ok && !t.gate.allowed(id) {
			err = fmt.Errorf("node %s: %w", id, ErrNotAMember)
		}
	}
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("cluster: raft dial %s: %w", addr, err)
	}
	return t.keepDialed(conn)
}

func (t *authTransport) Consumer() <-chan raft.RPC             { return t.consume }
func (t *authTransport) LocalAddr() raft.ServerAddress         { return t.out.LocalAddr() }
func (t *authTransport) SetHeartbeatHandler(cb func(raft.RPC)) { t.hb.Store(&cb) }

func (t *authTransport) AppendEntriesPipeline(id raft.ServerID, target raft.ServerAddress) (raft.AppendPipeline, error) {
	return t.out.AppendEntriesPipeline(id, target)
}

func (t *authTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := t.out.AppendEntries(id, target, args, resp)
	if err == nil && t.reached != nil {
		t.reached(target)
	}
	return err
}

func (t *authTransport) RequestVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestVoteRequest, resp *raft.RequestVoteResponse) error {
	return t.out.RequestVote(id, target, args, resp)
}

func (t *authTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	return t.out.RequestPreVote(id, target, args, resp)
}

func (t *authTransport) InstallSnapshot(id raft.ServerID, target raft.ServerAddress, args *raft.InstallSnapshotRequest, resp *raft.InstallSnapshotResponse, data io.Reader) error {
	return t.out.InstallSnapshot(id, target, args, resp, data)
}

func (t *authTransport) TimeoutNow(id raft.ServerID, target raft.ServerAddress, args *raft.TimeoutNowRequest, resp *raft.TimeoutNowResponse) error {
	return t.out.TimeoutNow(id, target, args, resp)
}

func (t *authTransport) EncodePeer(id raft.ServerID, addr raft.ServerAddress) []byte {
	return t.out.EncodePeer(id, addr)
}

func (t *authTransport) DecodePeer(b []byte) raft.ServerAddress { return t.out.DecodePeer(b) }

// Close stops accepting, closes every inbound transport and the outbound
// one, and the stream layer under them.
func (t *authTransport) Close() error {
	var err error
	t.once.Do(func() {
		t.cancel()
		err = t.stream.Close()
		t.out.Close()
		t.closeDialed()
		t.mu.Lock()
		peers := t.peers
		t.peers = nil // inbound makes no more after Close
		t.mu.Unlock()
		for _, p := range peers {
			p.trans.CloseStreams()
			p.trans.Close()
		}
		t.wg.Wait()
	})
	return err
}

// connQueue is the stream layer of one peer's inbound NetworkTransport:
// Accept yields the connections the accept loop identified as that peer's.
type connQueue struct {
	ch   chan net.Conn
	addr net.Addr
	done <-chan struct{}
	stop chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr, done <-chan struct{}) *connQueue {
	return &connQueue{ch: make(chan net.Conn), addr: addr, done: done, stop: make(chan struct{})}
}

func (q *connQueue) put(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	case <-q.stop:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	case <-q.stop:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error   { q.once.Do(func() { close(q.stop) }); return nil }
func (q *connQueue) Addr() net.Addr { return q.addr }

func (q *connQueue) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	return nil, errors.New("cluster: an inbound raft transport never dials")
}

// dialOnly is the stream layer of the outbound NetworkTransport: inbound
// connections reach raft through the accept loop instead.
type dialOnly struct {
	t    *authTransport
	done <-chan struct{}
}

func (d *dialOnly) Accept() (net.Conn, error) {
	<-d.done
	return nil, net.ErrClosed
}

func (d *dialOnly) Close() error   { return nil }
func (d *dialOnly) Addr() net.Addr { return d.t.stream.Addr() }

func (d *dialOnly) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return d.t.dial(addr, timeout)
}

// rewritesApplied refuses an append that would replace an entry this node
// has applied with one of another term, and a snapshot behind what it has
// applied. A correct leader never sends either (Raft's leader
// completeness: committed entries are never overwritten), so one that does
// is faulty or hostile, and obeying it could bring back lower watermarks
// at the next restart.
func (n *Node) rewritesApplied(cmd any) error {
	applied := n.applied.index.Load()
	switch c := cmd.(type) {
	case *raft.AppendEntriesRequest:
		for _, e := range c.Entries {
			if e.Index > applied {
				break
			}
			var l raft.Log
			if err := n.st.logs.GetLog(e.Index, &l); err == nil && l.Term != e.Term {
				return fmt.Errorf("cluster: raft AppendEntries would replace applied entry %d of term %d with one of term %d: %w",
					e.Index, l.Term, e.Term, ErrRewritesHistory)
			}
		}
	case *raft.InstallSnapshotRequest:
		if c.LastLogIndex < applied {
			return fmt.Errorf("cluster: raft InstallSnapshot at index %d is behind the applied index %d: %w",
				c.LastLogIndex, applied, ErrRewritesHistory)
		}
	}
	return nil
}
