package cluster_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
)

// dialFrom opens a TCP connection to addr from the loopback address src
// and sends nothing.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 2 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedWithin reports whether the server closes c within d.
func closedWithin(c net.Conn, d time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

// TestTLSStreamCapsHandshakesPerSourceAndReservesMembersShare: idle
// sockets from one address cannot take more than their per-source share,
// sockets from several addresses cannot take the share reserved for
// members, and a member still completes an RPC while every other slot is
// held. Slots are given back when a socket closes.
func TestTLSStreamCapsHandshakesPerSourceAndReservesMembersShare(t *testing.T) {
	ca := newTLSCA(t)
	srv, cli := ca.node("a")
	member := net.ParseIP("127.0.0.1") // where the member's dials come from
	a := startTLSPeer(t, "a", srv, cli,
		cluster.WithHandshakeTimeout(30*time.Second),
		cluster.WithFirstByteTimeout(30*time.Second), // idle sockets stay for the whole test
		cluster.WithHandshakeLimits(cluster.HandshakeLimits{Total: 6, PerSource: 2, Reserved: 2}),
		cluster.WithPriorityHosts(func(ip net.IP) bool { return ip.Equal(member) }))
	rpcs := a.answer(t)
	addr := string(a.addr())

	// The accept queue is first in, first out, so connections are admitted
	// or dropped in the order they were dialled.
	held := []net.Conn{dialFrom(t, "127.0.0.10", addr), dialFrom(t, "127.0.0.10", addr)}
	overSource := dialFrom(t, "127.0.0.10", addr)
	if err := waitRejected(t, a, "third socket from one source"); !errors.Is(err, cluster.ErrTooManyHandshakes) || !strings.Contains(err.Error(), "127.0.0.10") {
		t.Fatalf("third socket from 127.0.0.10 refused with %v; want the per-source cap", err)
	}
	if !closedWithin(overSource, 5*time.Second) {
		t.Error("the socket over the per-source cap was not closed")
	}
	held = append(held, dialFrom(t, "127.0.0.11", addr), dialFrom(t, "127.0.0.11", addr))
	overShared := dialFrom(t, "127.0.0.12", addr)
	if err := waitRejected(t, a, "a socket past the unreserved share"); !errors.Is(err, cluster.ErrTooManyHandshakes) || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("socket from 127.0.0.12 refused with %v; want the global cap", err)
	}
	if !closedWithin(overShared, 5*time.Second) {
		t.Error("the socket over the global cap was not closed")
	}

	// Every unreserved slot is held; a member still gets through.
	bSrv, bCli := ca.node("b")
	b := startTLSPeer(t, "b", bSrv, bCli)
	if err := appendEntries(b.trans, a.addr()); err != nil {
		t.Fatalf("a member's RPC while the unreserved slots are held: %v", err)
	}
	if rpcs.Load() != 1 {
		t.Errorf("%d RPCs reached raft, want 1", rpcs.Load())
	}
	for _, c := range held {
		if closedWithin(c, 50*time.Millisecond) {
			t.Error("an idle socket within the caps was closed before its first-byte timeout")
		}
	}

	// Closing the held sockets gives their slots back: a peer from
	// 127.0.0.12 now completes a handshake.
	for _, c := range held {
		c.Close()
	}
	d := tls.Dialer{NetDialer: &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.12")}}, Config: bCli.Clone()}
	d.Config.ServerName = "127.0.0.1"
	waitFor(t, 5*time.Second, "a handshake from 127.0.0.12 once the slots are free", func() bool {
		c, err := d.DialContext(context.Background(), "tcp", addr)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})

	// Close does not wait out the first-byte timeout of idle sockets.
	dialFrom(t, "127.0.0.13", addr)
	dialFrom(t, "127.0.0.13", addr)
	start := time.Now()
	a.trans.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Close took %v with idle sockets pending", d)
	}
}

// TestTLSStreamFirstByteTimeout: a socket that sends nothing is closed
// after the first-byte timeout; one that has started its ClientHello gets
// the whole handshake timeout.
func TestTLSStreamFirstByteTimeout(t *testing.T) {
	ca := newTLSCA(t)
	srv, cli := ca.node("a")
	const handshake = 2 * time.Second
	a := startTLSPeer(t, "a", srv, cli, cluster.WithHandshakeTimeout(handshake), cluster.WithFirstByteTimeout(200*time.Millisecond))
	start := time.Now()
	idle := dialFrom(t, "127.0.0.20", string(a.addr()))
	started := dialFrom(t, "127.0.0.21", string(a.addr()))
	if _, err := started.Write([]byte{0x16, 0x03, 0x01}); err != nil { // the start of a ClientHello
		t.Fatal(err)
	}
	closedAt := func(c net.Conn) time.Duration {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadAll(c); err != nil {
			t.Errorf("not closed by the server: %v", err)
		}
		return time.Since(start)
	}
	if d := closedAt(idle); d >= handshake-500*time.Millisecond {
		t.Errorf("the idle socket was closed after %v; want about the first-byte timeout", d)
	}
	if err := waitRejected(t, a, "idle socket"); !strings.Contains(err.Error(), "first-byte timeout") {
		t.Errorf("idle socket dropped with %v; want the first-byte timeout", err)
	}
	if d := closedAt(started); d < handshake {
		t.Errorf("a socket that had started its handshake was closed after %v, before the %v handshake timeout", d, handshake)
	}
	if err := waitRejected(t, a, "stalled ClientHello"); !(strings.Contains(err.Error(), "timeout") || strings.Contains(err.Error(), "deadline")) || strings.Contains(err.Error(), "first-byte") {
		t.Errorf("stalled ClientHello dropped with %v; want the handshake timeout", err)
	}
}
