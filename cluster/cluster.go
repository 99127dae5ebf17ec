// Package cluster runs the hashicorp/raft node that replicates the
// watermarks: its stores, its transport, membership, leadership events and
// Reserve, the one write on the sign path.
package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/internal/backoff"
)

// Config is what a raft node needs; node builds it from kms.yaml.
type Config struct {
	NodeID string
	// DataDir holds the log and stable store (wal/, or raft.db with
	// LogStore bolt), snapshots/ and the LOCK file.
	DataDir string
	// LogStore is LogStoreWAL (the default when empty) or LogStoreBolt.
	LogStore string
	// BindAddr is where the raft transport listens; AdvertiseAddr is what
	// peers dial (defaults to BindAddr).
	BindAddr      string
	AdvertiseAddr string

	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// ApplyTimeout bounds a Reserve: the validator waits 5 s and drops the
	// connection after that, so a Reserve that cannot commit gives up first.
	ApplyTimeout time.Duration

	SnapshotInterval  time.Duration
	SnapshotThreshold uint64
	SnapshotRetain    int

	Logger *slog.Logger

	// TLS is the mutual TLS of the raft stream layer: Server must require
	// client certificates from the cluster CA, Client presents this node's.
	TLS *TLS

	// Transport replaces the TLS transport; tests use raft's in-memory one
	// to cut links between nodes.
	Transport raft.Transport

	// OnHandshakeError, if set, hears of every inbound raft connection
	// dropped for want of a valid cluster certificate.
	OnHandshakeError func(remote net.Addr, err error)

	// Probe asks a member's API how it is doing: the leader promotes a
	// non-voter once it sees it caught up, and refuses to replace a member
	// that still runs. Without it nothing is promoted.
	Probe ProbeFunc

	// OnPeerRefused, if set, hears of every raft connection or RPC refused
	// because its node is not a member or claimed another node's id. It
	// may be called concurrently and must not block.
	OnPeerRefused func(err error)

	// Leading runs each time this node becomes leader, once raft.Barrier
	// has returned on the new term (so the FSM holds every entry of earlier
	// terms). Its ctx is cancelled as soon as leadership is lost, and the
	// next term's run starts only after the previous one returned. It is
	// part of the config so that no term can start without it.
	Leading []func(ctx context.Context)

	// lockTimeout bounds the wait for the data dir's lock.
	lockTimeout time.Duration

	// walSegmentSize replaces raft-wal's segment size (64 MiB) when set;
	// tests use it to fill a segment in a few entries.
	walSegmentSize int

	// WrapFSM, if set, wraps the state machine raft applies to; tests use
	// it to check every apply from outside.
	WrapFSM func(raft.FSM) raft.FSM
}

