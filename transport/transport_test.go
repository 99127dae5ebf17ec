package transport

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	cryptoenc "github.com/cometbft/cometbft/crypto/encoding"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	cmtlog "github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/libs/protoio"
	"github.com/cometbft/cometbft/privval"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
)

const testChainID = "test-chain"

// fakeHandler answers like a signer without any slashing protection.
type fakeHandler struct {
	key ed25519.PrivKey

	pubKeys, pings, votes, proposals atomic.Int64
	// block, if non-nil, makes Handle wait for ctx to be done and report
	// the ctx error on the channel.
	block chan error
}

func newFakeHandler() *fakeHandler { return &fakeHandler{key: ed25519.GenPrivKey()} }

func (f *fakeHandler) Handle(ctx context.Context, chainID string, req privvalproto.Message) privvalproto.Message {
	if f.block != nil {
		<-ctx.Done()
		f.block <- ctx.Err()
		return wrap(&privvalproto.PingResponse{})
	}
	switch r := req.Sum.(type) {
	case *privvalproto.Message_PubKeyRequest:
		f.pubKeys.Add(1)
		if r.PubKeyRequest.ChainId != chainID {
			return wrap(&privvalproto.PubKeyResponse{Error: &privvalproto.RemoteSignerError{Description: "wrong chain"}})
		}
		pk, err := cryptoenc.PubKeyToProto(f.key.PubKey())
		if err != nil {
			return wrap(&privvalproto.PubKeyResponse{Error: &privvalproto.RemoteSignerError{Description: err.Error()}})
		}
		return wrap(&privvalproto.PubKeyResponse{PubKey: pk})
	case *privvalproto.Message_PingRequest:
		f.pings.Add(1)
		return wrap(&privvalproto.PingResponse{})
	case *privvalproto.Message_SignVoteRequest:
		f.votes.Add(1)
		vote := r.SignVoteRequest.Vote
		sig, err := f.key.Sign(types.VoteSignBytes(chainID, vote))
		if err != nil {
			return wrap(&privvalproto.SignedVoteResponse{Error: &privvalproto.RemoteSignerError{Description: err.Error()}})
		}
		vote.Signature = sig
		return wrap(&privvalproto.SignedVoteResponse{Vote: *vote})
	case *privvalproto.Message_SignProposalRequest:
		f.proposals.Add(1)
		return wrap(&privvalproto.SignedProposalResponse{
			Error: &privvalproto.RemoteSignerError{Code: 7, Description: "refused by test"},
		})
	default:
		return wrap(&privvalproto.PingResponse{})
	}
}

func wrap(m any) privvalproto.Message {
	switch m := m.(type) {
	case *privvalproto.PubKeyResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_PubKeyResponse{PubKeyResponse: m}}
	case *privvalproto.PingResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_PingResponse{PingResponse: m}}
	case *privvalproto.PingRequest:
		return privvalproto.Message{Sum: &privvalproto.Message_PingRequest{PingRequest: m}}
	case *privvalproto.SignedVoteResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_SignedVoteResponse{SignedVoteResponse: m}}
	case *privvalproto.SignedProposalResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_SignedProposalResponse{SignedProposalResponse: m}}
	}
	panic("wrap: unsupported type")
}

// testNode is the node side exactly as CometBFT builds it for
// priv_validator_laddr = tcp://...
type testNode struct {
	endpoint *privval.SignerListenerEndpoint
	client   *privval.SignerClient
	addr     string
}

func startNode(t *testing.T, hostport string) *testNode {
	t.Helper()
	var ln net.Listener
	var err error
	// Rebinding a just-closed port can race with the kernel; retry briefly.
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", hostport); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", hostport, err)
	}
	ep := privval.NewSignerListenerEndpoint(cmtlog.NewNopLogger(), privval.NewTCPListener(ln, ed25519.GenPrivKey()))
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

