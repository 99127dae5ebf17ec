package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/internal/backoff"
	"github.com/kms-ha/kms-ha/transport"
)

// lead runs for one term of leadership: it records this node's API address
// for followers to forward to, then serves every validator until ctx ends.
func (n *Node) lead(ctx context.Context) {
	var wg sync.WaitGroup
	cl := n.cluster.Load()
	// This node's own record first (one commit, only when it changed): a
	// key can be recorded only once every member registered its level, and
	// followers forward joins to the API address recorded here.
	if m, _ := cl.FSM().Member(n.cfg.Cluster.NodeID); m.APIAddr != n.cfg.Cluster.APIAddr || m.Level != fsm.Level {
		if err := cl.SetMember(ctx, n.cfg.Cluster.NodeID, n.cfg.Cluster.APIAddr, fsm.Level); err != nil {
			n.log.Warn("could not record this node's api address and level; retrying in the background", "err", err)
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.retry(ctx, "record this node's api address", func() error {
					return cl.SetMember(ctx, n.cfg.Cluster.NodeID, n.cfg.Cluster.APIAddr, fsm.Level)
				})
			}()
		}
	}
	ok, pending := n.checkKeys(ctx, cl)
	if !ok {
		// Keep trying to hand over (a transfer fails while no follower is
		// up to date); meanwhile this node leads without signing.
		n.retry(ctx, "hand leadership to a node with the recorded key", cl.TransferLeadership)
		return
	}
	if pending {
		// Some member has not registered a level that knows chain keys
		// yet: record them as soon as it has, while leading.
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.retry(ctx, "record the chains' public keys", func() error {
				ok, pending := n.checkKeys(ctx, cl)
				if !ok || !pending {
					return nil
				}
				return errors.New("a member's level is not registered yet")
			})
		}()
	}
	for _, ch := range n.cfg.Chains {
		if _, refused := cl.FSM().StateRefusal(ch.ID); refused && !slices.Contains(n.opts.AllowFreshState, ch.ID) {
			n.log.Warn("the cluster holds no watermark for this chain: every signature is refused until its state is imported "+
				"(`kms-ha state import`) or a node starts with --allow-fresh-state", "chain", ch.ID)
		}
	}
	for _, v := range n.validators {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.serveValidator(ctx, cl, v)
		}()
	}
	if n.handover != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n.watchValidatorReach(ctx, cl)
		}()
	}
	wg.Wait()
}

// checkKeys records each chain's public key in the cluster, or, when the
// cluster recorded another key, refuses to lead: the validator would get
// signatures from a key it does not know, and the operator must learn
// which node holds the wrong key. It hands leadership on and reports
// ok=false. pending reports keys it could not record yet.
func (n *Node) checkKeys(ctx context.Context, cl *cluster.Node) (ok, pending bool) {
	for _, ch := range n.cfg.Chains {
		k := n.keys[ch.ID]
		if k == nil {
			continue
		}
		pub := k.PubKey()
		want := fsm.SetChainKey{ChainID: ch.ID, PubKey: pub.Bytes(), KeyType: pub.Type()}
		rec, ok := cl.FSM().ChainKey(ch.ID)
		if !ok {
			r, err := cl.SetChainKey(ctx, want)
			if err != nil {
				// Recording needs every member at level 1; until then the
				// node signs, and lead retries in the background.
				n.log.Info("the chain's public key is not recorded in the cluster yet", "chain", ch.ID, "err", err)
				pending = true
				continue
			}
			rec, ok = r.Recorded, true
		}
		if ok && (!bytes.Equal(rec.PubKey, want.PubKey) || rec.KeyType != want.KeyType) {
			msg := fmt.Sprintf("this node's key for chain %s is %s %X, but the cluster recorded %s %X: "+
				"fix this node's keys entry (every node must hold the same key); refusing to lead",
				ch.ID, want.KeyType, want.PubKey, rec.KeyType, rec.PubKey)
			n.keyProblem.Store(&msg)
			n.log.Error("key mismatch: refusing to lead", "chain", ch.ID,
				"local_pubkey", fmt.Sprintf("%X", want.PubKey), "cluster_pubkey", fmt.Sprintf("%X", rec.PubKey))
			if err := cl.TransferLeadership(); err != nil {
				n.log.Error("could not hand leadership to another node; staying leader without signing", "err", err)
			}
			return false, false
		}
	}
	n.keyProblem.Store(nil)
	return true, pending
}

// retry runs fn until it succeeds or ctx ends, backing off from 100 ms to
// 2 s. It waits one step first: every caller has just seen fn's work fail.
func (n *Node) retry(ctx context.Context, what string, fn func() error) {
	b := backoff.New(100*time.Millisecond, 2*time.Second)
	if !b.Wait(ctx) {
		return
	}
	// Retry fails only when ctx ended, that is when the term did: nothing
	// left to report.
	_ = backoff.Retry(ctx, b, func() error {
		err := fn()
		if err != nil && ctx.Err() == nil {
			n.log.Debug("retrying", "what", what, "err", err)
		}
		return err
	})
}

// awaitQuiet waits, at most 2 s, for a moment between heights: right after
// a precommit the validator waits timeout_commit before its next request,
// time the next leader uses to connect, so a handover there misses nothing.
func (n *Node) awaitQuiet() {
	if n.signer == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	// A poll of local state: jitter would only blur the moment it finds.
	b := backoff.Constant(2 * time.Millisecond).WithJitter(0)
	for !n.signer.Quiet(3*time.Second) && b.Wait(ctx) {
	}
}

// Restart delays for a validator loop that ended on its own. The ceiling
// stays under the 3 s a starting validator waits for its signer.
const (
	restartMin = 200 * time.Millisecond
	restartMax = time.Second
)

// serveValidator runs one validator's connection loop for this term of
// leadership. A loop that ends while this node still leads is restarted
// with backoff: a validator left undialled stalls its chain, and nothing
// else would notice. The one exception is reconnect: false, which keeps its
// cosmos/kms meaning (no redial after the connection ends) and is reported
// on /readyz instead.
func (n *Node) serveValidator(ctx context.Context, cl *cluster.Node, v transport.Validator) {
	b := backoff.New(restartMin, restartMax)
	var h transport.Handler = n.signer
	if n.handover != nil {
		h = heardHandler{Handler: n.signer, h: n.handover}
	}
	for restarts := 0; ; restarts++ {
		err := n.runValidator(ctx, v, h, transport.Options{
			Logger: n.log,
			// Checked before every dial: a node that is no longer
			// leader must not open a validator connection, even in the
			// moment before its context is cancelled.
			Allowed: cl.IsLeader,
			OnState: n.onValidatorState,
		})
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, transport.ErrNoReconnect) {
			n.setValidatorState(v, validatorStopped)
			n.log.Warn("validator connection ended and is not redialled (reconnect: false); it is dialled again when a node next "+
				"becomes leader", "chain", v.ChainID, "addr", v.Addr, "err", err)
			return
		}
		delay := b.Next()
		n.log.Error("validator connection loop ended while leading; restarting it", "chain", v.ChainID, "addr", v.Addr,
			"err", err, "restarts", restarts+1, "in", delay)
		if !backoff.Sleep(ctx, delay) {
			return
		}
	}
}