func (c *Config) setDefaults() {
	if c.AdvertiseAddr == "" {
		c.AdvertiseAddr = c.BindAddr
	}
	for _, d := range []struct {
		p *time.Duration
		v time.Duration
	}{
		{&c.HeartbeatTimeout, DefaultHeartbeatTimeout},
		{&c.ElectionTimeout, DefaultElectionTimeout},
		{&c.LeaderLeaseTimeout, DefaultLeaderLeaseTimeout},
		{&c.CommitTimeout, DefaultCommitTimeout},
		{&c.ApplyTimeout, DefaultApplyTimeout},
		{&c.SnapshotInterval, DefaultSnapshotInterval},
	} {
		if *d.p == 0 {
			*d.p = d.v
		}
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.SnapshotRetain == 0 {
		c.SnapshotRetain = DefaultSnapshotRetain
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) raftConfig() *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(c.NodeID)
	rc.HeartbeatTimeout = c.HeartbeatTimeout
	rc.ElectionTimeout = c.ElectionTimeout
	rc.LeaderLeaseTimeout = c.LeaderLeaseTimeout
	rc.CommitTimeout = c.CommitTimeout
	rc.SnapshotInterval = c.SnapshotInterval
	rc.SnapshotThreshold = c.SnapshotThreshold
	// Reservations of different chains queue without waiting for the
	// leader loop, which takes every queued one into one append: one disk
	// commit on each node for the lot.
	rc.BatchApplyCh = true
	rc.Logger = newHCLogAdapter(c.Logger.With("component", "raft"))
	return rc
}

// TLS holds the raft stream layer's TLS configs.
type TLS struct {
	Server, Client *tls.Config
	// PeerID reads the node id from a verified peer certificate: only
	// members' node certificates speak raft.
	PeerID PeerIDFunc
}

// stores are the durable parts of a raft node.
type stores struct {
	// lock is the data dir's (lock.go), held until the stores close.
	lock *dirLock
	// db is the log and stable store: raft-wal or raft-boltdb
	// (logstore.go).
	db logStore
	// logs is db behind raft's log cache: the leader's replication reads
	// each new entry back to send it, and a cached entry is neither a disk
	// read nor a decode. Writes go to db first, as before.
	logs  raft.LogStore
	snaps raft.SnapshotStore
}

// Close closes the store, then lets go of the data dir.
func (s *stores) Close() error {
	err := s.db.Close()
	s.lock.release()
	if err != nil {
		return fmt.Errorf("cluster: close the raft log store: %w", err)
	}
	return nil
}

// logCacheSize holds the entries a follower a little behind still needs
// (raft sends at most MaxAppendEntries per append), for a few kilobytes.
const logCacheSize = 512

func openStores(c *Config) (*stores, error) {
	if err := os.MkdirAll(c.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster: create data dir %s: %w", c.DataDir, err)
	}
	lockWait := c.lockTimeout
	if lockWait == 0 {
		lockWait = time.Second
	}
	lock, err := lockDataDir(c.DataDir, lockWait)
	if err != nil {
		return nil, err
	}
	db, err := openLogStore(c, lockWait)
	if err != nil {
		lock.release()
		return nil, err
	}
	st := &stores{lock: lock, db: db}
	st.snaps, err = raft.NewFileSnapshotStoreWithLogger(c.DataDir, c.SnapshotRetain,
		newHCLogAdapter(c.Logger.With("component", "snapshots")))
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("cluster: open snapshot store in %s: %w", c.DataDir, err)
	}
	if st.logs, err = raft.NewLogCache(logCacheSize, db); err != nil {
		st.Close()
		return nil, fmt.Errorf("cluster: log cache: %w", err)
	}
	return st, nil
}

// Server is one voter of an initial configuration.
type Server struct {
	ID      string
	Address string
}

// ErrAlreadyBootstrapped is returned when bootstrap finds existing state.
var ErrAlreadyBootstrapped = errors.New("raft state already exists")

// Bootstrap writes the first configuration into an empty data dir. It is
// run once, on one node, before that node's first start.
func Bootstrap(c Config, servers []Server) error {
	c.setDefaults()
	st, err := openStores(&c)
	if err != nil {
		return err
	}
	defer st.Close()
	exists, err := raft.HasExistingState(st.db, st.db, st.snaps)
	if err != nil {
		return fmt.Errorf("cluster: bootstrap: read %s: %w", c.DataDir, err)
	}
	if exists {
		return fmt.Errorf("cluster: bootstrap %s: %w", c.DataDir, ErrAlreadyBootstrapped)
	}
	if len(servers) == 0 {
		servers = []Server{{ID: c.NodeID, Address: c.AdvertiseAddr}}
	}
	var conf raft.Configuration
	seen := map[string]bool{}
	self := false
	for _, s := range servers {
		if s.ID == "" || s.Address == "" {
			return fmt.Errorf("cluster: bootstrap: server %q needs an id and an address", s.ID+"="+s.Address)
		}
		if seen[s.ID] {
			return fmt.Errorf("cluster: bootstrap: server id %q listed twice", s.ID)
		}
		seen[s.ID] = true
		self = self || s.ID == c.NodeID
		conf.Servers = append(conf.Servers, raft.Server{
			Suffrage: raft.Voter, ID: raft.ServerID(s.ID), Address: raft.ServerAddress(s.Address),
		})
	}
	if !self {
		return fmt.Errorf("cluster: bootstrap: this node (%s) must be one of the voters", c.NodeID)
	}
	_, trans := raft.NewInmemTransport(raft.ServerAddress(c.AdvertiseAddr))
	if err := raft.BootstrapCluster(c.raftConfig(), st.db, st.db, st.snaps, trans, conf); err != nil {
		return fmt.Errorf("cluster: bootstrap: %w", err)
	}
	return bindNodeID(st, &c)
}