// startRun runs Run in the background and returns a channel with its result.
// Logs go to the test's output unless the test captures them itself.
func startRun(t *testing.T, ctx context.Context, v Validator, h Handler, o Options) <-chan error {
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		done <- Run(ctx, v, h, o)
	}()
	// Logging to t.Output after the test ends panics, so even a failing test
	// waits for Run (its deferred cancel has run by then).
	t.Cleanup(func() {
		select {
		case <-finished:
		case <-time.After(5 * time.Second):
			t.Errorf("Run still running after the test ended")
		}
	})
	return done
}

func waitRun(t *testing.T, done <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("Run did not return within %v", within)
		return nil
	}
}

type stateRecorder struct {
	mu     sync.Mutex
	states []string
	ch     chan string
}

func newStateRecorder() *stateRecorder { return &stateRecorder{ch: make(chan string, 1024)} }

func (s *stateRecorder) record(_ Validator, state string) {
	s.mu.Lock()
	s.states = append(s.states, state)
	s.mu.Unlock()
	select {
	case s.ch <- state:
	default:
	}
}

func (s *stateRecorder) count(state string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, st := range s.states {
		if st == state {
			n++
		}
	}
	return n
}

func (s *stateRecorder) waitFor(t *testing.T, state string, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case st := <-s.ch:
			if st == state {
				return
			}
		case <-deadline:
			t.Fatalf("state %q not reached within %v", state, within)
		}
	}
}

// syncBuffer collects slog output from several goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testLogger() (*slog.Logger, *syncBuffer) {
	buf := &syncBuffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

func testValidator(addr string) Validator {
	return Validator{ChainID: testChainID, Addr: "tcp://" + addr, Identity: ed25519.GenPrivKey(), Reconnect: true}
}

func TestServesRealSignerClient(t *testing.T) {
	node := startNode(t, "127.0.0.1:0")
	h := newFakeHandler()
	logger, logs := testLogger()
	v := testValidator(node.addr)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startRun(t, ctx, v, h, Options{Logger: logger})

	pk, err := node.client.GetPubKey()
	if err != nil {
		t.Fatalf("GetPubKey: %v", err)
	}
	if !pk.Equals(h.key.PubKey()) {
		t.Fatalf("GetPubKey returned a different key")
	}

	if err := node.client.Ping(); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if h.pings.Load() != 1 {
		t.Fatalf("handler saw %d pings, want 1", h.pings.Load())
	}

	vote := &cmtproto.Vote{
		Type:             cmtproto.PrecommitType,
		Height:           10,
		Round:            1,
		Timestamp:        time.Now().UTC(),
		ValidatorAddress: h.key.PubKey().Address(),
	}
	if err := node.client.SignVote(testChainID, vote); err != nil {
		t.Fatalf("SignVote: %v", err)
	}
	if !h.key.PubKey().VerifySignature(types.VoteSignBytes(testChainID, vote), vote.Signature) {
		t.Fatalf("vote signature does not verify")
	}

	// Refusals travel back as RemoteSignerError.
	err = node.client.SignProposal(testChainID, &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: 10})
	var rse *privval.RemoteSignerError
	if !errors.As(err, &rse) || rse.Code != 7 {
		t.Fatalf("SignProposal: got %v, want RemoteSignerError code 7", err)
	}

	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run returned %v after cancel, want nil", err)
	}
	if h.pubKeys.Load() != 1 || h.votes.Load() != 1 || h.proposals.Load() != 1 {
		t.Fatalf("handler counts: pubkey=%d vote=%d proposal=%d", h.pubKeys.Load(), h.votes.Load(), h.proposals.Load())
	}

	out := logs.String()
	if !strings.Contains(out, "transport: connected") || !strings.Contains(out, "chain="+testChainID) {
		t.Fatalf("expected a connect log with the chain, got:\n%s", out)
	}
	key := v.Identity.Bytes()
	for _, enc := range []string{hex.EncodeToString(key), strings.ToUpper(hex.EncodeToString(key)), base64.StdEncoding.EncodeToString(key)} {
		if strings.Contains(out, enc) {
			t.Fatalf("identity key material found in logs")
		}
	}
}

