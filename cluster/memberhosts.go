package cluster

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// MemberHosts is the set of IP addresses of the raft configuration's
// servers. Its Contains is the function to pass to WithPriorityHosts: a
// lock-free read of an immutable map, safe to call from the accept path
// while Follow replaces the map.
type MemberHosts struct {
	ips atomic.Pointer[map[netip.Addr]struct{}]

	mu sync.Mutex
	// resolved keeps the last addresses each host name resolved to, so a
	// DNS failure does not take a member's priority away.
	resolved map[string][]netip.Addr
}

// Contains reports whether ip is the address of a server of the last
// configuration seen.
func (h *MemberHosts) Contains(ip net.IP) bool {
	set := h.ips.Load()
	if set == nil {
		return false
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return false
	}
	_, found := (*set)[a.Unmap()]
	return found
}

// Follow keeps the set equal to the addresses of r's latest
// configuration, read now and then every interval until ctx ends.
// Configuration changes are rare and a member missing from the set is
// merely unprivileged, so polling is enough. Host names are resolved
// here, never on the accept path.
func (h *MemberHosts) Follow(ctx context.Context, r *raft.Raft, every time.Duration, log *slog.Logger) {
	if every <= 0 {
		every = 5 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		if f := r.GetConfiguration(); f.Error() == nil {
			h.Update(ctx, f.Configuration().Servers, log)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Update replaces the set with the addresses of servers. A host name is
// resolved (within 2 s); one that does not resolve keeps the addresses it
// last resolved to, and is logged at debug level on log, if not nil.
func (h *MemberHosts) Update(ctx context.Context, servers []raft.Server, log *slog.Logger) {
	h.mu.Lock()
	defer h.mu.Unlock()
	resolved := map[string][]netip.Addr{}
	set := map[netip.Addr]struct{}{}
	for _, s := range servers {
		host, _, err := net.SplitHostPort(string(s.Address))
		if err != nil {
			host = string(s.Address)
		}
		addrs, ok := resolved[host]
		if !ok {
			addrs = h.resolve(ctx, host, log)
			resolved[host] = addrs
		}
		for _, a := range addrs {
			set[a] = struct{}{}
		}
	}
	h.resolved = resolved
	h.ips.Store(&set)
}

func (h *MemberHosts) resolve(ctx context.Context, host string, log *slog.Logger) []netip.Addr {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a.WithZone("").Unmap()}
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		if log != nil {
			log.Debug("raft: cannot resolve a member's host; keeping its last addresses for handshake priority", "host", host, "err", err)
		}
		return h.resolved[host]
	}
	for i, a := range addrs {
		addrs[i] = a.WithZone("").Unmap()
	}
	return addrs
}
