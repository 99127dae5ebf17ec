package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/internal/backoff"
)

// TLSStreamOption tunes NewTLSStreamLayer.
type TLSStreamOption func(*tlsStream)

// WithHandshakeTimeout bounds the TLS handshake of each accepted
// connection; default 5 s.
func WithHandshakeTimeout(d time.Duration) TLSStreamOption {
	return func(s *tlsStream) {
		if d > 0 {
			s.handshakeTimeout = d
		}
	}
}

// WithFirstByteTimeout closes an inbound connection whose peer sends
// nothing within d of connecting; default 1 s. A raft peer's first bytes
// are its TLS ClientHello, sent at once, so only an idle socket (one that
// would otherwise hold a handshake slot for the whole handshake timeout)
// waits that long. It never extends the handshake timeout.
func WithFirstByteTimeout(d time.Duration) TLSStreamOption {
	return func(s *tlsStream) {
		if d > 0 {
			s.firstByteTimeout = d
		}
	}
}

// WithHandshakeLimits caps pending inbound handshakes globally and per
// source address; see HandshakeLimits for the defaults.
func WithHandshakeLimits(l HandshakeLimits) TLSStreamOption {
	return func(s *tlsStream) { s.limits = l }
}

// WithPriorityHosts marks the sources that may use the reserved share of
// the pending-handshake cap (HandshakeLimits.Reserved): the addresses of
// the cluster's members, so that a flood from elsewhere never locks them
// out. isPriority is called on the accept path for every inbound
// connection, concurrently with whatever updates its answers: it must be
// cheap, must not block, and must be safe for concurrent use (a
// MemberHosts's Contains is). It only lends priority to an address; a
// connection from it still needs a member's certificate.
func WithPriorityHosts(isPriority func(ip net.IP) bool) TLSStreamOption {
	return func(s *tlsStream) { s.isPriority = isPriority }
}

// WithHandshakeErrorHandler sets fn to be called for every inbound
// connection dropped before reaching raft: a failed or timed out
// handshake, a peer silent past the first-byte timeout, or one over a
// pending-handshake cap (its error wraps ErrTooManyHandshakes). It is
// where a node logs and counts peers without a valid cluster
// certificate; during a flood it is called for every dropped
// connection, so a handler that logs should rate limit, as
// NewHandshakeErrorLog does. fn may be called concurrently and must not
// block.
func WithHandshakeErrorHandler(fn func(remote net.Addr, err error)) TLSStreamOption {
	return func(s *tlsStream) { s.onHandshakeError = fn }
}

// tlsStream is a raft.StreamLayer over mutual TLS. Handshakes of inbound
// connections run in their own goroutines, so a peer that stalls or
// fails its handshake never delays Accept for the others, and raft only
// ever receives connections from holders of a cluster certificate.
type tlsStream struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config

	handshakeTimeout time.Duration
	firstByteTimeout time.Duration
	limits           HandshakeLimits
	isPriority       func(net.IP) bool
	onHandshakeError func(net.Addr, error)

	accepted chan net.Conn
	pending  *handshakeLimiter
	ctx      context.Context
	cancel   context.CancelFunc
	closing  sync.Once
	wg       sync.WaitGroup
}

// NewTLSStreamLayer listens on bind and returns a stream layer for
// raft.NewNetworkTransport. server must require and verify client
// certificates; client dials with ServerName set to the host of each
// address dialed, so every node's certificate must list the hosts in the
// raft addresses it is known by. advertise is the address other nodes
// dial; nil means the listener's own address.
func NewTLSStreamLayer(bind string, advertise net.Addr, server, client *tls.Config, opts ...TLSStreamOption) (raft.StreamLayer, error) {
	if server == nil || client == nil {
		return nil, errors.New("cluster: raft TLS: server and client TLS configs are both required")
	}
	// Anything weaker would let a node without a cluster certificate
	// replicate; refuse it here rather than trust every caller.
	if server.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, errors.New("cluster: raft TLS: the server config must require and verify client certificates")
	}
	if client.InsecureSkipVerify {
		return nil, errors.New("cluster: raft TLS: the client config must verify the server's certificate")
	}
	s := &tlsStream{
		server:           server,
		client:           client,
		handshakeTimeout: defaultHandshakeTimeout,
		firstByteTimeout: defaultFirstByteTimeout,
		accepted:         make(chan net.Conn),
	}
	for _, o := range opts {
		o(s)
	}
	s.pending = newHandshakeLimiter(s.limits, s.isPriority != nil)
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, fmt.Errorf("cluster: raft TLS: listen on %s: %w", bind, err)
	}
	if advertise == nil {
		advertise = ln.Addr()
	}
	// Peers cannot dial 0.0.0.0; raft's own TCP transport refuses it too.
	if ta, ok := advertise.(*net.TCPAddr); !ok || ta.IP == nil || ta.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("cluster: raft TLS: advertise address %v is not one peers can dial; set it explicitly", advertise)
	}
	s.ln, s.advertise = ln, advertise
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.wg.Add(1)
	go s.acceptLoop()
	return s, nil
}

