package transport

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/p2p"
	p2pconn "github.com/cometbft/cometbft/p2p/conn"
	"github.com/libp2p/go-libp2p/core/peer"
)

// addrForms is quoted in errors so that a user who got an address wrong sees
// every form that works.
const addrForms = "tcp://[<validator-node-id>@]host:port, noise://<validator-peer-id>@IP:PORT or unix:///absolute/path.sock (the validator's priv_validator_laddr)"

// Addr is a parsed validator address. ParseAddr is the one parser of
// validators[].addr: configuration validation and the dialer both use it, so
// an address the configuration accepts is one the transport can dial.
type Addr struct {
	// Scheme is "tcp", "noise" or "unix", in lower case whatever the
	// address used.
	Scheme string
	// HostPort is host:port for tcp:// and noise://, the socket path for
	// unix://.
	HostPort string
	// PeerID is the validator identity pinned in the address: the libp2p
	// peer ID of noise://, the CometBFT node id (lower-case hex) of
	// tcp://<node-id>@host:port; empty when nothing is pinned.
	PeerID string
}

// NeedsIdentity reports whether dialling the address authenticates this
// signer with an identity key: tcp:// and noise:// do, unix:// (a local
// socket the node does not encrypt) does not.
func (a Addr) NeedsIdentity() bool { return a.Scheme != "unix" }

// target is a parsed validator address: everything dial needs.
type target struct {
	Addr
	// peer is the validator's pinned libp2p identity (noise:// only).
	peer peer.ID
}

// scheme describes how to reach a validator for one address scheme.
type scheme struct {
	// parse validates what follows "://" so that a bad address is refused
	// when the configuration is loaded, not on every redial.
	parse func(addr, rest string) (target, error)
	// checkIdentity rejects identities the scheme cannot use. It runs when
	// the configuration loads and again in Run, so a misconfiguration fails
	// fast instead of redialling forever.
	checkIdentity func(crypto.PrivKey) error
	// dial returns an authenticated connection. On any error it must have
	// closed everything it opened: a leaked socket sits in the node's accept
	// queue and can stall the chain.
	dial func(ctx context.Context, t target, identity crypto.PrivKey, timeout time.Duration) (net.Conn, error)
}

var schemes = map[string]scheme{
	"tcp":   {parse: parseTCP, checkIdentity: checkEd25519, dial: dialTCP},
	"noise": {parse: parseNoise, checkIdentity: checkNoiseIdentity, dial: dialNoise},
	"unix":  {parse: parseUnix, checkIdentity: checkNoIdentity, dial: dialUnix},
}

// ParseAddr validates a whole validator address ("tcp://host:port",
// "tcp://<node-id>@host:port", "noise://<peer-id>@IP:PORT",
// "unix:///path"), including the identity it pins, and returns a clear error
// otherwise. The scheme is case-insensitive.
func ParseAddr(addr string) (Addr, error) {
	t, err := parseTarget(addr)
	if err != nil {
		return Addr{}, err
	}
	return t.Addr, nil
}

// CheckIdentity reports whether identity can authenticate this signer to
// the validator at addr: ed25519 for tcp://, ed25519 or secp256k1 for
// noise://, anything (even none) for unix://.
func CheckIdentity(addr string, identity crypto.PrivKey) error {
	t, err := parseTarget(addr)
	if err != nil {
		return err
	}
	return schemes[t.Scheme].checkIdentity(identity)
}

// LoadIdentity reads an identity file in CometBFT's node_key.json format,
// the one `kms-ha init` writes as identity.json.
func LoadIdentity(path string) (crypto.PrivKey, error) {
	nk, err := p2p.LoadNodeKey(path)
	if err != nil {
		return nil, fmt.Errorf("transport: load identity %s: %w", path, err)
	}
	if nk.PrivKey == nil {
		return nil, fmt.Errorf("transport: load identity %s: no priv_key in the file", path)
	}
	return nk.PrivKey, nil
}

// NoisePeerID returns the validator peer ID pinned in a
// "noise://<peer-id>@IP:PORT" address, in its canonical string form.
func NoisePeerID(addr string) (string, error) {
	a, err := ParseAddr(addr)
	if err != nil {
		return "", err
	}
	if a.Scheme != "noise" {
		return "", fmt.Errorf("transport: address %q is not a noise:// address, want noise://<validator-peer-id>@IP:PORT", addr)
	}
	return a.PeerID, nil
}

func parseTarget(addr string) (target, error) {
	s, rest, ok := strings.Cut(addr, "://")
	if !ok {
		return target{}, fmt.Errorf("transport: address %q has no scheme, want %s", addr, addrForms)
	}
	s = strings.ToLower(s)
	sch, ok := schemes[s]
	if !ok {
		return target{}, fmt.Errorf("transport: unknown scheme %q in address %q, want %s", s, addr, addrForms)
	}
	t, err := sch.parse(addr, rest)
	if err != nil {
		return target{}, err
	}
	t.Scheme = s
	return t, nil
}

