package transport

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	cmtlog "github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/lp2p"
	"github.com/cometbft/cometbft/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
	lcrypto "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	libp2pnoise "github.com/libp2p/go-libp2p/p2p/security/noise"
)

func corruptEd25519() ed25519.PrivKey {
	k := ed25519.GenPrivKey()
	k[len(k)-1] ^= 1
	return k
}

func mustPeer(t *testing.T, k crypto.PrivKey) peer.ID {
	t.Helper()
	s, err := PeerID(k)
	if err != nil {
		t.Fatalf("PeerID: %v", err)
	}
	id, err := peer.Decode(s)
	if err != nil {
		t.Fatalf("peer.Decode(%q): %v", s, err)
	}
	return id
}

// startNoiseNode is the node side exactly as CometBFT builds it for
// priv_validator_laddr = noise://<signer-peer-id>@host:port
// (privval.NewSignerListenerFromAddr), with nodeKey standing in for
// node_key.json.
func startNoiseNode(t *testing.T, hostport string, nodeKey crypto.PrivKey, allowed ...peer.ID) *testNode {
	t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", hostport); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", hostport, err)
	}
	nl, err := privval.NewNoiseListener(ln, nodeKey, allowed)
	if err != nil {
		_ = ln.Close()
		t.Fatalf("noise listener: %v", err)
	}
	ep := privval.NewSignerListenerEndpoint(cmtlog.NewNopLogger(), nl)
	client, err := privval.NewSignerClient(ep, testChainID)
	if err != nil {
		_ = ln.Close()
		t.Fatalf("signer client: %v", err)
	}
	t.Cleanup(func() {
		if ep.IsRunning() {
			_ = ep.Stop()
		}
	})
	return &testNode{endpoint: ep, client: client, addr: ln.Addr().String()}
}

func noiseValidator(t *testing.T, hostport string, validatorPeer peer.ID, identity crypto.PrivKey) Validator {
	t.Helper()
	return Validator{
		ChainID:   testChainID,
		Addr:      "noise://" + validatorPeer.String() + "@" + hostport,
		Identity:  identity,
		Reconnect: true,
	}
}

func TestNoiseServesRealSignerClient(t *testing.T) {
	for _, tc := range []struct {
		name     string
		identity crypto.PrivKey
	}{
		{"ed25519", ed25519.GenPrivKey()},
		// The node accepts secp256k1 signer identities too.
		{"secp256k1", secp256k1.GenPrivKey()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nodeKey := ed25519.GenPrivKey()
			ourPeer := mustPeer(t, tc.identity)
			node := startNoiseNode(t, "127.0.0.1:0", nodeKey, ourPeer)
			h := newFakeHandler()
			logger, logs := testLogger()
			states := newStateRecorder()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			v := noiseValidator(t, node.addr, mustPeer(t, nodeKey), tc.identity)
			done := startRun(t, ctx, v, h, Options{Logger: logger, OnState: states.record})

			pk, err := node.client.GetPubKey()
			if err != nil {
				t.Fatalf("GetPubKey: %v", err)
			}
			if !pk.Equals(h.key.PubKey()) {
				t.Fatalf("GetPubKey returned a different key")
			}
			vote := &cmtproto.Vote{
				Type:             cmtproto.PrevoteType,
				Height:           5,
				Round:            0,
				Timestamp:        time.Now().UTC(),
				ValidatorAddress: h.key.PubKey().Address(),
			}
			if err := node.client.SignVote(testChainID, vote); err != nil {
				t.Fatalf("SignVote: %v", err)
			}
			if !h.key.PubKey().VerifySignature(types.VoteSignBytes(testChainID, vote), vote.Signature) {
				t.Fatalf("vote signature does not verify")
			}
			if h.pubKeys.Load() != 1 || h.votes.Load() != 1 {
				t.Fatalf("handler counts: pubkey=%d vote=%d", h.pubKeys.Load(), h.votes.Load())
			}

			// The validator restarts: same node key, same port.
			if err := node.endpoint.Stop(); err != nil {
				t.Fatalf("stop node: %v", err)
			}
			start := time.Now()
			node2 := startNoiseNode(t, node.addr, nodeKey, ourPeer)
			if _, err := node2.client.GetPubKey(); err != nil {
				t.Fatalf("GetPubKey on restarted node: %v", err)
			}
			if elapsed := time.Since(start); elapsed > 2*time.Second {
				t.Fatalf("redial took %v, want well under the node's 3 s budget", elapsed)
			}

			cancel()
			if err := waitRun(t, done, time.Second); err != nil {
				t.Fatalf("Run returned %v after cancel, want nil", err)
			}
			if got := states.count(StateConnected); got != 2 {
				t.Fatalf("saw %d connections, want 2", got)
			}
			if !strings.Contains(logs.String(), "peer_id="+ourPeer.String()) {
				t.Fatalf("our peer ID is not logged for the validator operator:\n%s", logs.String())
			}
		})
	}
}