func (s *tlsStream) acceptLoop() {
	defer s.wg.Done()
	// Out of file descriptors and the like: back off as net/http does
	// instead of spinning.
	retry := backoff.New(5*time.Millisecond, time.Second).WithJitter(0)
	for {
		raw, err := s.ln.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			if !retry.Wait(s.ctx) {
				return
			}
			continue
		}
		retry.Reset()
		// Dropping at once, rather than queueing, keeps a flood from
		// delaying the connections that do get a slot.
		release, err := s.admit(raw.RemoteAddr())
		if err != nil {
			raw.Close()
			s.reportHandshakeError(raw.RemoteAddr(), err)
			continue
		}
		s.wg.Add(1)
		go s.handshake(raw, release)
	}
}

// admit takes a pending-handshake slot for a connection from remote.
func (s *tlsStream) admit(remote net.Addr) (release func(), err error) {
	ip := remoteIP(remote)
	priority := false
	if s.isPriority != nil && ip.IsValid() {
		priority = s.isPriority(net.IP(ip.AsSlice()))
	}
	return s.pending.acquire(ip, priority)
}

func (s *tlsStream) handshake(raw net.Conn, release func()) {
	defer s.wg.Done()
	defer release()
	start := time.Now()
	first, err := s.readFirstByte(raw, start)
	if err != nil {
		raw.Close()
		if s.ctx.Err() == nil {
			s.reportHandshakeError(raw.RemoteAddr(), err)
		}
		return
	}
	conn := tls.Server(first, s.server)
	ctx, cancel := context.WithDeadline(s.ctx, start.Add(s.handshakeTimeout))
	defer cancel()
	// The deadline also covers a peer that stops reading mid-handshake;
	// the context alone only interrupts reads.
	raw.SetDeadline(start.Add(s.handshakeTimeout))
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		if s.ctx.Err() == nil {
			s.reportHandshakeError(raw.RemoteAddr(), err)
		}
		return
	}
	// Raft sets its own deadlines per RPC.
	raw.SetDeadline(time.Time{})
	select {
	case s.accepted <- conn:
	case <-s.ctx.Done():
		conn.Close()
	}
}

// readFirstByte waits, no longer than the first-byte timeout, for the
// peer to send anything, and returns raw with that byte put back. Until
// then the connection costs a slot and a goroutine and has shown nothing:
// this is what turns an idle socket loose quickly.
func (s *tlsStream) readFirstByte(raw net.Conn, start time.Time) (net.Conn, error) {
	wait := min(s.firstByteTimeout, s.handshakeTimeout)
	raw.SetReadDeadline(start.Add(wait))
	// Close must not wait out the timeout of every idle socket.
	stop := context.AfterFunc(s.ctx, func() { raw.SetReadDeadline(time.Now()) })
	defer stop()
	var b [1]byte
	if _, err := io.ReadFull(raw, b[:]); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("peer sent nothing within the first-byte timeout (%v): %w", wait, err)
		}
		return nil, fmt.Errorf("waiting for the peer's first byte: %w", err)
	}
	return &firstByteConn{Conn: raw, first: b[:]}, nil
}

func (s *tlsStream) reportHandshakeError(remote net.Addr, err error) {
	if s.onHandshakeError != nil {
		s.onHandshakeError(remote, fmt.Errorf("cluster: raft TLS handshake with %s: %w", remote, err))
	}
}

// Accept returns the next inbound connection whose TLS handshake, client
// certificate included, has completed.
func (s *tlsStream) Accept() (net.Conn, error) {
	select {
	case c := <-s.accepted:
		return c, nil
	case <-s.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Close stops listening and aborts handshakes still in progress.
// Connections already handed to raft are raft's to close.
func (s *tlsStream) Close() error {
	var err error
	s.closing.Do(func() {
		s.cancel()
		err = s.ln.Close()
		s.wg.Wait()
	})
	return err
}

// Addr is the advertised address: raft stores it in the configuration
// as this node's address.
func (s *tlsStream) Addr() net.Addr { return s.advertise }

// Dial connects to a peer and completes the TLS handshake within
// timeout, verifying the peer's certificate against the host dialed.
func (s *tlsStream) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(address))
	if err != nil {
		return nil, fmt.Errorf("cluster: raft TLS: dial %s: %w", address, err)
	}
	cfg := s.client.Clone()
	cfg.ServerName = host
	if timeout <= 0 {
		timeout = s.handshakeTimeout
	}
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	d := tls.Dialer{Config: cfg}
	conn, err := d.DialContext(ctx, "tcp", string(address))
	if err != nil {
		return nil, fmt.Errorf("cluster: raft TLS: dial %s: %w", address, err)
	}
	return conn, nil
}