// Node is a running raft member.
type Node struct {
	cfg   Config
	raft  *raft.Raft
	fsm   *fsm.FSM
	st    *stores
	trans raft.Transport
	gate  *peerGate
	obs   *observedTransport
	log   *slog.Logger
	joins *joinLog

	notifyCh chan bool
	done     chan struct{}
	closing  sync.Once
	closeErr error
	wg       sync.WaitGroup

	mu       sync.Mutex
	leadStop context.CancelFunc
	leadWG   sync.WaitGroup

	// termReady is set once this node, as leader, has committed its term's
	// barrier; linearizable reads wait for it.
	termReady atomic.Bool
	// levelOK caches, for a second, whether every member can apply version
	// 2 reservations (levelAt: when it was checked, in Unix nanoseconds).
	levelOK atomic.Bool
	levelAt atomic.Int64
	started time.Time
	// applied is what the state machine has applied (see WaitApplied).
	applied applied
	// health is the leader's latest contact with each member (health.go).
	health memberTracker
	// elections counts this node's transitions to candidate.
	elections atomic.Uint64
	// stood rate-limits the crash watch's elections (crashwatch.go).
	stood standLimit
}

// Open starts a raft member on cfg.DataDir. A node with no state waits to
// be added by a leader (see Join) or bootstrapped.
func Open(cfg Config, f *fsm.FSM) (*Node, error) {
	cfg.setDefaults()
	if cfg.NodeID == "" {
		return nil, errors.New("cluster: node id is empty")
	}
	st, err := openStores(&cfg)
	if err != nil {
		return nil, err
	}
	gate := newPeerGate(readJoinPeers(st))
	hosts := &MemberHosts{}
	joins := newJoinLog()
	trans := cfg.Transport
	if trans == nil {
		if trans, err = openTransport(&cfg, gate, hosts, joins.reach); err != nil {
			st.Close()
			return nil, err
		}
	}
	rc := cfg.raftConfig()
	rc.Logger = raftLogger{Logger: rc.Logger, j: joins}
	n := &Node{cfg: cfg, fsm: f, st: st, trans: trans, gate: gate, log: cfg.Logger, joins: joins,
		notifyCh: make(chan bool, 16), done: make(chan struct{}), started: time.Now()}
	rc.NotifyCh = n.notifyCh
	snaps := &guardedSnapshots{SnapshotStore: st.snaps, dir: cfg.DataDir}
	st.snaps = appliedSnapshots{SnapshotStore: snaps, a: &n.applied}
	var rf raft.FSM = guardedFSM{FSM: f, snaps: snaps, log: cfg.Logger}
	if cfg.WrapFSM != nil {
		rf = cfg.WrapFSM(f)
	}
	rf = appliedFSM{FSM: rf, a: &n.applied}
	n.obs = observe(trans)
	r, err := raft.NewRaft(rc, rf, st.logs, st.db, st.snaps, n.obs)
	if err != nil {
		st.Close()
		if c, ok := trans.(io.Closer); ok && cfg.Transport == nil {
			c.Close()
		}
		return nil, fmt.Errorf("cluster: start raft: %w", err)
	}
	n.raft = r
	history := n.rewritesApplied
	gate.history.Store(&history)
	gate.raft.Store(r)
	n.countElections(r)
	if at, ok := trans.(*authTransport); ok {
		n.watchLeaderCrash(at)
	}
	joins.raft.Store(r)
	n.wg.Add(2)
	go n.watchLeadership()
	go func() {
		defer n.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-n.done; cancel() }()
		hosts.Follow(ctx, r, memberHostsInterval, cfg.Logger)
	}()
	return n, nil
}

// memberHostsInterval is how often the members' hosts are re-read from the
// configuration (and names resolved) for the handshake priority.
const memberHostsInterval = 5 * time.Second

// barrierRetry is the wait before a new leader retries its term's barrier
// (raft refuses at once during a leadership transfer).
const barrierRetry = 50 * time.Millisecond