// dialsPerSecond runs v for one second and returns how many dials it made.
func dialsPerSecond(t *testing.T, v Validator, o Options) (dials, connected int) {
	t.Helper()
	states := newStateRecorder()
	o.OnState = states.record
	ctx, cancel := context.WithCancel(context.Background())
	done := startRun(t, ctx, v, newFakeHandler(), o)
	time.Sleep(time.Second)
	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	return states.count(StateConnecting), states.count(StateConnected)
}

func TestNoiseWrongValidatorPeerID(t *testing.T) {
	nodeKey := ed25519.GenPrivKey()
	identity := ed25519.GenPrivKey()
	node := startNoiseNode(t, "127.0.0.1:0", nodeKey, mustPeer(t, identity))
	nodePeer := mustPeer(t, nodeKey)
	pinned := mustPeer(t, ed25519.GenPrivKey()) // not the node's

	t.Run("backs-off", func(t *testing.T) {
		logger, logs := testLogger()
		dials, connected := dialsPerSecond(t, noiseValidator(t, node.addr, pinned, identity), Options{Logger: logger})
		t.Logf("%d dials in 1s", dials)
		// Default schedule: 0, ~0.2, ~0.6 s; a hot loop would make hundreds.
		if dials < 2 || dials > 6 {
			t.Fatalf("%d dials in 1s, want 2..6", dials)
		}
		if connected != 0 {
			t.Fatalf("reported connected %d times to a validator with the wrong peer ID", connected)
		}
		out := logs.String()
		if !strings.Contains(out, `level=WARN msg="transport: handshake failed"`) {
			t.Fatalf("expected a warn-level handshake log, got:\n%s", out)
		}
		for _, id := range []peer.ID{pinned, nodePeer} {
			if !strings.Contains(out, "handshake failed") || !strings.Contains(out, id.String()) {
				t.Fatalf("handshake log does not name %s:\n%s", id, out)
			}
		}
	})

	t.Run("error-names-both-ids", func(t *testing.T) {
		v := noiseValidator(t, node.addr, pinned, identity)
		v.Reconnect = false
		err := waitRun(t, startRun(t, context.Background(), v, newFakeHandler(), Options{}), 3*time.Second)
		if err == nil {
			t.Fatalf("Run returned nil, want a peer ID mismatch")
		}
		msg := err.Error()
		if !strings.Contains(msg, "expected "+pinned.String()) || !strings.Contains(msg, "got "+nodePeer.String()) {
			t.Fatalf("error %q does not name the expected and the actual peer ID", msg)
		}
		var mismatch sec.ErrPeerIDMismatch
		if !errors.As(err, &mismatch) || mismatch.Expected != pinned || mismatch.Actual != nodePeer {
			t.Fatalf("error %v does not wrap libp2p's ErrPeerIDMismatch{%s, %s}", err, pinned, nodePeer)
		}
	})

	// The failed handshakes left nothing in the node's accept queue: a
	// correctly configured signer is served at once.
	t.Run("node-still-serves", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := startRun(t, ctx, noiseValidator(t, node.addr, nodePeer, identity), newFakeHandler(), Options{})
		if _, err := node.client.GetPubKey(); err != nil {
			t.Fatalf("GetPubKey: %v", err)
		}
		cancel()
		if err := waitRun(t, done, time.Second); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}

func TestNoiseNotAllowListed(t *testing.T) {
	nodeKey := ed25519.GenPrivKey()
	identity := ed25519.GenPrivKey()
	ourPeer := mustPeer(t, identity)
	// The node allow-lists some other signer.
	node := startNoiseNode(t, "127.0.0.1:0", nodeKey, mustPeer(t, ed25519.GenPrivKey()))
	v := noiseValidator(t, node.addr, mustPeer(t, nodeKey), identity)

	t.Run("backs-off", func(t *testing.T) {
		logger, logs := testLogger()
		dials, connected := dialsPerSecond(t, v, Options{Logger: logger})
		t.Logf("%d dials in 1s", dials)
		if dials < 2 || dials > 6 {
			t.Fatalf("%d dials in 1s, want 2..6", dials)
		}
		// The close right after the handshake is a failed dial, not a
		// connection: nothing reports this signer as connected.
		if connected != 0 {
			t.Fatalf("reported connected %d times to a node that refuses us", connected)
		}
		out := logs.String()
		if !strings.Contains(out, "does not allow-list our peer ID "+ourPeer.String()) {
			t.Fatalf("log does not explain the refusal with our peer ID:\n%s", out)
		}
	})

	t.Run("no-reconnect-returns-error", func(t *testing.T) {
		v := v
		v.Reconnect = false
		err := waitRun(t, startRun(t, context.Background(), v, newFakeHandler(), Options{}), 3*time.Second)
		if err == nil || !strings.Contains(err.Error(), ourPeer.String()) {
			t.Fatalf("Run returned %v, want an error naming our peer ID", err)
		}
	})
}

// noCloseConn keeps the test's fake responder from closing the socket
// itself, so that only the dialer can end it.
type noCloseConn struct{ net.Conn }

func (noCloseConn) Close() error { return nil }

func TestNoiseHandshakeFailureClosesConnection(t *testing.T) {
	respKey, err := lcrypto.UnmarshalEd25519PrivateKey(ed25519.GenPrivKey())
	if err != nil {
		t.Fatal(err)
	}
	responder, err := libp2pnoise.New(libp2pnoise.ID, respKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		behave func(net.Conn) bool
		watch  bool
	}{
		// A genuine Noise responder whose identity is not the pinned one:
		// we learn it from its first message and must hang up.
		{"wrong-peer", func(c net.Conn) bool {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, _ = responder.SecureInbound(ctx, noCloseConn{c}, "")
			return true
		}, true},
		// A length prefix announcing 64 KiB that never comes.
		{"garbage", func(c net.Conn) bool {
			_, _ = c.Write([]byte{0xff, 0xff, 0x01})
			return true
		}, true},
		{"silent", func(net.Conn) bool { return true }, true},
		{"close", func(c net.Conn) bool { _ = c.Close(); return false }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rl := startRawListener(t, tc.behave)
			logger, logs := testLogger()
			states := newStateRecorder()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pinned := mustPeer(t, ed25519.GenPrivKey())
			done := startRun(t, ctx, noiseValidator(t, rl.addr(), pinned, ed25519.GenPrivKey()), newFakeHandler(),
				Options{DialTimeout: 300 * time.Millisecond, Logger: logger, OnState: states.record})

			const window = 2 * time.Second
			time.Sleep(window)
			n := rl.accepted.Load()
			t.Logf("%d connections in %v", n, window)
			if n < 2 || n > 8 {
				t.Fatalf("%d connections in %v, want 2..8 (redials with backoff)", n, window)
			}
			if tc.watch {
				if closed := rl.closedByPeer.Load(); closed < n-1 {
					t.Fatalf("only %d of %d failed connections closed by the dialer", closed, n)
				}
			}
			if states.count(StateConnected) != 0 {
				t.Fatalf("reported connected although every handshake failed")
			}

			cancel()
			if err := waitRun(t, done, time.Second); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if tc.watch {
				waitUntil(t, 6*time.Second, func() bool {
					return rl.closedByPeer.Load()+rl.stuck.Load() == rl.accepted.Load()
				}, "every accepted connection to be closed by the dialer")
				if rl.stuck.Load() != 0 {
					t.Fatalf("%d connections leaked", rl.stuck.Load())
				}
			}
			out := logs.String()
			if !strings.Contains(out, `level=WARN msg="transport: handshake failed"`) {
				t.Fatalf("expected a warn-level handshake log, got:\n%s", out)
			}
			if tc.name == "wrong-peer" && !strings.Contains(out, "expected "+pinned.String()) {
				t.Fatalf("mismatch log does not name the pinned peer ID:\n%s", out)
			}
		})
	}
}

