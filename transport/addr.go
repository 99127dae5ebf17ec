package transport

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/p2p"
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
