package cluster_test

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/pki"
)

// tlsCA is a cluster CA in a temp dir that issues node certificates.
type tlsCA struct {
	t   *testing.T
	dir string
}

func newTLSCA(t *testing.T) *tlsCA {
	t.Helper()
	ca := &tlsCA{t: t, dir: filepath.Join(t.TempDir(), "ca")}
	if err := pki.CreateCA(ca.dir, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	return ca
}

func (ca *tlsCA) node(id string, hosts ...string) (server, client *tls.Config) {
	ca.t.Helper()
	if len(hosts) == 0 {
		hosts = []string{"127.0.0.1"}
	}
	out := filepath.Join(ca.t.TempDir(), id)
	if err := pki.Issue(ca.dir, pki.IssueOptions{NodeID: id, Hosts: hosts, OutDir: out}); err != nil {
		ca.t.Fatal(err)
	}
	f := pki.Files{CA: filepath.Join(ca.dir, pki.CACertFile), Cert: filepath.Join(out, pki.NodeCertFile), Key: filepath.Join(out, pki.NodeKeyFile)}
	server, err := pki.ServerConfig(f)
	if err != nil {
		ca.t.Fatal(err)
	}
	client, err = pki.ClientConfig(f, "")
	if err != nil {
		ca.t.Fatal(err)
	}
	return server, client
}

// countingStream records what its Accept hands to raft.
type countingStream struct {
	raft.StreamLayer
	accepted atomic.Int32
}

func (c *countingStream) Accept() (net.Conn, error) {
	conn, err := c.StreamLayer.Accept()
	if err == nil {
		c.accepted.Add(1)
	}
	return conn, err
}

// tlsPeer is a raft NetworkTransport over the TLS stream layer.
type tlsPeer struct {
	id     string
	stream *countingStream
	trans  *raft.NetworkTransport
	// rejected receives every inbound connection dropped before raft.
	rejected chan error
}

func (p *tlsPeer) addr() raft.ServerAddress { return p.trans.LocalAddr() }

func startTLSPeer(t *testing.T, id string, server, client *tls.Config, opts ...cluster.TLSStreamOption) *tlsPeer {
	t.Helper()
	p := &tlsPeer{id: id, rejected: make(chan error, 64)}
	opts = append(opts, cluster.WithHandshakeErrorHandler(func(remote net.Addr, err error) {
		select {
		case p.rejected <- err:
		default:
		}
	}))
	sl, err := cluster.NewTLSStreamLayer("127.0.0.1:0", nil, server, client, opts...)
	if err != nil {
		t.Fatal(err)
	}
	p.stream = &countingStream{StreamLayer: sl}
	p.trans = raft.NewNetworkTransport(p.stream, 3, 2*time.Second, io.Discard)
	t.Cleanup(func() { p.trans.Close() })
	return p
}

// answer replies to every AppendEntries that reaches p's raft side and
// counts them.
func (p *tlsPeer) answer(t *testing.T) *atomic.Int32 {
	var n atomic.Int32
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case rpc := <-p.trans.Consumer():
				n.Add(1)
				rpc.Respond(&raft.AppendEntriesResponse{Term: 1, Success: true}, nil)
			case <-done:
				return
			}
		}
	}()
	return &n
}

func appendEntries(trans raft.Transport, target raft.ServerAddress) error {
	var resp raft.AppendEntriesResponse
	err := trans.AppendEntries("target", target, &raft.AppendEntriesRequest{
		RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("src"), Addr: []byte("src")},
		Term:      1,
	}, &resp)
	if err == nil && !resp.Success {
		err = errors.New("not successful")
	}
	return err
}

func waitRejected(t *testing.T, p *tlsPeer, why string) error {
	t.Helper()
	select {
	case err := <-p.rejected:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s: %s never reported a refused handshake", why, p.id)
		return nil
	}
}

type countFSM struct {
	mu      sync.Mutex
	applied []string
}

func (f *countFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = append(f.applied, string(l.Data))
	return nil
}

func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) { return nil, errors.New("no snapshots here") }
func (f *countFSM) Restore(io.ReadCloser) error         { return errors.New("no snapshots here") }

func (f *countFSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.applied)
}

