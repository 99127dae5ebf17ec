package node

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/metrics"
	"github.com/kms-ha/kms-ha/pki"
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
	if err := n.validatorsReady(); err != nil {
		return err
	}
	if h, ok := cl.Health(); ok && h.Tolerance() == 0 {
		return metrics.Degraded(degradedReason(h))
	}
	return nil
}

// degradedReason names what the leader sees: how many voters it reaches
// and which members it does not hear from.
func degradedReason(h cluster.ClusterHealth) string {
	var down []string
	for _, m := range h.Unreachable() {
		when := "not heard from this term"
		if m.Heard {
			when = "last heard " + m.LastContact.Round(100*time.Millisecond).String() + " ago"
		}
		down = append(down, fmt.Sprintf("%s unreachable (%s, %s)", m.ID, strings.ToLower(m.Suffrage), when))
	}
	msg := fmt.Sprintf("%d of %d voters reachable, quorum %d: the cluster cannot lose another voter", h.ReachableVoters, h.Voters, h.Quorum)
	if len(down) == 0 {
		return msg + " (add members for fault tolerance)"
	}
	return msg + "; " + strings.Join(down, "; ")
}

// clusterHealthMetrics exports the leader's view of the members; a
// follower exports none (it cannot know).
func (n *Node) clusterHealthMetrics(cl *cluster.Node) {
	h, ok := cl.Health()
	if !ok {
		n.metrics.SetClusterHealth(nil, 0)
		return
	}
	var ms []metrics.MemberHealth
	for _, m := range h.Members {
		mh := metrics.MemberHealth{ID: m.ID, State: metrics.MemberHealthy, LastContactSeconds: -1, AppliedLag: m.AppliedLag}
		switch {
		case !m.Reachable:
			mh.State = metrics.MemberUnreachable
		case m.Suffrage != "Voter":
			mh.State = metrics.MemberNonvoter
		}
		if m.Heard {
			mh.LastContactSeconds = m.LastContact.Seconds()
		}
		ms = append(ms, mh)
	}
	n.metrics.SetClusterHealth(ms, h.Tolerance())
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
	var certsAt time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		// Certificates change rarely (a rotation is picked up without a
		// restart); reading them once a minute is plenty for an alert.
		if time.Since(certsAt) > time.Minute {
			n.certificateMetrics()
			certsAt = time.Now()
		}
		st := cl.Stats()
		n.metrics.SetRaft(st.Term, st.AppliedIndex)
		n.metrics.SetElections(cl.Elections())
		n.clusterHealthMetrics(cl)
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

// certificateMetrics exports when each certificate this node presents or
// trusts expires.
func (n *Node) certificateMetrics() {
	files := map[string]string{"node": n.cfg.Cluster.TLSCert, "ca": n.cfg.Cluster.TLSCA}
	if g := n.cfg.GRPC; g != nil && g.TLSCert != "" {
		files["signerservice"] = g.TLSCert
	}
	for name, path := range files {
		exp, err := pki.Expiry(path)
		if err != nil {
			n.log.Warn("certificate expiry not readable for the metric", "cert", name, "path", path, "err", err)
			continue
		}
		n.metrics.SetCertificateExpiry(name, exp)
	}
}

// validatorStopped is the connection state of a validator whose entry says
// reconnect: false and whose connection ended: it is not dialled again in
// this term, and /readyz says so.
const validatorStopped = "stopped"

// onValidatorState is the transport's OnState: the state feeds /readyz and
// the validator connection metric.
func (n *Node) onValidatorState(v transport.Validator, state string) {
	if state == transport.StateConnected && n.handover != nil {
		n.handover.heardFrom(v.ChainID, time.Now())
	}
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
