// Package node builds a running kms-ha node from a validated configuration
// and owns the start and stop order of its parts (node.go: New, Run,
// shutdown). On top of that it owns:
//
//   - leading (leader.go): one term's work, that is recording this node's
//     entry and the chains' public keys, refusing to lead with a key the
//     cluster did not record, and running and restarting the validator
//     connection loops, which dial only while this node leads;
//   - this node's side of membership (membership.go): waiting for
//     admission, keeping its entry current, and the Bootstrap, Join and
//     Leave operations behind the CLI commands (admin.go);
//   - health (health.go): /readyz, the validator connection states and the
//     metrics read off the cluster;
//   - opening the configured keys with their backends (keys.go).
//
// Every wait and retry goes through internal/backoff.
package node

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"google.golang.org/grpc"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/internal/backoff"
	"github.com/kms-ha/kms-ha/internal/logthrottle"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/metrics"
	"github.com/kms-ha/kms-ha/pki"
	"github.com/kms-ha/kms-ha/signer"
	"github.com/kms-ha/kms-ha/transport"
)

// ClusterConfig maps kms.yaml's cluster section to the raft node's config.
func ClusterConfig(c *config.Config, log *slog.Logger) cluster.Config {
	cl := c.Cluster
	return cluster.Config{
		NodeID:             cl.NodeID,
		DataDir:            cl.DataDir,
		LogStore:           cl.LogStore,
		BindAddr:           cl.RaftAddr,
		AdvertiseAddr:      cl.AdvertiseAddr,
		HeartbeatTimeout:   cl.HeartbeatTimeout,
		ElectionTimeout:    cl.ElectionTimeout,
		LeaderLeaseTimeout: cl.LeaderLeaseTimeout,
		CommitTimeout:      cl.CommitTimeout,
		ApplyTimeout:       cl.ApplyTimeout,
		SnapshotInterval:   cl.SnapshotInterval,
		SnapshotThreshold:  cl.SnapshotThreshold,
		Logger:             log,
	}
}

// Options are the start flags that are not part of kms.yaml.
type Options struct {
	// AllowFreshState lists chains that may start signing from an empty
	// watermark: the validator has never signed with this key.
	AllowFreshState []string
	// Version is this binary's version, for kmsha_build_info.
	Version string
}

// Node is a running kms-ha node.
type Node struct {
	cfg        *config.Config
	opts       Options
	log        *slog.Logger
	cluster    atomic.Pointer[cluster.Node]
	signer     *signer.Signer
	apiSrv     *grpcapi.ClusterServer
	dialer     grpcapi.Dialer
	keys       map[string]keys.Signer
	backends   map[string]string
	validators []transport.Validator
	api        *grpc.Server
	apiLn      net.Listener
	metrics    *metrics.Metrics
	metricsSrv *metrics.Server
	signerSvc  *grpcapi.SignerServiceListener

	// conns is each validator connection's state, for /readyz.
	connMu sync.Mutex
	conns  map[string]string
	// runValidator is transport.Run; tests replace it to end a loop the
	// way no real validator can.
	runValidator func(context.Context, transport.Validator, transport.Handler, transport.Options) error
	// keyProblem is set while this node's key differs from the one the
	// cluster recorded; it then refuses to lead.
	keyProblem atomic.Pointer[string]
	// handover decides when a leader that hears from none of its
	// validators hands leadership on; nil when turned off.
	handover *handover
}

// TLSFiles are the cluster TLS files of a configuration.
func TLSFiles(c *config.Config) pki.Files {
	return pki.Files{CA: c.Cluster.TLSCA, Cert: c.Cluster.TLSCert, Key: c.Cluster.TLSKey}
}

// NewDialer loads this node's client certificate for calls to the cluster
// API; the kms-ha commands use it too.
func NewDialer(c *config.Config, log *slog.Logger) (grpcapi.Dialer, error) {
	tc, err := pki.ClientConfig(TLSFiles(c), "", pki.WithLogger(log))
	if err != nil {
		return grpcapi.Dialer{}, fmt.Errorf("node: cluster TLS: %w", err)
	}
	return grpcapi.Dialer{TLS: tc}, nil
}