// nodeIDLen is the length of a CometBFT node id: the hex of the 20-byte
// address of the ed25519 key (p2p.PubKeyToID).
const nodeIDLen = 2 * crypto.AddressSize

func parseTCP(addr, rest string) (target, error) {
	var nodeID string
	// Split at the last "@" as noise:// does; no host contains one.
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		nodeID, rest = strings.ToLower(rest[:at]), rest[at+1:]
		if _, err := hex.DecodeString(nodeID); err != nil || len(nodeID) != nodeIDLen {
			return target{}, fmt.Errorf("transport: tcp address %q: %q is not a node id (%d hex characters: the id of the SecretConnection key the validator's privval listener presents), want tcp://[<validator-node-id>@]host:port", addr, nodeID, nodeIDLen)
		}
	}
	if _, err := checkHostPort(addr, rest); err != nil {
		return target{}, err
	}
	return target{Addr: Addr{HostPort: rest, PeerID: nodeID}}, nil
}

// checkHostPort validates host:port and returns the host.
func checkHostPort(addr, hostport string) (string, error) {
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", fmt.Errorf("transport: address %q: %w", addr, err)
	}
	if host == "" {
		return "", fmt.Errorf("transport: address %q: missing host", addr)
	}
	if strings.ContainsAny(host, "/?#@") {
		return "", fmt.Errorf("transport: address %q: invalid host %q", addr, host)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return "", fmt.Errorf("transport: address %q: invalid port %q", addr, port)
	}
	return host, nil
}

func parseNoise(addr, rest string) (target, error) {
	// The node splits at the last "@" too (privval.ParseNoiseAddr); doing the
	// same keeps both sides agreeing on what the peer ID is.
	at := strings.LastIndex(rest, "@")
	if at <= 0 {
		return target{}, fmt.Errorf("transport: noise address %q: missing validator peer ID, want noise://<validator-peer-id>@IP:PORT; get it with `cometbft show-node-id --libp2p`", addr)
	}
	pidStr, hostport := rest[:at], rest[at+1:]
	host, err := checkHostPort(addr, hostport)
	if err != nil {
		return target{}, err
	}
	// The node refuses DNS names in its own noise:// address; requiring an
	// IP here keeps one address form valid on both sides.
	if net.ParseIP(host) == nil {
		return target{}, fmt.Errorf("transport: noise address %q: host %q must be an IP address", addr, host)
	}
	pid, err := peer.Decode(pidStr)
	if err != nil {
		return target{}, fmt.Errorf("transport: noise address %q: %q is not a libp2p peer ID; get it with `cometbft show-node-id --libp2p`: %w", addr, pidStr, err)
	}
	return target{Addr: Addr{HostPort: hostport, PeerID: pid.String()}, peer: pid}, nil
}

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

// checkNoIdentity accepts anything: the node's unix listener authenticates
// nobody, access is governed by the socket's file permissions.
func checkNoIdentity(crypto.PrivKey) error { return nil }

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

func dialTCP(ctx context.Context, t target, identity crypto.PrivKey, timeout time.Duration) (net.Conn, error) {
	hostport := t.HostPort
	raw, err := dialSocket(ctx, "tcp", hostport, timeout)
	if err != nil {
		return nil, err
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
	if t.PeerID != "" {
		// The handshake proved the peer holds this key; pinning makes that
		// key the one the operator named, so a host that took over the
		// validator's address gets no signatures.
		if got := string(p2p.PubKeyToID(sc.RemotePubKey())); got != t.PeerID {
			_ = raw.Close()
			return nil, &handshakeError{addr: hostport, err: &nodeIDMismatchError{expected: t.PeerID, actual: got}}
		}
	}
	if err := raw.SetDeadline(time.Time{}); err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("transport: dial %s: clear handshake deadline: %w", hostport, err)
	}
	return sc, nil
}

// nodeIDMismatchError reports a validator whose SecretConnection key is not
// the one pinned in its tcp://<node-id>@ address.
type nodeIDMismatchError struct {
	expected, actual string
}

func (e *nodeIDMismatchError) Error() string {
	// A stock CometBFT node makes a new listener key at every start
	// (privval.NewSignerListener), so the hint matters more than usual.
	return fmt.Sprintf("validator node id mismatch: expected %s (from the tcp:// address), got %s; "+
		"the validator's privval listener must use the key whose id is pinned (a node that makes a new key at every start cannot be pinned: "+
		"drop the id from the address, or use noise://)", e.expected, e.actual)
}

// dialUnix connects to the node's unix listener. The node wraps nothing
// around a unix connection (privval.UnixListener: no SecretConnection), so
// privval frames go over the socket as they are.
func dialUnix(ctx context.Context, t target, _ crypto.PrivKey, timeout time.Duration) (net.Conn, error) {
	return dialSocket(ctx, "unix", t.HostPort, timeout)
}
