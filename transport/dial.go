package transport

import (
	"context"
	"fmt"
	"net"
	"time"
)

// handshakeError marks failures after connect so they can be logged louder
// than plain connect failures: they usually mean a misconfigured or foreign
// peer rather than a node that is simply down.
type handshakeError struct {
	addr string
	err  error
}

func (e *handshakeError) Error() string {
	return fmt.Sprintf("transport: handshake with %s: %v", e.addr, e.err)
}

func (e *handshakeError) Unwrap() error { return e.err }

// dialSocket opens the plain connection every scheme starts from.
func dialSocket(ctx context.Context, network, address string, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	if network == "tcp" {
		// Keepalive detects a peer that vanished without FIN (host crash,
		// cable pull) even if the read deadline is raised one day.
		d.KeepAliveConfig = net.KeepAliveConfig{
			Enable:   true,
			Idle:     15 * time.Second,
			Interval: 5 * time.Second,
			Count:    3,
		}
	}
	c, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", address, err)
	}
	if tc, ok := c.(*net.TCPConn); ok {
		return resetOnCrash(tc), nil
	}
	return c, nil
}

// crashResetConn is a TCP connection that the kernel resets, rather than
// closes gracefully, if this process dies with it open. A validator node
// (CometBFT v0.38 to v0.40) drops its signer connection only on a socket
// error, never on EOF, and its SecretConnection swallows the error of a
// buffered write: after a graceful close it retries its request on the dead
// connection every 100 ms and reaches the new leader's waiting connection
// only on its fourth try, 300 ms after asking. After a reset its second
// try fails on the write and drops the connection, and the third, 200 ms
// after asking, takes the new one. A deliberate Close restores the
// graceful close, so a reply just written is still delivered.
type crashResetConn struct {
	*net.TCPConn
}

func resetOnCrash(c *net.TCPConn) net.Conn {
	// Best effort: without it a failover is 200 ms slower, not unsafe.
	_ = c.SetLinger(0)
	return crashResetConn{c}
}

func (c crashResetConn) Close() error {
	_ = c.TCPConn.SetLinger(-1)
	return c.TCPConn.Close()
}
