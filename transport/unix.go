package transport

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"time"

	"github.com/cometbft/cometbft/crypto"
)

// parseUnix accepts unix:///absolute/path.sock.
func parseUnix(addr, rest string) (target, error) {
	if rest == "" {
		return target{}, fmt.Errorf("transport: unix address %q: missing socket path, want unix:///absolute/path.sock", addr)
	}
	// A relative path would depend on the working directory of whoever
	// starts the process; "unix://run/pv.sock" (two slashes) is the usual
	// typo and lands here too.
	if !filepath.IsAbs(rest) {
		return target{}, fmt.Errorf("transport: unix address %q: socket path %q is not absolute, want unix:///absolute/path.sock", addr, rest)
	}
	return target{Addr: Addr{HostPort: rest}}, nil
}

// checkNoIdentity accepts anything: the node's unix listener authenticates
// nobody, access is governed by the socket's file permissions.
func checkNoIdentity(crypto.PrivKey) error { return nil }

// dialUnix connects to the node's unix listener. The node wraps nothing
// around a unix connection (privval.UnixListener: no SecretConnection), so
// privval frames go over the socket as they are.
func dialUnix(ctx context.Context, t target, _ crypto.PrivKey, timeout time.Duration) (net.Conn, error) {
	return dialSocket(ctx, "unix", t.HostPort, timeout)
}
