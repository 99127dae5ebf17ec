package node

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/kms-ha/kms-ha/transport"
)

// Ready is /readyz: a member that knows its leader; the leader also needs
// its validator connections up.
func (n *Node) Ready() error {
	if p := n.keyProblem.Load(); p != nil {
		return errors.New(*p)
	}
	cl := n.cluster.Load()
	if cl == nil {
		return errors.New("not a cluster member yet: waiting to be admitted (kms-ha join)")
	}
	if cl.Suffrage() == "" {
		return errors.New("not a member of the cluster (removed, or left): stop this node; to bring it back, wipe its data_dir and run kms-ha join")
	}
	id, _ := cl.Leader()
	if id == "" {
		return errors.New("no known leader")
	}
	if !cl.IsLeader() {
		return nil
	}
	return n.validatorsReady()
}

// watch feeds the metrics that are read off the cluster rather than
// observed on the sign path.
func (n *Node) watch(ctx context.Context) {
	if n.metrics == nil {
		return
	}
	cl := n.cluster.Load()
	wasLeader := false
	first := true
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		st := cl.Stats()
		n.metrics.SetRaft(st.Term, st.AppliedIndex)
		if lead := cl.IsLeader(); lead != wasLeader || first {
			if !first || lead {
				n.metrics.LeaderChanged(lead)
			}
			wasLeader, first = lead, false
		}
		for id, w := range cl.FSM().Watermarks() {
			n.metrics.SetWatermark(id, w.Height, w.Round, w.Step)
		}
	}
}

// validatorStopped is the connection state of a validator whose entry says
// reconnect: false and whose connection ended: it is not dialled again in
// this term, and /readyz says so.
const validatorStopped = "stopped"

// onValidatorState is the transport's OnState: the state feeds /readyz and
// the validator connection metric.
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
