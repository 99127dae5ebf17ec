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
	return c, nil
}