// openTransport listens on the raft address with mutual TLS, bound to
// membership (see authTransport). reached hears of every peer that
// answered an append (see joinLog).
func openTransport(cfg *Config, gate *peerGate, hosts *MemberHosts, reached func(raft.ServerAddress)) (raft.Transport, error) {
	if cfg.TLS == nil || cfg.TLS.PeerID == nil {
		return nil, errors.New("cluster: raft needs the cluster TLS configuration and a peer identity check (there is no plaintext mode)")
	}
	adv, err := net.ResolveTCPAddr("tcp", cfg.AdvertiseAddr)
	if err != nil {
		return nil, fmt.Errorf("cluster: advertise address %q: %w", cfg.AdvertiseAddr, err)
	}
	// Members' addresses keep a share of the pending handshakes that a
	// flood from elsewhere cannot take.
	opts := []TLSStreamOption{WithPriorityHosts(hosts.Contains)}
	if cfg.OnHandshakeError != nil {
		opts = append(opts, WithHandshakeErrorHandler(cfg.OnHandshakeError))
	}
	stream, err := NewTLSStreamLayer(cfg.BindAddr, adv, cfg.TLS.Server, cfg.TLS.Client, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: listen on raft address %s: %w", cfg.BindAddr, err)
	}
	t := newAuthTransport(stream, gate, cfg.TLS.PeerID, cfg.Logger, cfg.OnPeerRefused)
	t.reached = reached
	return t, nil
}

// FSM returns the node's state machine, for local reads.
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// ID returns this node's id.
func (n *Node) ID() string { return n.cfg.NodeID }

// Raft exposes the underlying raft node. Production code goes through
// Node's own methods (status, membership, Reserve, reads); tests use it to
// wait on Barrier and applied indexes.
func (n *Node) Raft() *raft.Raft { return n.raft }

// IsLeader reports whether this node is the leader right now.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

func (n *Node) watchLeadership() {
	defer n.wg.Done()
	for {
		select {
		case <-n.done:
			n.stopLeading()
			return
		case leader := <-n.notifyCh:
			if leader {
				n.startLeading()
			} else {
				n.stopLeading()
			}
		}
	}
}

func (n *Node) startLeading() {
	n.stopLeading()
	ctx, cancel := context.WithCancel(context.Background())
	n.mu.Lock()
	n.leadStop = cancel
	n.mu.Unlock()
	fns := n.cfg.Leading
	n.leadWG.Add(1)
	go func() {
		defer n.leadWG.Done()
		start := time.Now()
		// Barrier commits a no-op of this term and waits until the FSM has
		// applied everything before it: only then does the local state
		// hold every watermark the previous leader committed. A barrier
		// that times out (a slow quorum) is retried for as long as this
		// node leads: giving up would leave a leader that never signs.
		for {
			err := n.raft.Barrier(n.cfg.ApplyTimeout).Error()
			if ctx.Err() != nil {
				return
			}
			if err == nil {
				break
			}
			if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
				return
			}
			// During a leadership transfer raft refuses at once: wait a
			// little rather than spin.
			n.log.Warn("leadership: barrier not committed yet; not serving validators until it is", "err", err)
			if !backoff.Sleep(ctx, barrierRetry) {
				return
			}
		}
		n.termReady.Store(true)
		n.log.Info("became leader", "barrier", time.Since(start).Round(time.Microsecond))
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); n.promoteCaughtUp(ctx) }()
		go func() { defer wg.Done(); n.trackMembers(ctx) }()
		for _, fn := range fns {
			wg.Add(1)
			go func() { defer wg.Done(); fn(ctx) }()
		}
		wg.Wait()
	}()
}

func (n *Node) stopLeading() {
	n.termReady.Store(false)
	n.mu.Lock()
	stop := n.leadStop
	n.leadStop = nil
	n.mu.Unlock()
	if stop == nil {
		return
	}
	stop()
	n.leadWG.Wait()
	n.log.Info("lost leadership")
}

// Shutdown stops raft and closes the stores. On the leader, call
// TransferLeadership first to hand over without an election timeout.
func (n *Node) Shutdown() error {
	n.closing.Do(func() { n.closeErr = n.shutdown() })
	return n.closeErr
}

func (n *Node) shutdown() error {
	close(n.done)
	n.wg.Wait()
	err := n.raft.Shutdown().Error()
	if c, ok := n.trans.(io.Closer); ok && n.cfg.Transport == nil {
		c.Close()
	}
	if cerr := n.st.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cluster: shutdown: %w", err)
	}
	return nil
}
