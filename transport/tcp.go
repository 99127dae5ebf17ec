package transport

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/p2p"
	p2pconn "github.com/cometbft/cometbft/p2p/conn"
)

// nodeIDLen is the length of a CometBFT node id: the hex of the 20-byte
// address of the ed25519 key (p2p.PubKeyToID).
const nodeIDLen = 2 * crypto.AddressSize

// parseTCP accepts tcp://[<node-id>@]host:port; the node id, if any, pins
// the validator's SecretConnection key.
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

// checkEd25519 accepts the only identity SecretConnection can use.
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

// dialTCP dials and runs CometBFT's SecretConnection handshake, then checks
// the pinned node id, if any.
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
