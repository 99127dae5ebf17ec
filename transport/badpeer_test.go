package transport

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/libs/protoio"
	"github.com/cometbft/cometbft/privval"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
)

// Peers that misbehave: a handshake that fails or hangs, a malformed frame.
// Each must cost one closed socket and a backed-off redial, never a leak.

// rawListener accepts plain TCP connections, applies behave to each and
// records whether the dialer later closed it.
type rawListener struct {
	ln           net.Listener
	accepted     atomic.Int64
	closedByPeer atomic.Int64
	stuck        atomic.Int64
	wg           sync.WaitGroup
}

func startRawListener(t *testing.T, behave func(net.Conn) (watch bool)) *rawListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rl := &rawListener{ln: ln}
	rl.wg.Add(1)
	go func() {
		defer rl.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			rl.accepted.Add(1)
			rl.wg.Add(1)
			go func() {
				defer rl.wg.Done()
				defer c.Close()
				if !behave(c) {
					return
				}
				// A read that ends in EOF or reset means the dialer closed its
				// end; a timeout means it leaked the connection.
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, err := io.Copy(io.Discard, c)
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					rl.stuck.Add(1)
					return
				}
				rl.closedByPeer.Add(1)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		rl.wg.Wait()
	})
	return rl
}

func (rl *rawListener) addr() string { return rl.ln.Addr().String() }

func TestHandshakeFailureClosesConnection(t *testing.T) {
	cases := []struct {
		name   string
		behave func(net.Conn) bool
		watch  bool
	}{
		// A varint that overflows: the handshake fails on the first read.
		{"garbage", func(c net.Conn) bool {
			_, _ = c.Write(bytes.Repeat([]byte{0xff}, 16))
			return true
		}, true},
		// A peer that accepts and never speaks: only the handshake deadline
		// gets us out.
		{"silent", func(net.Conn) bool { return true }, true},
		// Accepted then closed at once (e.g. peer not allow-listed).
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
			done := startRun(t, ctx, testValidator(rl.addr()), newFakeHandler(),
				Options{DialTimeout: 300 * time.Millisecond, Logger: logger, OnState: states.record})

			const window = 2 * time.Second
			time.Sleep(window)
			n := rl.accepted.Load()
			t.Logf("%d connections in %v", n, window)
			// Default schedule: 0, ~0.2, ~0.6, ~1.4 s (+ handshake time).
			// A busy loop would produce hundreds.
			if n < 2 || n > 8 {
				t.Fatalf("%d connections in %v, want 2..8 (redials with backoff)", n, window)
			}
			if tc.watch {
				// All but an in-flight last attempt must already be closed.
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
				waitUntil(t, 2*time.Second, func() bool {
					return rl.closedByPeer.Load() == rl.accepted.Load()
				}, "every accepted connection to be closed by the dialer")
				if rl.stuck.Load() != 0 {
					t.Fatalf("%d connections leaked", rl.stuck.Load())
				}
			}
			if !strings.Contains(logs.String(), "level=WARN msg=\"transport: handshake failed\"") {
				t.Fatalf("expected a warn-level handshake log, got:\n%s", logs.String())
			}
		})
	}
}

// nodeSideListener is the node's TCP listener (SecretConnection on accept)
// without the SignerListenerEndpoint, so tests can write arbitrary frames.
func nodeSideListener(t *testing.T) *privval.TCPListener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tl := privval.NewTCPListener(ln, ed25519.GenPrivKey())
	privval.TCPListenerTimeoutAccept(5 * time.Second)(tl)
	t.Cleanup(func() { _ = tl.Close() })
	return tl
}

// expectClosedByDialer reads from c until the dialer closes it.
func expectClosedByDialer(t *testing.T, c net.Conn) {
	t.Helper()
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatalf("dialer did not close the connection")
		}
		return
	}
}

func TestMalformedFrameDropsAndRedials(t *testing.T) {
	tl := nodeSideListener(t)
	logger, logs := testLogger()
	states := newStateRecorder()
	h := newFakeHandler()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startRun(t, ctx, testValidator(tl.Addr().String()), h, Options{Logger: logger, OnState: states.record})

	frames := []struct {
		name string
		raw  []byte
	}{
		// Length prefix of 2 MiB, above the default bound; the body never
		// needs to arrive.
		{"oversized", []byte{0x80, 0x80, 0x80, 0x01}},
		// Valid length, undecodable body (truncated field tag).
		{"undecodable", []byte{0x03, 0xff, 0xff, 0xff}},
		// Varint length prefix that overflows 64 bits.
		{"bad-length", bytes.Repeat([]byte{0xff}, 11)},
	}
	for _, f := range frames {
		c, err := tl.Accept()
		if err != nil {
			t.Fatalf("%s: accept: %v", f.name, err)
		}
		if _, err := c.Write(f.raw); err != nil {
			t.Fatalf("%s: write: %v", f.name, err)
		}
		expectClosedByDialer(t, c)
		_ = c.Close()
	}

	// The loop is still alive and serves a well-formed request.
	c, err := tl.Accept()
	if err != nil {
		t.Fatalf("accept after malformed frames: %v", err)
	}
	defer c.Close()
	ping := wrap(&privvalproto.PingRequest{})
	if _, err := protoio.NewDelimitedWriter(c).WriteMsg(&ping); err != nil {
		t.Fatalf("write ping: %v", err)
	}
	var resp privvalproto.Message
	if _, err := protoio.NewDelimitedReader(c, 1<<20).ReadMsg(&resp); err != nil {
		t.Fatalf("read ping response: %v", err)
	}
	if resp.GetPingResponse() == nil {
		t.Fatalf("got %T, want PingResponse", resp.Sum)
	}
	if got := h.pings.Load(); got != 1 {
		t.Fatalf("handler saw %d pings, want 1", got)
	}

	cancel()
	if err := waitRun(t, done, time.Second); err != nil {
		t.Fatalf("Run: %v", err)
	}
	out := logs.String()
	if got := strings.Count(out, "level=WARN msg=\"transport: dropping connection\""); got != len(frames) {
		t.Fatalf("want %d warn logs for malformed frames, got %d:\n%s", len(frames), got, out)
	}
	if !strings.Contains(out, "malformed frame") {
		t.Fatalf("malformed frames not identified in logs:\n%s", out)
	}
}
