package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"
)

// A validator connection is reset if this process dies with it open (the
// node then drops it on its first write) and closed gracefully when kms-ha
// closes it (a reply just written still arrives).
func TestDialSocketResetsOnlyOnCrash(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() (net.Conn, net.Conn) {
		t.Helper()
		c, err := dialSocket(context.Background(), "tcp", ln.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-accepted:
			t.Cleanup(func() { s.Close() })
			return c, s
		case <-time.After(5 * time.Second):
			t.Fatal("no connection accepted")
		}
		return nil, nil
	}
	readAll := func(s net.Conn) ([]byte, error) {
		_ = s.SetReadDeadline(time.Now().Add(5 * time.Second))
		return io.ReadAll(s)
	}

	c, s := dial()
	if _, err := c.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(s); err != nil || string(got) != "reply" {
		t.Fatalf("after a deliberate close the peer read %q, %v; want the reply and EOF", got, err)
	}

	// What the kernel does when the process dies: close the socket as it
	// is, without the wrapper's Close.
	c, s = dial()
	if err := c.(crashResetConn).TCPConn.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := readAll(s); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("after a crash the peer read err %v, want a connection reset", err)
	}
}
