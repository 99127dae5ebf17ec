package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Role is what a certificate allows its holder to do in the cluster.
type Role int

const (
	// RoleNode: a signer node. It speaks raft while it is a member and
	// calls the Cluster API for itself (join, leave, address change).
	RoleNode Role = iota + 1
	// RoleOperator: a workstation or automation. It reads and manages
	// (remove, transfer, import, backup, restore) but never speaks raft.
	RoleOperator
	// RoleReader: monitoring. It may only read.
	RoleReader
)

// The URI SAN hosts that name a certificate's role: kms-ha://node/<id>,
// kms-ha://operator/<name>, kms-ha://reader/<name>.
const (
	uriHostOperator = "operator"
	uriHostReader   = "reader"
)

func (r Role) String() string {
	switch r {
	case RoleNode:
		return "node"
	case RoleOperator:
		return "operator"
	case RoleReader:
		return "read-only operator"
	}
	return "unknown"
}

func (r Role) uriHost() string {
	switch r {
	case RoleNode:
		return uriHost
	case RoleOperator:
		return uriHostOperator
	case RoleReader:
		return uriHostReader
	}
	return ""
}

// Identity is who a verified certificate names: one role and one name (the
// node id for nodes).
type Identity struct {
	Role Role
	Name string
}

func (id Identity) String() string { return id.Role.String() + " " + id.Name }

// URI is the SAN that carries the identity.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: URIScheme, Host: id.Role.uriHost(), Path: "/" + id.Name}
}

// ParseIdentity reads an identity back from its string form ("node n1",
// "operator alice", "read-only operator bob"), as forwarded between nodes.
func ParseIdentity(s string) (Identity, error) {
	for _, r := range []Role{RoleNode, RoleOperator, RoleReader} {
		if name, ok := strings.CutPrefix(s, r.String()+" "); ok && nodeIDRe.MatchString(name) {
			return Identity{Role: r, Name: name}, nil
		}
	}
	return Identity{}, fmt.Errorf("pki: %q is not an identity", s)
}

// ErrNoIdentity is returned for a certificate that names no kms-ha role.
var ErrNoIdentity = errors.New("the certificate names no kms-ha node or operator")

// PeerIdentity returns the identity in the verified peer certificate of a
// finished handshake. It refuses unverified certificates, so a config that
// skipped verification cannot fool it.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if !cs.HandshakeComplete {
		return Identity{}, errors.New("pki: peer identity: TLS handshake not complete")
	}
	if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
		return Identity{}, errors.New("pki: peer identity: the peer presented no verified certificate")
	}
	return IdentityOf(cs.PeerCertificates[0])
}

// PeerNodeID returns the node id of a verified peer certificate; an
// operator's certificate is refused.
func PeerNodeID(cs tls.ConnectionState) (string, error) {
	id, err := PeerIdentity(cs)
	if err != nil {
		return "", err
	}
	if id.Role != RoleNode {
		return "", fmt.Errorf("pki: the peer holds a %s certificate (%s), not a node certificate", id.Role, id.Name)
	}
	return id.Name, nil
}

// IdentityOf reads the one kms-ha URI SAN of c. A certificate naming two
// identities is refused rather than resolved: a role must never be a
// matter of which SAN is read first.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	var found *Identity
	for _, u := range c.URIs {
		if u.Scheme != URIScheme {
			continue
		}
		var role Role
		switch u.Host {
		case uriHost:
			role = RoleNode
		case uriHostOperator:
			role = RoleOperator
		case uriHostReader:
			role = RoleReader
		default:
			return Identity{}, fmt.Errorf("pki: certificate %q: unknown kms-ha URI %s", c.Subject.CommonName, u)
		}
		name := strings.TrimPrefix(u.Path, "/")
		if !nodeIDRe.MatchString(name) || u.RawQuery != "" || u.Fragment != "" {
			return Identity{}, fmt.Errorf("pki: certificate %q: malformed kms-ha URI %s", c.Subject.CommonName, u)
		}
		id := Identity{Role: role, Name: name}
		if found != nil && *found != id {
			return Identity{}, fmt.Errorf("pki: certificate %q names two identities (%s and %s)", c.Subject.CommonName, found, id)
		}
		found = &id
	}
	if found == nil {
		return Identity{}, fmt.Errorf("pki: certificate %q carries no %s://%s/<id> or %s://%s/<name> URI; issue certificates with `kms-ha certs issue`: %w",
			c.Subject.CommonName, URIScheme, uriHost, URIScheme, uriHostOperator, ErrNoIdentity)
	}
	return *found, nil
}

func nodeIDOf(c *x509.Certificate) (string, error) {
	id, err := IdentityOf(c)
	if err != nil {
		return "", err
	}
	if id.Role != RoleNode {
		return "", fmt.Errorf("pki: certificate %q is a %s certificate, not a node certificate", c.Subject.CommonName, id.Role)
	}
	return id.Name, nil
}
