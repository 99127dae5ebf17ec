package transport

import (
	"context"
	stded25519 "crypto/ed25519"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	lcrypto "github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/sec"
	libp2pnoise "github.com/libp2p/go-libp2p/p2p/security/noise"
)

// noiseProtocolID is what privval.NewNoiseListener passes to noise.New. It
// is not sent (no multistream, no prologue), but taking the node's value
// keeps both ends configured alike.
const noiseProtocolID = libp2pnoise.ID

// A node that refuses our peer ID closes about one round trip after our last
// handshake message, and our handshake itself took about one round trip, so
// waiting twice its duration catches the verdict; the floor absorbs
// scheduling delays on a fast link. The wait costs no latency to requests:
// the first byte from the node ends it.
const (
	minCloseProbe    = 100 * time.Millisecond
	closeProbeFactor = 2
)

// PeerID returns the libp2p peer ID (12D3KooW... for ed25519) of an identity
// key: the ID a validator operator puts in its noise:// priv_validator_laddr
// to allow-list this signer.
func PeerID(identity crypto.PrivKey) (string, error) {
	k, err := libp2pKey(identity)
	if err != nil {
		return "", err
	}
	id, err := peer.IDFromPrivateKey(k)
	if err != nil {
		return "", fmt.Errorf("transport: peer ID of %s identity: %w", identity.Type(), err)
	}
	return id.String(), nil
}

// libp2pKey converts a CometBFT identity to a libp2p one, accepting the same
// key types as the node (lp2p.PrivateKeyFromCosmosKey).
func libp2pKey(k crypto.PrivKey) (lcrypto.PrivKey, error) {
	switch k := k.(type) {
	case nil:
		return nil, errors.New("transport: noise:// needs an identity key, got none")
	case ed25519.PrivKey:
		if len(k) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("transport: ed25519 identity has %d bytes, want %d", len(k), ed25519.PrivateKeySize)
		}
		// libp2p takes the public half at face value; a key file whose halves
		// disagree would announce one peer ID and sign as another, which the
		// node only reports as a failed handshake.
		want := stded25519.NewKeyFromSeed(k[:stded25519.SeedSize])
		if subtle.ConstantTimeCompare(want, k) != 1 {
			return nil, errors.New("transport: ed25519 identity is corrupt: its public half does not match its private half")
		}
		lk, err := lcrypto.UnmarshalEd25519PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("transport: ed25519 identity as libp2p key: %w", err)
		}
		return lk, nil
	case secp256k1.PrivKey:
		lk, err := lcrypto.UnmarshalSecp256k1PrivateKey(k)
		if err != nil {
			return nil, fmt.Errorf("transport: secp256k1 identity as libp2p key: %w", err)
		}
		return lk, nil
	default:
		return nil, fmt.Errorf("transport: noise:// needs an ed25519 or secp256k1 identity, got %s", k.Type())
	}
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

func checkNoiseIdentity(k crypto.PrivKey) error {
	_, err := libp2pKey(k)
	return err
}

// peerIDMismatchError reports a validator that proved a different identity
// than the one pinned in its noise:// address.
type peerIDMismatchError struct {
	m sec.ErrPeerIDMismatch
}

func (e *peerIDMismatchError) Error() string {
	return fmt.Sprintf("validator peer ID mismatch: expected %s (from the noise:// address), got %s; check the address against `cometbft show-node-id --libp2p` on the validator",
		e.m.Expected, e.m.Actual)
}

func (e *peerIDMismatchError) Unwrap() error { return e.m }

// notAllowedError reports a node that completed the handshake and then hung
// up: the node's noise listener does that to every peer ID it does not
// allow-list.
type notAllowedError struct {
	local peer.ID
	err   error
}

func (e *notAllowedError) Error() string {
	return fmt.Sprintf("validator closed the connection right after the Noise handshake (%v): it probably does not allow-list our peer ID %s; its priv_validator_laddr must be noise://%s@IP:PORT",
		e.err, e.local, e.local)
}

func (e *notAllowedError) Unwrap() error { return e.err }

// dialNoise is the node's privval.NoiseListener seen from the other end: TCP,
// then Noise_XX as initiator pinning the validator's peer ID, then plain
// privval frames inside the secure session. No libp2p host, multistream or
// muxer: the node has none either.
func dialNoise(ctx context.Context, t target, identity crypto.PrivKey, timeout time.Duration) (net.Conn, error) {
	key, err := libp2pKey(identity)
	if err != nil {
		return nil, err
	}
	tr, err := libp2pnoise.New(noiseProtocolID, key, nil)
	if err != nil {
		return nil, fmt.Errorf("transport: noise transport: %w", err)
	}
	raw, err := dialSocket(ctx, "tcp", t.HostPort, timeout)
	if err != nil {
		return nil, err
	}
	pc := &probedConn{Conn: raw}

	// SecureOutbound bounds the handshake by the context deadline and closes
	// the conn itself when the context ends; the explicit Close calls below
	// are what guarantees it on every path, whatever libp2p does.
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	sc, err := tr.SecureOutbound(hctx, pc, t.peer)
	if err != nil {
		_ = raw.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", t.HostPort, ctx.Err())
		}
		var mismatch sec.ErrPeerIDMismatch
		switch {
		case errors.As(err, &mismatch):
			err = &peerIDMismatchError{m: mismatch}
		case hctx.Err() != nil || isTimeout(err):
			err = fmt.Errorf("noise handshake: no answer within %v: %w", timeout, err)
		default:
			err = fmt.Errorf("noise handshake: %w", err)
		}
		return nil, &handshakeError{addr: t.HostPort, err: err}
	}

	// The initiator's handshake ends when it sends the last message, before
	// the node has seen who we are; a node that does not allow-list us
	// closes right after. Waiting a little for that close turns it into a
	// failed dial (backoff, a clear log, no "connected") instead of a
	// connection that dies on first read.
	probe := max(minCloseProbe, closeProbeFactor*time.Since(start))
	if rem, ok := hctx.Deadline(); ok {
		probe = min(probe, time.Until(rem))
	}
	if err := pc.probeClose(ctx, probe); err != nil {
		_ = raw.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", t.HostPort, ctx.Err())
		}
		return nil, &handshakeError{addr: t.HostPort, err: &notAllowedError{local: sc.LocalPeer(), err: err}}
	}
	return sc, nil
}

// probedConn is the plain TCP conn under the Noise session. It lets dialNoise
// look for an immediate close without reading through the session: a read
// deadline that fires mid-message inside the session would lose bytes and
// desynchronise it, while bytes read here are simply handed on.
// The probe runs before the session's first Read, never alongside it, so
// pending needs no lock.
type probedConn struct {
	net.Conn
	pending []byte
}

func (c *probedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// probeClose waits up to d for the peer to close. Data or silence both mean
// the connection is alive; data is kept for the session to read.
func (c *probedConn) probeClose(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return nil
	}
	stop := context.AfterFunc(ctx, func() { _ = c.Conn.Close() })
	defer stop()
	if err := c.Conn.SetReadDeadline(time.Now().Add(d)); err != nil {
		return fmt.Errorf("set read deadline: %w", err)
	}
	buf := make([]byte, 4096)
	n, err := c.Conn.Read(buf)
	c.pending = append(c.pending, buf[:n]...)
	if err != nil && !isTimeout(err) {
		return err
	}
	if err := c.Conn.SetReadDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear read deadline: %w", err)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