// TestTLSStreamRaftElectsLeaderAndReplicates runs three raft nodes whose
// only link is the mutual TLS stream layer: they elect a leader and
// replicate an entry to every node.
func TestTLSStreamRaftElectsLeaderAndReplicates(t *testing.T) {
	ca := newTLSCA(t)
	var peers []*tlsPeer
	var conf raft.Configuration
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("n%d", i)
		srv, cli := ca.node(id)
		p := startTLSPeer(t, id, srv, cli)
		peers = append(peers, p)
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: p.addr()})
	}
	var nodes []*raft.Raft
	var fsms []*countFSM
	for _, p := range peers {
		rc := raft.DefaultConfig()
		rc.LocalID = raft.ServerID(p.id)
		rc.HeartbeatTimeout = 200 * time.Millisecond
		rc.ElectionTimeout = 200 * time.Millisecond
		rc.LeaderLeaseTimeout = 100 * time.Millisecond
		rc.CommitTimeout = 5 * time.Millisecond
		rc.Logger = hclog.NewNullLogger()
		store, snaps := raft.NewInmemStore(), raft.NewInmemSnapshotStore()
		if err := raft.BootstrapCluster(rc, store, store, snaps, p.trans, conf); err != nil {
			t.Fatal(err)
		}
		f := &countFSM{}
		r, err := raft.NewRaft(rc, f, store, store, snaps, p.trans)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Shutdown().Error() })
		nodes = append(nodes, r)
		fsms = append(fsms, f)
	}

	// Under -race a short lease can expire while the first connections
	// are set up; the leader then steps down and the entry is applied by
	// the next one, as raft intends. Retry on whoever leads.
	var leader *raft.Raft
	var applyErr error = errors.New("no leader elected over TLS")
	for deadline := time.Now().Add(10 * time.Second); applyErr != nil && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, r := range nodes {
			if r.State() == raft.Leader {
				leader = r
				applyErr = r.Apply([]byte("watermark"), 2*time.Second).Error()
				break
			}
		}
	}
	if applyErr != nil {
		t.Fatalf("apply: %v", applyErr)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ok := true
		for _, f := range fsms {
			// At least: an apply that lost leadership may still commit.
			ok = ok && f.count() >= 1
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry not applied everywhere: %d %d %d", fsms[0].count(), fsms[1].count(), fsms[2].count())
		}
	}
	for i, p := range peers {
		// The leader dials its followers; they need not dial it.
		if nodes[i] != leader && p.stream.accepted.Load() == 0 {
			t.Errorf("follower %s accepted no connection", p.id)
		}
		select {
		case err := <-p.rejected:
			t.Errorf("%s refused a cluster member: %v", p.id, err)
		default:
		}
	}
}

// TestTLSStreamRefusesPeersOutsideTheCluster: a peer with a certificate
// from another CA, a peer without a certificate, and a plaintext raft
// peer can neither dial in nor be dialed, and nothing of theirs ever
// reaches raft.
func TestTLSStreamRefusesPeersOutsideTheCluster(t *testing.T) {
	ca := newTLSCA(t)
	srv, cli := ca.node("good")
	good := startTLSPeer(t, "good", srv, cli)
	goodRPCs := good.answer(t)

	// Sanity: a member gets through.
	mSrv, mCli := ca.node("member")
	member := startTLSPeer(t, "member", mSrv, mCli)
	if err := appendEntries(member.trans, good.addr()); err != nil {
		t.Fatalf("a cluster member could not reach good: %v", err)
	}
	good.stream.accepted.Store(0)
	goodRPCs.Store(0)

	other := newTLSCA(t)
	xSrv, xCli := other.node("x")
	// The rogue trusts both CAs, so any refusal comes from the good node.
	both := xSrv.ClientCAs.Clone()
	both.AppendCertsFromPEM(mustRead(t, filepath.Join(ca.dir, pki.CACertFile)))
	xSrv.ClientCAs, xCli.RootCAs = both, both
	foreign := startTLSPeer(t, "foreign", xSrv, xCli)
	foreignRPCs := foreign.answer(t)

	noCertCli := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: both}
	noCert := startTLSPeer(t, "nocert", xSrv, noCertCli)

	plain, err := raft.NewTCPTransport("127.0.0.1:0", nil, 3, 2*time.Second, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	var plainRPCs atomic.Int32
	go func() {
		for range plain.Consumer() {
			plainRPCs.Add(1)
		}
	}()

	t.Run("dial in", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			trans raft.Transport
			want  string
		}{
			{"certificate from another CA", foreign.trans, "unknown authority"},
			{"no certificate", noCert.trans, "certificate"},
			{"plaintext raft", plain, "does not look like a TLS handshake"},
		} {
			if err := appendEntries(c.trans, good.addr()); err == nil {
				t.Errorf("%s: RPC to good succeeded", c.name)
			}
			if err := waitRejected(t, good, c.name); !strings.Contains(err.Error(), c.want) {
				t.Errorf("%s: refused with %q; want it to say %q", c.name, err, c.want)
			}
		}
		if n := good.stream.accepted.Load(); n != 0 {
			t.Errorf("good's Accept returned %d connections from outside the cluster", n)
		}
		if n := goodRPCs.Load(); n != 0 {
			t.Errorf("raft on good received %d RPCs from outside the cluster", n)
		}
	})

	t.Run("be dialed", func(t *testing.T) {
		err := appendEntries(good.trans, foreign.addr())
		if err == nil || !strings.Contains(err.Error(), "unknown authority") {
			t.Errorf("good dialed a node with a certificate from another CA: %v", err)
		}
		waitRejected(t, foreign, "good dialing foreign")
		if n := foreign.stream.accepted.Load(); n != 0 || foreignRPCs.Load() != 0 {
			t.Errorf("foreign accepted %d connections and %d RPCs from good", n, foreignRPCs.Load())
		}
		if err := appendEntries(good.trans, plain.LocalAddr()); err == nil {
			t.Error("good completed an RPC with a plaintext raft node")
		}
		if n := plainRPCs.Load(); n != 0 {
			t.Errorf("the plaintext node received %d RPCs", n)
		}
	})
}

