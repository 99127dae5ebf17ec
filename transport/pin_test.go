package transport

import (
	"context"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	cmtlog "github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/privval"
)

// secretListener is the node's privval TCP listener (SecretConnection on
// accept) with a key the test knows, so its node id can be pinned.
func secretListener(t *testing.T, key ed25519.PrivKey) *privval.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := privval.NewTCPListener(ln, key)
	privval.TCPListenerTimeoutAccept(5 * time.Second)(tl)
	t.Cleanup(func() { _ = tl.Close() })
	return tl
}

// TestPinnedNodeIDServes: tcp://<node id>@host:port with the id of the
// validator's SecretConnection key serves a real signer client.
func TestPinnedNodeIDServes(t *testing.T) {
	key := ed25519.GenPrivKey()
	tl := secretListener(t, key)
	ep := privval.NewSignerListenerEndpoint(cmtlog.NewNopLogger(), tl)
	client, err := privval.NewSignerClient(ep, testChainID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ep.IsRunning() {
			_ = ep.Stop()
		}
	})
	h := newFakeHandler()
	v := testValidator(tl.Addr().String())
	// Upper case as an operator may paste it: ids compare as CometBFT's
	// lower-case hex.
	v.Addr = "tcp://" + strings.ToUpper(string(p2p.PubKeyToID(key.PubKey()))) + "@" + tl.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startRun(t, ctx, v, h, Options{})

	pk, err := client.GetPubKey()
	if err != nil {
		t.Fatalf("GetPubKey through a pinned connection: %v", err)
	}
	if !pk.Equals(h.key.PubKey()) {
		t.Fatal("GetPubKey returned another key")
	}
	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestPinnedNodeIDMismatch: a validator whose SecretConnection key is not
// the pinned one gets no request served: each connection is closed right
// after the handshake, a warning names both ids, and redials back off as
// after a failed dial.
func TestPinnedNodeIDMismatch(t *testing.T) {
	listenerKey := ed25519.GenPrivKey()
	tl := secretListener(t, listenerKey)
	actual := string(p2p.PubKeyToID(listenerKey.PubKey()))
	var accepted, closedByUs atomic.Int64
	go func() {
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			go func() {
				defer c.Close()
				// EOF or reset means the signer closed its end; a timeout
				// means it kept a connection it should have dropped.
				_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
				if _, err := io.Copy(io.Discard, c); !isTimeout(err) {
					closedByUs.Add(1)
				}
			}()
		}
	}()
	pinned := string(p2p.PubKeyToID(ed25519.GenPrivKey().PubKey()))
	v := testValidator(tl.Addr().String())
	v.Addr = "tcp://" + pinned + "@" + tl.Addr().String()
	logger, logs := testLogger()
	states := newStateRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startRun(t, ctx, v, newFakeHandler(), Options{Logger: logger, OnState: states.record})

	const window = 2 * time.Second
	time.Sleep(window)
	n := accepted.Load()
	// Default schedule: 0, ~0.2, ~0.6, ~1.4 s; a loop without backoff
	// would make hundreds.
	if n < 2 || n > 8 {
		t.Fatalf("%d connections in %v, want 2..8 (redials with backoff)", n, window)
	}
	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	waitUntil(t, 4*time.Second, func() bool { return closedByUs.Load() == accepted.Load() }, "every connection closed by the signer")
	if got := states.count(StateConnected); got != 0 {
		t.Fatalf("reported connected %d times to a validator with the wrong key", got)
	}

	out := logs.String()
	if !strings.Contains(out, `level=WARN msg="transport: handshake failed"`) ||
		!strings.Contains(out, "validator node id mismatch: expected "+pinned+" (from the tcp:// address), got "+actual) {
		t.Fatalf("no warning naming both ids:\n%s", out)
	}
}
