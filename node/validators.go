package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/internal/backoff"
	"github.com/kms-ha/kms-ha/transport"
)

// validatorStopped is the connection state of a validator whose entry says
// reconnect: false and whose connection ended: it is not dialled again in
// this term, and /readyz says so.
const validatorStopped = "stopped"

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
	for restarts := 0; ; restarts++ {
		err := n.runValidator(ctx, v, n.signer, transport.Options{
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

func (n *Node) onValidatorState(v transport.Validator, state string) {
	n.setValidatorState(v, state)
	n.metrics.ValidatorState(v.ChainID, v.Addr, state)
}

func (n *Node) setValidatorState(v transport.Validator, state string) {
	n.connMu.Lock()
	n.conns[v.ChainID+" "+v.Addr] = state
	n.connMu.Unlock()
}

// validatorsReady is the leader's part of /readyz: every validator
// connected, and a stopped one named with what to do about it.
func (n *Node) validatorsReady() error {
	n.connMu.Lock()
	defer n.connMu.Unlock()
	for _, v := range n.validators {
		switch st := n.conns[v.ChainID+" "+v.Addr]; st {
		case transport.StateConnected:
		case validatorStopped:
			return fmt.Errorf("leader, but validator %s (chain %s) disconnected and is not redialled because its entry says "+
				"reconnect: false; it is dialled again when a node next becomes leader (set reconnect: true to redial)", v.Addr, v.ChainID)
		default:
			return fmt.Errorf("leader, but validator %s (chain %s) is not connected", v.Addr, v.ChainID)
		}
	}
	return nil
}
