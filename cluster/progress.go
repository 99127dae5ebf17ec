package cluster

import (
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// observedTransport records, from the answers to this node's own appends
// (heartbeats included), how far each follower's log reaches. The leader
// promotes a non-voter on what it observed over raft itself, never on what
// the node says of itself through its API.
type observedTransport struct {
	raft.Transport
	mu   sync.Mutex
	last map[raft.ServerID]progress
}

type progress struct {
	index uint64
	at    time.Time
}

func observe(t raft.Transport) *observedTransport {
	return &observedTransport{Transport: t, last: map[raft.ServerID]progress{}}
}

func (o *observedTransport) AppendEntries(id raft.ServerID, target raft.ServerAddress, args *raft.AppendEntriesRequest, resp *raft.AppendEntriesResponse) error {
	err := o.Transport.AppendEntries(id, target, args, resp)
	if err == nil && resp.Term == args.Term {
		o.mu.Lock()
		o.last[id] = progress{index: resp.LastLog, at: time.Now()}
		o.mu.Unlock()
	}
	return err
}

// lastLog returns the last log index id reported in answer to this node's
// appends within maxAge, and whether there is one.
func (o *observedTransport) lastLog(id raft.ServerID, maxAge time.Duration) (uint64, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p, ok := o.last[id]
	if !ok || time.Since(p.at) > maxAge {
		return 0, false
	}
	return p.index, true
}

func (o *observedTransport) RequestPreVote(id raft.ServerID, target raft.ServerAddress, args *raft.RequestPreVoteRequest, resp *raft.RequestPreVoteResponse) error {
	if pv, ok := o.Transport.(raft.WithPreVote); ok {
		return pv.RequestPreVote(id, target, args, resp)
	}
	return raft.ErrUnsupportedProtocol
}

func (o *observedTransport) Close() error {
	if c, ok := o.Transport.(raft.WithClose); ok {
		return c.Close()
	}
	return nil
}

// answeredAt returns when id last answered one of this node's appends.
func (o *observedTransport) answeredAt(id raft.ServerID) (time.Time, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p, ok := o.last[id]
	return p.at, ok
}