// New opens keys and identities and the API listener. Run starts raft. No
// validator is dialled except while this node leads.
func New(c *config.Config, opts Options, log *slog.Logger) (*Node, error) {
	n := &Node{cfg: c, opts: opts, log: log, keys: map[string]keys.Signer{}, backends: map[string]string{}, conns: map[string]string{},
		runValidator: transport.Run}
	ok := false
	defer func() {
		if !ok {
			n.closeKeys()
			if n.signerSvc != nil {
				n.signerSvc.Stop()
			}
		}
	}()
	for _, id := range opts.AllowFreshState {
		if !slices.ContainsFunc(c.Chains, func(ch config.Chain) bool { return ch.ID == id }) {
			return nil, fmt.Errorf("node: --allow-fresh-state %s: no such chain under chains in kms.yaml", id)
		}
	}
	var err error
	for i, k := range c.Keys {
		s, err := OpenKey(context.Background(), k, log)
		if err != nil {
			return nil, fmt.Errorf("node: keys[%d]: %w", i, err)
		}
		for _, id := range k.ChainIDs {
			n.keys[id] = s
			n.backends[id] = k.Backend
		}
		log.Info("key loaded", "chains", k.ChainIDs, "backend", k.Backend, "pubkey", fmt.Sprintf("%X", s.PubKey().Bytes()))
	}
	if n.validators, err = loadValidators(c); err != nil {
		return nil, err
	}
	n.handover = newHandover(c.Cluster.HandoverAfter(), handoverChains(n.validators))

	srvTLS, err := pki.ServerConfig(TLSFiles(c), pki.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("node: cluster TLS: %w", err)
	}
	if n.dialer, err = NewDialer(c, log); err != nil {
		return nil, err
	}
	if c.Metrics.Listen != "" {
		n.metrics = metrics.New()
		n.metrics.SetBuildInfo(cmp.Or(opts.Version, "dev"))
	}
	if g := c.GRPC; g != nil {
		svc := g.SignerService()
		for _, k := range n.keys {
			svc.ConsensusKeys = append(svc.ConsensusKeys, k.PubKey().Bytes())
		}
		if n.signerSvc, err = grpcapi.StartSignerService(svc, log.With("component", "signerservice")); err != nil {
			return nil, fmt.Errorf("node: grpc: %w", err)
		}
	}
	n.apiLn, err = net.Listen("tcp", c.Cluster.APIAddr)
	if err != nil {
		return nil, fmt.Errorf("node: listen on api_addr %s: %w", c.Cluster.APIAddr, err)
	}
	n.apiSrv = grpcapi.NewClusterServer(c.Cluster.NodeID, nil, n.dialer, log)
	n.apiSrv.BeforeTransfer = n.awaitQuiet
	n.apiSrv.ImportPolicy = grpcapi.ImportPolicy{MaxJump: c.Cluster.MaxImportJump, Chains: []string{}}
	for _, ch := range c.Chains {
		n.apiSrv.ImportPolicy.Chains = append(n.apiSrv.ImportPolicy.Chains, ch.ID)
	}
	n.api = n.apiSrv.NewGRPCServer(srvTLS)
	if c.Metrics.Listen != "" {
		if n.metricsSrv, err = metrics.Start(c.Metrics.Listen, n.metrics, metrics.HealthFunc(n.Ready), log); err != nil {
			n.apiLn.Close()
			return nil, fmt.Errorf("node: metrics.listen %s: %w", c.Metrics.Listen, err)
		}
	}
	ok = true
	return n, nil
}

// loadValidators builds the transport's view of the validators entries,
// loading each identity file once.
func loadValidators(c *config.Config) ([]transport.Validator, error) {
	var out []transport.Validator
	identities := map[string]crypto.PrivKey{}
	for i, v := range c.Validators {
		a, err := transport.ParseAddr(v.Addr)
		if err != nil {
			return nil, fmt.Errorf("node: validators[%d].addr: %w", i, err)
		}
		tv := transport.Validator{ChainID: v.ChainID, Addr: v.Addr, Reconnect: v.ShouldReconnect(),
			Protocol: transport.Protocol(v.Protocol)}
		// A unix:// entry needs no identity: the node's unix listener
		// authenticates nobody, and the README promises it works without.
		if a.NeedsIdentity() {
			id, ok := identities[v.IdentityKey]
			if !ok {
				if id, err = transport.LoadIdentity(v.IdentityKey); err != nil {
					return nil, fmt.Errorf("node: validators[%d].identity_key: %w", i, err)
				}
				identities[v.IdentityKey] = id
			}
			tv.Identity = id
		}
		out = append(out, tv)
	}
	return out, nil
}

