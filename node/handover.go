package node

import (
	"context"
	"slices"
	"sync"
	"time"

	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/transport"
)

// A leader that reaches none of its validators (a cut link between its
// host and theirs, a firewall change on one side) keeps raft leadership,
// and only the leader dials: every block is missed until the link heals,
// while a follower on another host may reach the validators fine. The
// leader therefore hands leadership on once it has heard from none of them
// for a while.
//
// The rule, with several chains: hand over only when every chain that has
// a validator to redial has been silent for the whole wait. A handover
// costs every chain a dial, so a leader never trades a chain that signs
// for one that does not.
//
// Followers never dial, so nobody knows beforehand whether the next leader
// will do better. A validator down for everyone would make leadership go
// round the cluster; the wait therefore doubles after each handover that
// did not bring signing back (no chain's watermark moved since), up to
// handoverMaxFactor times, and resets once one does. Each node keeps its
// own wait; the watermarks it compares are the replicated ones, so a node
// learns that the next leader signed without being told.

// handoverMaxFactor caps the doubling: 5 s becomes at most 5 min 20 s.
const handoverMaxFactor = 64

// handoverCheck is how often the leader compares the silence with the wait.
const handoverCheck = 250 * time.Millisecond

// handover is the decision, kept apart from raft and the clock so that it
// can be tested alone. It lives as long as the node, across terms.
type handover struct {
	base time.Duration

	mu   sync.Mutex
	wait time.Duration
	// heard is the last sign of life per chain: a request, a new
	// connection, or the start of this term.
	heard map[string]time.Time
	// mark holds the watermarks at this node's last handover, nil when
	// signing has resumed since.
	mark map[string]fsm.HRS
}

// newHandover returns nil when base is 0 (turned off) or no chain has a
// validator to redial.
func newHandover(base time.Duration, chains []string) *handover {
	if base <= 0 || len(chains) == 0 {
		return nil
	}
	h := &handover{base: base, wait: base, heard: map[string]time.Time{}}
	for _, c := range chains {
		h.heard[c] = time.Time{}
	}
	return h
}

// startTerm gives a new leader a full wait to connect.
func (h *handover) startTerm(now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.heard {
		h.heard[c] = now
	}
}

// heardFrom records a sign of life from one of chain's validators.
func (h *handover) heardFrom(chain string, now time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.heard[chain]; ok && now.After(h.heard[chain]) {
		h.heard[chain] = now
	}
}

// due reports whether every chain has been silent for the current wait,
// and for how long the most recent one has been. wms are the replicated
// watermarks now: any watched chain past its mark means the last handover (or a
// later leader) brought signing back, and the wait starts over.
func (h *handover) due(now time.Time, wms map[string]fsm.HRS) (bool, time.Duration, time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mark != nil && h.progressed(wms) {
		h.mark, h.wait = nil, h.base
	}
	silent := time.Duration(-1)
	for _, t := range h.heard {
		if s := now.Sub(t); silent < 0 || s < silent {
			silent = s
		}
	}
	return silent >= h.wait, silent, h.wait
}

// handedOver doubles the wait for this node's next handover (undone as
// soon as a watermark moves past wms).
func (h *handover) handedOver(wms map[string]fsm.HRS) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mark == nil {
		h.mark = wms
	}
	h.wait = min(2*h.wait, handoverMaxFactor*h.base)
}

// retryLater restarts the silence after a handover that raft refused (no
// follower up to date yet): the next attempt comes one wait later.
func (h *handover) retryLater(now time.Time) { h.startTerm(now) }

// progressed reports whether a watched chain signed past its mark. Only
// watched chains count: a reconnect: false chain that keeps signing while
// every watched chain is cut off would otherwise reset the wait at each
// check, and leadership would move every base wait for ever.
func (h *handover) progressed(now map[string]fsm.HRS) bool {
	for c := range h.heard {
		w, ok := now[c]
		if !ok {
			continue
		}
		if m, ok := h.mark[c]; !ok || w.Compare(m) > 0 {
			return true
		}
	}
	return false
}

// handoverTarget names the voter to hand leadership to: the next
// reachable voter after self in id order, wrapping round, or "" when there
// is none. Letting raft choose would not do: it takes the first voter in
// configuration order among equally caught-up followers (the normal case
// once signing stopped), so with A, B, C and the validators reachable only
// from C, A handed to B and B back to A for ever. Each node handing to its
// successor takes leadership round every reachable voter. A target that
// lags is no obstacle: raft brings it up to date before it hands over.
func handoverTarget(self string, members []cluster.MemberHealth) string {
	var ids []string
	for _, m := range members {
		if m.Suffrage == "Voter" && m.Reachable && m.ID != self {
			ids = append(ids, m.ID)
		}
	}
	if len(ids) == 0 {
		return ""
	}
	slices.Sort(ids)
	for _, id := range ids {
		if id > self {
			return id
		}
	}
	return ids[0]
}

func watermarkPositions(cl *cluster.Node) map[string]fsm.HRS {
	out := map[string]fsm.HRS{}
	for c, w := range cl.FSM().Watermarks() {
		out[c] = w.HRS
	}
	return out
}

// watchValidatorReach runs for one term of leadership and hands
// leadership on when the rule above says so.
func (n *Node) watchValidatorReach(ctx context.Context, cl *cluster.Node) {
	h := n.handover
	h.startTerm(time.Now())
	t := time.NewTicker(handoverCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wms := watermarkPositions(cl)
		due, silent, wait := h.due(time.Now(), wms)
		if !due {
			continue
		}
		// Only when otherwise healthy: another voter answers, or there
		// is nobody to hand to and raft would refuse anyway.
		hl, ok := cl.Health()
		if !ok {
			continue
		}
		to := handoverTarget(cl.ID(), hl.Members)
		if to == "" {
			continue
		}
		n.log.Warn("no validator heard from: handing leadership to another node, which may reach them",
			"to", to, "silent_for", silent.Round(time.Millisecond), "wait", wait)
		if err := cl.TransferLeadershipTo(to); err != nil {
			n.log.Warn("validator handover refused; trying again after the same wait", "err", err)
			h.retryLater(time.Now())
			continue
		}
		h.handedOver(wms)
		return
	}
}

// heardHandler notes every request as a sign of life of its chain's
// validator, before the signer answers it: a request that arrives proves
// the link, whatever the answer.
type heardHandler struct {
	transport.Handler
	h *handover
}

func (x heardHandler) Handle(ctx context.Context, chainID string, req privvalproto.Message) privvalproto.Message {
	x.h.heardFrom(chainID, time.Now())
	return x.Handler.Handle(ctx, chainID, req)
}

// handoverChains are the chains the rule watches: those with a validator
// entry that is redialled (reconnect: false ends its loop for the term,
// and is reported on /readyz instead).
func handoverChains(vs []transport.Validator) []string {
	var out []string
	seen := map[string]bool{}
	for _, v := range vs {
		if v.Reconnect && !seen[v.ChainID] {
			seen[v.ChainID] = true
			out = append(out, v.ChainID)
		}
	}
	return out
}
