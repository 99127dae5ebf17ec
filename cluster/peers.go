package cluster

import (
	"fmt"
	"strings"
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

	// history, set once raft runs, refuses an RPC that would rewrite
	// entries this node applied (see Node.rewritesApplied).
	history atomic.Pointer[func(cmd any) error]

	mu        sync.Mutex
	joinPeers map[string]bool
	admitting map[string]int
	vouched   map[string]bool
	// vouchedAt is the configuration index the vouched set was given at:
	// once the configuration moves, raft has brought it up to date and the
	// set no longer counts.
	vouchedAt string
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
func (g *peerGate) allowed(id string) bool { return g.trusts(id, true) }

// trusts is allowed, with or without the vouched ids (which only ever
// matter to raft: the API never counts them).
func (g *peerGate) trusts(id string, vouched bool) bool {
	servers := g.servers()
	for _, s := range servers {
		if string(s.ID) == id {
			return true
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.admitting[id] > 0 || (vouched && g.vouched[id] && g.vouchedAt == g.configIndex()) {
		return true
	}
	return len(servers) == 0 && g.joinPeers[id]
}

// nonvoter reports whether the latest configuration names id, and not as
// a voter. hashicorp/raft's non-voters never lead or campaign, so any
// append, snapshot, vote or timeout from one is an impostor's.
func (g *peerGate) nonvoter(id string) bool {
	for _, s := range g.servers() {
		if string(s.ID) == id {
			return s.Suffrage != raft.Voter
		}
	}
	return false
}

// isVoter reports whether the latest configuration names id as a voter.
func (g *peerGate) isVoter(id string) bool {
	for _, s := range g.servers() {
		if string(s.ID) == id {
			return s.Suffrage == raft.Voter
		}
	}
	return false
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
	at := g.configIndex()
	g.mu.Lock()
	g.vouched, g.vouchedAt = v, at
	g.mu.Unlock()
}

// isVouched reports whether id is vouched for under the current
// configuration.
func (g *peerGate) isVouched(id string) bool {
	g.mu.Lock()
	v, at := g.vouched[id], g.vouchedAt
	g.mu.Unlock()
	return v && at == g.configIndex()
}

// configIndex identifies the latest configuration by its servers (raft's
// GetConfiguration does not carry the entry's index).
func (g *peerGate) configIndex() string {
	var b strings.Builder
	for _, s := range g.servers() {
		fmt.Fprintf(&b, "%s=%s/%d;", s.ID, s.Address, s.Suffrage)
	}
	return b.String()
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