func TestPeerIDMatchesCometBFT(t *testing.T) {
	keys := []crypto.PrivKey{
		ed25519.GenPrivKey(),
		ed25519.GenPrivKeyFromSecret([]byte("kms-ha")),
		secp256k1.GenPrivKey(),
	}
	for _, k := range keys {
		got, err := PeerID(k)
		if err != nil {
			t.Fatalf("PeerID(%s): %v", k.Type(), err)
		}
		// What `cometbft show-node-id --libp2p` prints for the same key.
		cmt, err := lp2p.IDFromPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if got != cmt.String() {
			t.Fatalf("PeerID(%s) = %s, cometbft says %s", k.Type(), got, cmt)
		}
		// Derived again from the public key alone.
		var pub lcrypto.PubKey
		switch k.Type() {
		case ed25519.KeyType:
			pub, err = lcrypto.UnmarshalEd25519PublicKey(k.PubKey().Bytes())
		default:
			pub, err = lcrypto.UnmarshalSecp256k1PublicKey(k.PubKey().Bytes())
		}
		if err != nil {
			t.Fatal(err)
		}
		fromPub, err := peer.IDFromPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if got != fromPub.String() {
			t.Fatalf("PeerID(%s) = %s, from the public key %s", k.Type(), got, fromPub)
		}
		if k.Type() == ed25519.KeyType && !strings.HasPrefix(got, "12D3KooW") {
			t.Fatalf("ed25519 peer ID %s lacks the 12D3KooW prefix", got)
		}
	}

	for _, c := range []struct {
		name string
		k    crypto.PrivKey
		want string
	}{
		{"nil", nil, "identity key"},
		{"short", ed25519.PrivKey(make([]byte, 10)), "bytes"},
		{"corrupt", corruptEd25519(), "corrupt"},
	} {
		if _, err := PeerID(c.k); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("PeerID(%s): error %v, want one mentioning %q", c.name, err, c.want)
		}
	}
}

