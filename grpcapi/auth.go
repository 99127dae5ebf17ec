package grpcapi

import (
	"context"
	"crypto/tls"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/pki"
)

// What each Cluster method needs of its caller. A method missing here is
// refused: a new method is closed until someone decides who may call it.
type access int

const (
	// readAccess: members' node certificates, operators, read-only operators.
	readAccess access = iota + 1
	// writeAccess: members' node certificates and operators.
	writeAccess
	// joinAccess: a node certificate asking for its own id only.
	joinAccess
)

var methodAccess = map[string]access{
	clusterpb.Cluster_Status_FullMethodName:             readAccess,
	clusterpb.Cluster_ReadIndex_FullMethodName:          readAccess,
	clusterpb.Cluster_Join_FullMethodName:               joinAccess,
	clusterpb.Cluster_Remove_FullMethodName:             writeAccess,
	clusterpb.Cluster_TransferLeadership_FullMethodName: writeAccess,
	clusterpb.Cluster_ImportState_FullMethodName:        writeAccess,
	clusterpb.Cluster_Backup_FullMethodName:             writeAccess,
}

// callerKey is the metadata a forwarding member sets to the identity it
// verified, so the leader authorises the operator or node who asked, not
// the follower that passed the request on.
const callerKey = "kms-ha-caller"

type callerCtxKey struct{}

// callerOf returns the authorised caller of a request.
func callerOf(ctx context.Context) (pki.Identity, bool) {
	id, ok := ctx.Value(callerCtxKey{}).(pki.Identity)
	return id, ok
}

// withForwardedCaller marks an outgoing call as made on behalf of the
// caller of ctx.
func withForwardedCaller(ctx context.Context) context.Context {
	id, ok := callerOf(ctx)
	if !ok {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, callerKey, id.String())
}

// NewGRPCServer returns a gRPC server for the Cluster service over mutual
// TLS, with every call authorised by its caller's certificate role.
func (s *ClusterServer) NewGRPCServer(tlsCfg *tls.Config) *grpc.Server {
	g := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)), grpc.UnaryInterceptor(s.authorize))
	clusterpb.RegisterClusterServer(g, s)
	return g
}

func (s *ClusterServer) authorize(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	caller, err := s.caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.allow(caller, info.FullMethod, req); err != nil {
		if held, ok := s.refusals.Allow(caller.String() + info.FullMethod); ok {
			s.log.Warn("cluster API call refused", "method", info.FullMethod, "caller", caller.String(), "err", err,
				"similar_refusals_since_last_report", held)
		}
		return nil, err
	}
	return handler(context.WithValue(ctx, callerCtxKey{}, caller), req)
}

// caller is the verified identity of the TLS peer or, for a request a
// member forwarded, the identity that member verified.
func (s *ClusterServer) caller(ctx context.Context) (pki.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return pki.Identity{}, status.Error(codes.Unauthenticated, "no peer information")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return pki.Identity{}, status.Error(codes.Unauthenticated, "the cluster API needs mutual TLS")
	}
	direct, err := pki.PeerIdentity(info.State)
	if err != nil {
		return pki.Identity{}, status.Errorf(codes.PermissionDenied, "%v", err)
	}
	fwd := metadata.ValueFromIncomingContext(ctx, callerKey)
	if len(fwd) == 0 {
		return direct, nil
	}
	// Only a voter may speak for someone else: it checked that caller's
	// certificate itself. (A non-voter may have admitted itself with its
	// own node certificate a moment ago; it is not trusted that far.)
	if direct.Role != pki.RoleNode || !s.isVoter(direct.Name) {
		return pki.Identity{}, status.Errorf(codes.PermissionDenied,
			"%s may not forward requests on behalf of others: only voters do", direct)
	}
	if len(fwd) != 1 {
		return pki.Identity{}, status.Error(codes.InvalidArgument, "more than one forwarded caller")
	}
	id, err := pki.ParseIdentity(fwd[0])
	if err != nil {
		return pki.Identity{}, status.Errorf(codes.InvalidArgument, "forwarded caller: %v", err)
	}
	return id, nil
}

func (s *ClusterServer) allow(c pki.Identity, method string, req any) error {
	switch methodAccess[method] {
	case readAccess:
		if c.Role == pki.RoleOperator || c.Role == pki.RoleReader || s.isNodeAllowed(c) {
			return nil
		}
		// A node waiting for admission has nothing to hide but that it
		// waits; the leader asks it how far it got before promoting it.
		if c.Role == pki.RoleNode && s.node.Load() == nil {
			return nil
		}
	case writeAccess:
		// Any node certificate can admit itself as a non-voter, so writes
		// take a voter's (or an operator's) certificate.
		if c.Role == pki.RoleOperator || (c.Role == pki.RoleNode && s.isVoter(c.Name)) {
			return nil
		}
		if c.Role == pki.RoleReader {
			return status.Errorf(codes.PermissionDenied, "%s holds a read-only certificate: it may read, not change the cluster", c)
		}
		if c.Role == pki.RoleNode && s.isNodeAllowed(c) {
			return status.Errorf(codes.PermissionDenied, "%s is not a voter (yet): only voters' node certificates and operator "+
				"certificates may change the cluster", c)
		}
	case joinAccess:
		j, ok := req.(*clusterpb.JoinRequest)
		if c.Role == pki.RoleNode && ok && j.GetId() == c.Name {
			return nil
		}
		if c.Role == pki.RoleNode && ok {
			return status.Errorf(codes.PermissionDenied, "node %s may only ask to join as itself, not as %q", c.Name, j.GetId())
		}
		return status.Errorf(codes.PermissionDenied, "%s cannot join: run `kms-ha join` on the node, with its node certificate", c)
	default:
		return status.Errorf(codes.PermissionDenied, "%s is not a method of the cluster API", method)
	}
	return status.Errorf(codes.PermissionDenied, "%s is not a current member of this cluster (a removed node, or one not admitted yet): "+
		"only members' node certificates and operator certificates may call this", c)
}

// isNodeAllowed: a node certificate counts while its node is a member (as
// raft sees it: a node just admitted counts the members that admitted it),
// and a node may always ask itself (a node waiting for admission included).
func (s *ClusterServer) isNodeAllowed(c pki.Identity) bool {
	return c.Role == pki.RoleNode && (c.Name == s.id || s.isCurrentMember(c.Name))
}

func (s *ClusterServer) isVoter(id string) bool {
	node := s.node.Load()
	return node != nil && node.IsVoter(id)
}

func (s *ClusterServer) isCurrentMember(id string) bool {
	node := s.node.Load()
	if node == nil {
		return false
	}
	return node.Trusts(id)
}
