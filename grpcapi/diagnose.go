package grpcapi

import (
	"crypto/tls"
	"errors"
	"net"
	"time"
)

// ErrNotClusterAPI is wrapped by a CallError whose address completed a TLS
// handshake without offering gRPC: most likely a node's raft port
// (cluster.raft_addr) given where its API address (cluster.api_addr)
// belongs.
var ErrNotClusterAPI = errors.New("the address is not a cluster API")

// speaksTLSWithoutH2 tells whether addr accepts a TLS handshake with the
// dialer's certificate but does not agree on HTTP/2 through ALPN, as
// every gRPC server does. The raft stream layer is such a server: mutual
// TLS with the same CA, no ALPN. gRPC reports that case only as text in
// an Unavailable status ("missing selected ALPN property"), so the
// dialer asks the TLS layer itself, whose answer is a field.
func (d Dialer) speaksTLSWithoutH2(addr string, timeout time.Duration) bool {
	cfg := d.TLS.Clone()
	cfg.NextProtos = []string{"h2"}
	nd := &net.Dialer{Timeout: min(timeout, 2*time.Second)}
	conn, err := tls.DialWithDialer(nd, "tcp", addr, cfg)
	if err != nil {
		return false
	}
	defer conn.Close()
	return conn.ConnectionState().NegotiatedProtocol != "h2"
}
