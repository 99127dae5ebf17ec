package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Defaults of the inbound raft handshake limits. Raft needs a handful of
// connections per peer and a handshake on a LAN takes milliseconds, so
// none of these bites unless someone floods the port.
const (
	defaultHandshakeTimeout = 5 * time.Second
	// A real peer's first bytes are its TLS ClientHello, sent as soon as
	// TCP connects: a second is ample even across a WAN, and it is how
	// long an idle socket can hold a handshake slot.
	defaultFirstByteTimeout = time.Second
	defaultMaxPending       = 128
	// Several nodes may share an address (one host, NAT); a node's raft
	// transport rarely has more than a few dials in flight at once.
	defaultMaxPendingPerSource = 8
	// Slots of the global cap that only priority sources (members) may
	// take, so a flood from many addresses cannot lock members out.
	defaultReservedPending = 32
)

// ErrTooManyHandshakes is wrapped by the error the handshake error handler
// receives for a connection dropped because its source, or everyone
// together, already had as many pending handshakes as allowed.
var ErrTooManyHandshakes = errors.New("too many TLS handshakes in progress")

// HandshakeLimits caps the inbound connections of the raft stream layer
// that have not completed their TLS handshake yet. Zero fields keep their
// defaults.
type HandshakeLimits struct {
	// Total caps pending handshakes from all sources together (128).
	Total int
	// PerSource caps pending handshakes from one source: one IPv4
	// address, or one IPv6 /64, which is what a single host can
	// usually choose from (8).
	PerSource int
	// Reserved is the part of Total that only sources accepted by
	// WithPriorityHosts may use (32); without priority hosts nothing is
	// reserved and every source may use all of Total.
	Reserved int
}

func (l HandshakeLimits) withDefaults() HandshakeLimits {
	if l.Total <= 0 {
		l.Total = defaultMaxPending
	}
	if l.PerSource <= 0 {
		l.PerSource = defaultMaxPendingPerSource
	}
	if l.Reserved <= 0 {
		l.Reserved = defaultReservedPending
	}
	// Always leave others at least one slot: a node not (yet) in the
	// configuration, such as one being admitted, must get through.
	l.Reserved = min(l.Reserved, l.Total-1)
	return l
}

// handshakeLimiter counts pending handshakes globally and per source.
type handshakeLimiter struct {
	limits HandshakeLimits

	mu       sync.Mutex
	total    int
	bySource map[netip.Addr]int
}

func newHandshakeLimiter(l HandshakeLimits, withPriority bool) *handshakeLimiter {
	l = l.withDefaults()
	if !withPriority {
		l.Reserved = 0
	}
	return &handshakeLimiter{limits: l, bySource: map[netip.Addr]int{}}
}

// acquire takes a slot for a connection from src, or says why not. The
// returned release must be called exactly once when the handshake ends.
func (h *handshakeLimiter) acquire(src netip.Addr, priority bool) (release func(), err error) {
	key := sourceKey(src)
	h.mu.Lock()
	defer h.mu.Unlock()
	// A member's address may also carry other traffic (a NAT, the same
	// host): it gets the reserved share as its own cap, so eight stalled
	// sockets from there cannot lock the member out.
	perSource := h.limits.PerSource
	if priority {
		perSource = max(perSource, h.limits.Reserved)
	}
	if n := h.bySource[key]; n >= perSource {
		return nil, fmt.Errorf("%w from %s (%d); connection dropped", ErrTooManyHandshakes, key, n)
	}
	limit := h.limits.Total
	if !priority {
		limit -= h.limits.Reserved
	}
	if h.total >= limit {
		return nil, fmt.Errorf("%w (%d, of which %d reserved for members); connection dropped", ErrTooManyHandshakes, h.total, h.limits.Reserved)
	}
	h.total++
	h.bySource[key]++
	var once sync.Once
	return func() { once.Do(func() { h.release(key) }) }, nil
}

func (h *handshakeLimiter) release(key netip.Addr) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.total--
	if h.bySource[key]--; h.bySource[key] <= 0 {
		delete(h.bySource, key)
	}
}

// sourceKey is what the per-source cap counts by: the IPv4 address, or
// the /64 of an IPv6 address, since one host commonly holds a whole /64.
func sourceKey(ip netip.Addr) netip.Addr {
	ip = ip.Unmap()
	if ip.Is4() || !ip.IsValid() {
		return ip
	}
	p, err := ip.WithZone("").Prefix(64)
	if err != nil {
		return ip
	}
	return p.Addr()
}

// remoteIP is the IP of a connection's remote address; the zero Addr if
// it has none (not TCP), which then counts as one source.
func remoteIP(a net.Addr) netip.Addr {
	if ta, ok := a.(*net.TCPAddr); ok {
		if ip, ok := netip.AddrFromSlice(ta.IP); ok {
			return ip.Unmap()
		}
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// firstByteConn hands back the byte read while waiting for the peer to
// speak before anything else it reads.
type firstByteConn struct {
	net.Conn
	first []byte
}

func (c *firstByteConn) Read(p []byte) (int, error) {
	if len(c.first) > 0 && len(p) > 0 {
		n := copy(p, c.first)
		c.first = c.first[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}
