package cluster

import (
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
)

// peerGate decides which node ids may speak raft with this node: the
// servers of the latest raft configuration, and, while this node has none
// (it was just admitted and has not heard from the leader yet), the
// members named in its join's answer. A leader also admits the node it is
// adding for the moment before the configuration names it, and a member
// whose configuration is stale admits the members that the members it
// knows name now (VouchPeers). Everyone else,
// a removed member included, is refused whatever its certificate says.
type peerGate struct {
	raft atomic.Pointer[raft.Raft]

	mu        sync.Mutex
	joinPeers map[string]bool
	admitting map[string]int
	vouched   map[string]bool
}

func newPeerGate(joinPeers []string) *peerGate {
	g := &peerGate{joinPeers: map[string]bool{}, admitting: map[string]int{}}
	for _, id := range joinPeers {
		g.joinPeers[id] = true
	}
	return g
}

// servers is the latest configuration, committed or not: raft keeps it in
// an atomic value, so reading it per RPC costs a copy, not a round trip
// through raft's main loop.
func (g *peerGate) servers() []raft.Server {
	r := g.raft.Load()
	if r == nil {
		return nil
	}
	f := r.GetConfiguration()
	if f.Error() != nil {
		return nil
	}
	return f.Configuration().Servers
}

// allowed reports whether the node id may speak raft with this node now.
func (g *peerGate) allowed(id string) bool {
	servers := g.servers()
	for _, s := range servers {
		if string(s.ID) == id {
			return true
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.admitting[id] > 0 || g.vouched[id] {
		return true
	}
	return len(servers) == 0 && g.joinPeers[id]
}

// idAt returns the member the configuration names at addr, if any: a
// dialled peer must be the member raft meant to reach there.
func (g *peerGate) idAt(addr string) (string, bool) {
	for _, s := range g.servers() {
		if string(s.Address) == addr {
			return string(s.ID), true
		}
	}
	return "", false
}

// vouch replaces the set of nodes that members this node trusts name as
// members (see Node.VouchPeers).
func (g *peerGate) vouch(ids []string) {
	v := map[string]bool{}
	for _, id := range ids {
		v[id] = true
	}
	g.mu.Lock()
	g.vouched = v
	g.mu.Unlock()
}

// admit lets id speak raft while the leader adds it; the returned func
// ends that.
func (g *peerGate) admit(id string) func() {
	g.mu.Lock()
	g.admitting[id]++
	g.mu.Unlock()
	return func() {
		g.mu.Lock()
		if g.admitting[id]--; g.admitting[id] <= 0 {
			delete(g.admitting, id)
		}
		g.mu.Unlock()
	}
}
