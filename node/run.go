package node

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/internal/backoff"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
)

// OpenKey opens a kms.yaml key with its backend.
func OpenKey(ctx context.Context, k config.Key, log *slog.Logger) (keys.Signer, error) {
	switch k.Backend {
	case config.BackendFile:
		return file.Open(k.KeyFile)
	case config.BackendPKCS11:
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return pkcs11.Open(ctx, pkcs11.Config{
			Module: k.Module, TokenLabel: k.TokenLabel, Slot: k.Slot, KeyLabel: k.KeyLabel, KeyID: k.KeyID,
			Pin: k.Pin, PinEnv: k.PinEnv, PinFile: k.PinFile, Logger: log.With("component", "pkcs11"),
		})
	case config.BackendAWSKMS:
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		return awskms.Open(ctx, awskms.Config{
			KeyID: k.KeyID, Region: k.Region, Profile: k.Profile, Endpoint: k.Endpoint, Logger: log.With("component", "awskms"),
		})
	}
	return nil, fmt.Errorf("backend %q is unknown", k.Backend)
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

// allowFresh commits the empty watermark for the chains named by
// --allow-fresh-state that have none, through whichever node leads.
func (n *Node) allowFresh(ctx context.Context) {
	cl := n.cluster.Load()
	for _, id := range n.opts.AllowFreshState {
		err := backoff.Retry(ctx, backoff.New(200*time.Millisecond, 3*time.Second), func() error {
			if _, ok := cl.FSM().Watermark(id); ok {
				return nil
			}
			err := n.dialer.Call(n.cfg.Cluster.APIAddr, 5*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
				_, err := c.ImportState(ctx, &clusterpb.ImportStateRequest{ChainId: id, Source: "fresh"})
				return err
			})
			if err == nil {
				n.log.Warn("chain starts from an empty watermark (--allow-fresh-state): only correct if this validator key has never signed", "chain", id)
				return nil
			}
			n.log.Debug("committing the fresh state", "chain", id, "err", err)
			return err
		})
		if err != nil {
			return // the node is stopping
		}
	}
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