// TestTLSStreamDialVerifiesTheHostDialed: a certificate issued for
// 127.0.0.1 only is refused when its node is dialed as localhost.
func TestTLSStreamDialVerifiesTheHostDialed(t *testing.T) {
	ca := newTLSCA(t)
	aSrv, aCli := ca.node("a", "127.0.0.1")
	bSrv, bCli := ca.node("b", "127.0.0.1")
	a := startTLSPeer(t, "a", aSrv, aCli)
	a.answer(t)
	b := startTLSPeer(t, "b", bSrv, bCli)
	_, port, _ := net.SplitHostPort(string(a.addr()))
	if err := appendEntries(b.trans, raft.ServerAddress("127.0.0.1:"+port)); err != nil {
		t.Fatalf("by IP: %v", err)
	}
	err := appendEntries(b.trans, raft.ServerAddress("localhost:"+port))
	if err == nil || !strings.Contains(err.Error(), "not valid for") || !strings.Contains(err.Error(), "localhost") {
		t.Fatalf("by a name the certificate does not carry: %v", err)
	}
}

// TestTLSStreamStalledHandshakesDoNotBlockAccept: peers that connect and
// never finish (or never start) a handshake do not delay a member, and
// are dropped after the handshake timeout.
func TestTLSStreamStalledHandshakesDoNotBlockAccept(t *testing.T) {
	ca := newTLSCA(t)
	srv, cli := ca.node("a")
	a := startTLSPeer(t, "a", srv, cli, cluster.WithHandshakeTimeout(time.Second))
	rpcs := a.answer(t)
	var stalled []net.Conn
	for i := 0; i < 5; i++ {
		c, err := net.Dial("tcp", string(a.addr()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i%2 == 1 {
			c.Write([]byte{0x16, 0x03, 0x01}) // the start of a ClientHello, and no more
		}
		stalled = append(stalled, c)
	}
	bSrv, bCli := ca.node("b")
	b := startTLSPeer(t, "b", bSrv, bCli)
	start := time.Now()
	if err := appendEntries(b.trans, a.addr()); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 800*time.Millisecond {
		t.Errorf("a member's RPC took %v behind stalled handshakes", d)
	}
	if rpcs.Load() != 1 {
		t.Errorf("%d RPCs reached raft, want 1", rpcs.Load())
	}
	for range stalled {
		if err := waitRejected(t, a, "stalled handshake"); !strings.Contains(err.Error(), "timeout") && !strings.Contains(err.Error(), "deadline") {
			t.Errorf("stalled handshake dropped with %v; want a timeout", err)
		}
	}
	for _, c := range stalled {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("stalled connection not closed by the server: %v", err)
		}
	}
	if n := a.stream.accepted.Load(); n != 1 {
		t.Errorf("Accept returned %d connections, want 1 (the member's)", n)
	}
}

func TestTLSStreamRefusesWeakConfigs(t *testing.T) {
	ca := newTLSCA(t)
	srv, cli := ca.node("a")

	lax := srv.Clone()
	lax.ClientAuth = tls.VerifyClientCertIfGiven
	if _, err := cluster.NewTLSStreamLayer("127.0.0.1:0", nil, lax, cli); err == nil {
		t.Error("accepted a server config that does not require client certificates")
	}
	insecure := cli.Clone()
	insecure.InsecureSkipVerify = true
	if _, err := cluster.NewTLSStreamLayer("127.0.0.1:0", nil, srv, insecure); err == nil {
		t.Error("accepted a client config that skips verification")
	}
	if _, err := cluster.NewTLSStreamLayer("127.0.0.1:0", nil, nil, cli); err == nil {
		t.Error("accepted no server config")
	}
	if _, err := cluster.NewTLSStreamLayer("0.0.0.0:0", nil, srv, cli); err == nil || !strings.Contains(err.Error(), "advertise") {
		t.Errorf("wildcard bind without an advertise address: %v", err)
	}
	adv := &net.TCPAddr{IP: net.ParseIP("10.0.0.1"), Port: 7001}
	sl, err := cluster.NewTLSStreamLayer("0.0.0.0:0", adv, srv, cli)
	if err != nil {
		t.Fatal(err)
	}
	if sl.Addr().String() != "10.0.0.1:7001" {
		t.Errorf("Addr() = %s, want the advertise address", sl.Addr())
	}
	if err := sl.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := sl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v", err)
	}
	sl.Close() // twice is harmless
	if _, err := sl.Dial("127.0.0.1:1", time.Second); err == nil {
		t.Error("Dial after Close succeeded")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
