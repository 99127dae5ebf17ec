package transport

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	cmtlog "github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
)

// socketPath returns a path short enough for sun_path (108 bytes), which
// t.TempDir's test-named directories can exceed.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kmsha")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "pv.sock")
}

// startUnixNode is the node side exactly as CometBFT builds it for
// priv_validator_laddr = unix://path (privval.NewSignerListener).
func startUnixNode(t *testing.T, path string) *testNode {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatalf("listen %s: %v", path, err)
	}
	ep := privval.NewSignerListenerEndpoint(cmtlog.NewNopLogger(), privval.NewUnixListener(ln))
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
	return &testNode{endpoint: ep, client: client, addr: path}
}

func TestUnixServesAndRedials(t *testing.T) {
	path := socketPath(t)
	node := startUnixNode(t, path)
	h := newFakeHandler()
	states := newStateRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// No identity: the node's unix listener authenticates nobody.
	v := Validator{ChainID: testChainID, Addr: "unix://" + path, Reconnect: true}
	done := startRun(t, ctx, v, h, Options{OnState: states.record})

	pk, err := node.client.GetPubKey()
	if err != nil {
		t.Fatalf("GetPubKey: %v", err)
	}
	if !pk.Equals(h.key.PubKey()) {
		t.Fatalf("GetPubKey returned a different key")
	}
	vote := &cmtproto.Vote{
		Type:             cmtproto.PrecommitType,
		Height:           3,
		Round:            2,
		Timestamp:        time.Now().UTC(),
		ValidatorAddress: h.key.PubKey().Address(),
	}
	if err := node.client.SignVote(testChainID, vote); err != nil {
		t.Fatalf("SignVote: %v", err)
	}
	if !h.key.PubKey().VerifySignature(types.VoteSignBytes(testChainID, vote), vote.Signature) {
		t.Fatalf("vote signature does not verify")
	}

	// The listener goes away (its socket file with it) and comes back.
	if err := node.endpoint.Stop(); err != nil {
		t.Fatalf("stop node: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // a few failed dials on a missing socket
	start := time.Now()
	node2 := startUnixNode(t, path)
	if _, err := node2.client.GetPubKey(); err != nil {
		t.Fatalf("GetPubKey on restarted listener: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Fatalf("redial took %v, want well under the node's 3 s budget", elapsed)
	}
	if got := states.count(StateConnected); got != 2 {
		t.Fatalf("saw %d connections, want 2", got)
	}
	if got := h.pubKeys.Load(); got != 2 {
		t.Fatalf("handler saw %d pubkey requests, want 2", got)
	}

	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
}
