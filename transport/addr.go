package transport

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	p2pconn "github.com/cometbft/cometbft/p2p/conn"
)

// scheme describes how to reach a validator for one address scheme. Adding
// unix:// or noise:// later means adding an entry to schemes.
type scheme struct {
	// checkIdentity rejects identities the scheme cannot use. It runs once in
	// Run, so a misconfiguration fails fast instead of redialling forever.
	checkIdentity func(crypto.PrivKey) error
	// dial returns an authenticated connection. On any error it must have
	// closed everything it opened: a leaked socket sits in the node's accept
	// queue and can stall the chain.
	dial func(ctx context.Context, hostport string, identity crypto.PrivKey, timeout time.Duration) (net.Conn, error)
}

var schemes = map[string]scheme{
	"tcp": {checkIdentity: checkEd25519, dial: dialTCP},
}

// plannedSchemes are recognised so that users get a precise error rather than
// "unknown scheme" for addresses that will work in a later release.
var plannedSchemes = map[string]bool{
	"unix":  true,
	"noise": true,
}

// ParseAddr splits "tcp://host:port" into scheme and host:port, with a clear
// error otherwise.
func ParseAddr(addr string) (scheme, hostport string, err error) {
	s, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return "", "", fmt.Errorf("transport: address %q has no scheme, want tcp://host:port", addr)
	}
	s = strings.ToLower(s)
	if plannedSchemes[s] {
		return "", "", fmt.Errorf("transport: scheme %q not supported yet", s)
	}
	if _, ok := schemes[s]; !ok {
		return "", "", fmt.Errorf("transport: unknown scheme %q in address %q, want tcp://host:port", s, addr)
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil {
		return "", "", fmt.Errorf("transport: address %q: %w", addr, err)
	}
	if host == "" {
		return "", "", fmt.Errorf("transport: address %q: missing host", addr)
	}
	if strings.ContainsAny(host, "/?#@") {
		return "", "", fmt.Errorf("transport: address %q: invalid host %q", addr, host)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", "", fmt.Errorf("transport: address %q: invalid port %q", addr, port)
	}
	return s, rest, nil
}

func checkEd25519(k crypto.PrivKey) error {
	if k == nil {
		return errors.New("transport: tcp:// needs an identity key, got none")
	}
	ek, ok := k.(ed25519.PrivKey)
	if !ok {
		return fmt.Errorf("transport: tcp:// SecretConnection needs an ed25519 identity, got %s", k.Type())
	}
	if len(ek) != ed25519.PrivateKeySize {
		return fmt.Errorf("transport: ed25519 identity has %d bytes, want %d", len(ek), ed25519.PrivateKeySize)
	}
	return nil
}

// handshakeError marks failures after TCP connect so they can be logged
// louder than plain connect failures: they usually mean a misconfigured or
// foreign peer rather than a node that is simply down.
type handshakeError struct {
	addr string
	err  error
}

func (e *handshakeError) Error() string {
	return fmt.Sprintf("transport: handshake with %s: %v", e.addr, e.err)
}

func (e *handshakeError) Unwrap() error { return e.err }

func dialTCP(ctx context.Context, hostport string, identity crypto.PrivKey, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{
		Timeout: timeout,
		// Keepalive detects a peer that vanished without FIN (host crash,
		// cable pull) even if the read deadline is raised one day.
		KeepAliveConfig: net.KeepAliveConfig{
			Enable:   true,
			Idle:     15 * time.Second,
			Interval: 5 * time.Second,
			Count:    3,
		},
	}
	raw, err := d.DialContext(ctx, "tcp", hostport)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", hostport, err)
	}

	// The handshake blocks in Read on a peer that accepts and stays silent,
	// so it needs both a deadline and a way to be cut short by ctx.
	stop := context.AfterFunc(ctx, func() { _ = raw.Close() })
	defer stop()
	if err := raw.SetDeadline(time.Now().Add(timeout)); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("transport: dial %s: set handshake deadline: %w", hostport, err)
	}
	sc, err := p2pconn.MakeSecretConnection(raw, identity)
	if err != nil {
		// Closing here is the whole point of not using privval.DialTCPFn.
		_ = raw.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", hostport, ctx.Err())
		}
		return nil, &handshakeError{addr: hostport, err: err}
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("transport: dial %s: clear handshake deadline: %w", hostport, err)
	}
	return sc, nil
}