func TestRedialsAfterNodeRestart(t *testing.T) {
	node1 := startNode(t, "127.0.0.1:0")
	h := newFakeHandler()
	states := newStateRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startRun(t, ctx, testValidator(node1.addr), h, Options{OnState: states.record})

	if _, err := node1.client.GetPubKey(); err != nil {
		t.Fatalf("GetPubKey on first node: %v", err)
	}
	if err := node1.endpoint.Stop(); err != nil {
		t.Fatalf("stop first node: %v", err)
	}

	start := time.Now()
	node2 := startNode(t, node1.addr)
	if _, err := node2.client.GetPubKey(); err != nil {
		t.Fatalf("GetPubKey on restarted node: %v", err)
	}
	elapsed := time.Since(start)
	t.Logf("served again %v after the node restarted", elapsed)
	if elapsed > 2*time.Second {
		t.Fatalf("redial took %v, want well under the node's 3 s budget", elapsed)
	}
	if got := states.count(StateConnected); got < 2 {
		t.Fatalf("saw %d connections, want a redial (>= 2)", got)
	}
	if got := h.pubKeys.Load(); got != 2 {
		t.Fatalf("handler saw %d pubkey requests, want 2", got)
	}

	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func waitUntil(t *testing.T, within time.Duration, cond func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCancelIsPrompt(t *testing.T) {
	t.Run("blocked-in-read", func(t *testing.T) {
		t.Parallel()
		tl := nodeSideListener(t)
		states := newStateRecorder()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := startRun(t, ctx, testValidator(tl.Addr().String()), newFakeHandler(), Options{OnState: states.record})
		c, err := tl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		states.waitFor(t, StateConnected, 2*time.Second)
		time.Sleep(100 * time.Millisecond) // let Run block in Read

		start := time.Now()
		cancel()
		if err := waitRun(t, done, time.Second); err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
		t.Logf("returned %v after cancel", time.Since(start))
		expectClosedByDialer(t, c)
	})

	t.Run("blocked-in-handshake", func(t *testing.T) {
		t.Parallel()
		rl := startRawListener(t, func(net.Conn) bool { return true })
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := startRun(t, ctx, testValidator(rl.addr()), newFakeHandler(), Options{DialTimeout: 10 * time.Second})
		waitUntil(t, 2*time.Second, func() bool { return rl.accepted.Load() == 1 }, "a connection")
		time.Sleep(100 * time.Millisecond)
		cancel()
		if err := waitRun(t, done, time.Second); err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
		waitUntil(t, 2*time.Second, func() bool { return rl.closedByPeer.Load() == 1 }, "the connection to be closed")
	})

	t.Run("blocked-in-handler", func(t *testing.T) {
		t.Parallel()
		tl := nodeSideListener(t)
		h := newFakeHandler()
		h.block = make(chan error, 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := startRun(t, ctx, testValidator(tl.Addr().String()), h, Options{})
		c, err := tl.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ping := wrap(&privvalproto.PingRequest{})
		if _, err := protoio.NewDelimitedWriter(c).WriteMsg(&ping); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		cancel()
		select {
		case err := <-h.block:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("handler ctx error = %v, want Canceled", err)
			}
		case <-time.After(time.Second):
			t.Fatalf("handler ctx was not cancelled with Run's ctx")
		}
		if err := waitRun(t, done, time.Second); err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
		// No response must be delivered after cancellation.
		var resp privvalproto.Message
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := protoio.NewDelimitedReader(c, 1<<20).ReadMsg(&resp); err == nil {
			t.Fatalf("got a response after cancellation: %T", resp.Sum)
		}
	})

	t.Run("blocked-in-backoff", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close() // nothing listens: connect is refused
		states := newStateRecorder()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := startRun(t, ctx, testValidator(addr), newFakeHandler(),
			Options{BackoffMin: 10 * time.Second, BackoffMax: 10 * time.Second, OnState: states.record})
		states.waitFor(t, StateDisconnected, 2*time.Second)
		cancel()
		if err := waitRun(t, done, time.Second); err != nil {
			t.Fatalf("Run returned %v, want nil", err)
		}
	})
}

func TestAllowedFalsePreventsDial(t *testing.T) {
	rl := startRawListener(t, func(c net.Conn) bool { _ = c.Close(); return false })
	var allowed atomic.Bool
	var asked atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startRun(t, ctx, testValidator(rl.addr()), newFakeHandler(), Options{
		Allowed: func() bool { asked.Add(1); return allowed.Load() },
	})

	time.Sleep(time.Second)
	if n := rl.accepted.Load(); n != 0 {
		t.Fatalf("listener saw %d connections while not allowed, want 0", n)
	}
	if asked.Load() < 2 {
		t.Fatalf("Allowed consulted %d times in 1s, want it polled each backoff step", asked.Load())
	}

	// Becoming allowed (leader) leads to a dial within about one step.
	allowed.Store(true)
	waitUntil(t, time.Second, func() bool { return rl.accepted.Load() > 0 }, "a dial once allowed")

	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestNoReconnect(t *testing.T) {
	t.Run("returns-after-first-connection", func(t *testing.T) {
		t.Parallel()
		node := startNode(t, "127.0.0.1:0")
		states := newStateRecorder()
		v := testValidator(node.addr)
		v.Reconnect = false
		done := startRun(t, context.Background(), v, newFakeHandler(), Options{OnState: states.record})
		if _, err := node.client.GetPubKey(); err != nil {
			t.Fatalf("GetPubKey: %v", err)
		}
		if err := node.endpoint.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := waitRun(t, done, 2*time.Second); !errors.Is(err, ErrNoReconnect) {
			t.Fatalf("Run returned %v, want the error that ended the connection, wrapping ErrNoReconnect", err)
		}
		if got := states.count(StateConnecting); got != 1 {
			t.Fatalf("dialled %d times, want 1", got)
		}
	})

	t.Run("returns-dial-error", func(t *testing.T) {
		t.Parallel()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		_ = ln.Close()
		v := testValidator(addr)
		v.Reconnect = false
		err = waitRun(t, startRun(t, context.Background(), v, newFakeHandler(), Options{}), 2*time.Second)
		if !errors.Is(err, ErrNoReconnect) || !strings.Contains(err.Error(), "transport: dial "+addr) {
			t.Fatalf("Run returned %v, want a dial error", err)
		}
	})
}

func TestRunRejectsBadConfig(t *testing.T) {
	h := newFakeHandler()
	cases := []struct {
		name string
		v    Validator
		h    Handler
		want string
	}{
		{"noise-bad-peer-id", Validator{Addr: "noise://x@127.0.0.1:1", Identity: ed25519.GenPrivKey()}, h, "not a libp2p peer ID"},
		{"noise-nil-identity", Validator{Addr: "noise://" + testPeerID(t) + "@127.0.0.1:1"}, h, "identity"},
		{"noise-short-ed25519", Validator{Addr: "noise://" + testPeerID(t) + "@127.0.0.1:1", Identity: ed25519.PrivKey(make([]byte, 10))}, h, "bytes"},
		{"noise-corrupt-ed25519", Validator{Addr: "noise://" + testPeerID(t) + "@127.0.0.1:1", Identity: corruptEd25519()}, h, "corrupt"},
		{"unix-relative", Validator{Addr: "unix://pv.sock"}, h, "not absolute"},
		{"nil-identity", Validator{Addr: "tcp://127.0.0.1:1"}, h, "identity"},
		{"secp256k1-identity", Validator{Addr: "tcp://127.0.0.1:1", Identity: secp256k1.GenPrivKey()}, h, "ed25519"},
		{"short-ed25519", Validator{Addr: "tcp://127.0.0.1:1", Identity: ed25519.PrivKey(make([]byte, 10))}, h, "bytes"},
		{"nil-handler", Validator{Addr: "tcp://127.0.0.1:1", Identity: ed25519.GenPrivKey()}, nil, "Handler"},
	}
	for _, c := range cases {
		c.v.Reconnect = true
		err := waitRun(t, startRun(t, context.Background(), c.v, c.h, Options{}), time.Second)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Run returned %v, want error mentioning %q", c.name, err, c.want)
		}
	}
}