// The probe after the handshake must neither lose nor reorder bytes the node
// sends meanwhile (its first request often arrives during the probe).
func TestProbedConn(t *testing.T) {
	t.Run("data-is-kept", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go func() { _, _ = b.Write([]byte("first")) }()
		pc := &probedConn{Conn: a}
		start := time.Now()
		if err := pc.probeClose(context.Background(), 2*time.Second); err != nil {
			t.Fatalf("probe: %v", err)
		}
		if time.Since(start) > time.Second {
			t.Fatalf("probe waited for its deadline although data arrived")
		}
		go func() { _, _ = b.Write([]byte("second")) }()
		buf := make([]byte, 11)
		got := 0
		for got < len(buf) {
			n, err := pc.Read(buf[got:])
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			got += n
		}
		if string(buf) != "firstsecond" {
			t.Fatalf("read %q, want %q", buf, "firstsecond")
		}
	})
	t.Run("silence-is-alive", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		pc := &probedConn{Conn: a}
		if err := pc.probeClose(context.Background(), 50*time.Millisecond); err != nil {
			t.Fatalf("probe: %v", err)
		}
		// The probe's deadline must not linger on the connection.
		go func() { time.Sleep(100 * time.Millisecond); _, _ = b.Write([]byte("x")) }()
		if _, err := pc.Read(make([]byte, 1)); err != nil {
			t.Fatalf("read after probe: %v", err)
		}
	})
	t.Run("close-is-reported", func(t *testing.T) {
		a, b := net.Pipe()
		defer a.Close()
		_ = b.Close()
		pc := &probedConn{Conn: a}
		if err := pc.probeClose(context.Background(), time.Second); err == nil {
			t.Fatalf("probe reported a closed connection as alive")
		}
	})
}