// startRaft opens the raft node and the signer on top of it.
func (n *Node) startRaft() error {
	f := fsm.New()
	cc := ClusterConfig(n.cfg, n.log)
	cc.Leading = []func(context.Context){n.lead}
	srvTLS, err := pki.ServerConfig(TLSFiles(n.cfg), pki.WithLogger(n.log))
	if err != nil {
		return fmt.Errorf("node: cluster TLS: %w", err)
	}
	cc.TLS = &cluster.TLS{Server: srvTLS, Client: n.dialer.TLS, PeerID: pki.PeerNodeID}
	cc.OnHandshakeError = cluster.NewHandshakeErrorLog(n.log, 10*time.Second)
	refusals := logthrottle.New(10 * time.Second)
	cc.OnPeerRefused = func(err error) {
		if held, ok := refusals.Allow(err.Error()); ok {
			n.log.Warn("raft peer refused", "err", err, "similar_refusals_since_last_report", held)
		}
	}
	cc.Probe = n.dialer.Probe
	cl, err := cluster.Open(cc, f)
	if err != nil {
		return err
	}
	var obs signer.Observer
	if n.metrics != nil {
		obs = n.metrics
	}
	n.signer, err = signer.New(signer.Config{
		NodeID:   n.cfg.Cluster.NodeID,
		Reserver: cl,
		Recorder: cl,
		State:    f,
		Keys:     n.keys,
		Logger:   n.log,
		Observer: obs,
		Backends: n.backends,

		ChainFields: n.cfg.ChainFields(),
	})
	if err != nil {
		cl.Shutdown()
		return err
	}
	// The signer must exist before the first term can call lead.
	n.cluster.Store(cl)
	n.apiSrv.SetNode(cl)
	return nil
}

// Run serves until ctx is cancelled, then stops: a leader first hands
// leadership to an up-to-date follower so the validators wait one dial, not
// an election.
func (n *Node) Run(ctx context.Context) error {
	errCh := make(chan error, 1)
	go func() { errCh <- n.api.Serve(n.apiLn) }()
	err := n.awaitAdmission(ctx)
	if err == nil {
		err = n.startRaft()
	}
	if err != nil {
		n.api.Stop()
		if n.signerSvc != nil {
			n.signerSvc.Stop()
		}
		if n.metricsSrv != nil {
			n.metricsSrv.Shutdown(context.Background())
		}
		n.closeKeys()
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	bgCtx, stopBG := context.WithCancel(ctx)
	defer stopBG()
	go n.register(bgCtx)
	go n.allowFresh(bgCtx)
	go n.watch(bgCtx)
	n.log.Info("node started", "raft_addr", n.cfg.Cluster.RaftAddr,
		"api_addr", n.cfg.Cluster.APIAddr, "chains", len(n.cfg.Chains), "validators", len(n.validators))
	select {
	case <-ctx.Done():
	case err = <-errCh:
		err = fmt.Errorf("node: api server: %w", err)
	}
	n.shutdown()
	return err
}

func (n *Node) shutdown() {
	cl := n.cluster.Load()
	if cl.IsLeader() {
		n.awaitQuiet()
		n.log.Info("leader stopping: transferring leadership")
		if err := cl.TransferLeadership(); err != nil {
			n.log.Warn("leadership transfer failed; the others will elect a leader", "err", err)
		}
	}
	stopped := make(chan struct{})
	go func() { n.api.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		n.api.Stop()
	}
	n.apiSrv.Close()
	if err := cl.Shutdown(); err != nil {
		n.log.Warn("raft shutdown", "err", err)
	}
	if n.signerSvc != nil {
		n.signerSvc.Stop()
	}
	if n.metricsSrv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		n.metricsSrv.Shutdown(sctx)
		cancel()
	}
	n.closeKeys()
	n.log.Info("node stopped")
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
