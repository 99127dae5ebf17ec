package grpcapi

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/grpcapi/signerservicepb"
	"github.com/kms-ha/kms-ha/keys/awskms"
)

// SignerService serves cosmos/kms v0.1.0's SignerService (grpc.api:
// released): the payload of Sign is read by the scheme of the key it names.
//
// Authorization is by transport alone, as in cosmos/kms: any client that
// completes the handshake (with a client certificate when a client CA is
// configured) may use every configured key.
type SignerService struct {
	signerservicepb.UnimplementedSignerServiceServer
	keys *SignerKeys
	log  *slog.Logger
}

var _ signerservicepb.SignerServiceServer = (*SignerService)(nil)

// NewSignerService serves keys.
func NewSignerService(keys *SignerKeys, log *slog.Logger) *SignerService {
	if log == nil {
		log = slog.Default()
	}
	return &SignerService{keys: keys, log: log}
}

// Register adds the service to g.
func (s *SignerService) Register(g *grpc.Server) { signerservicepb.RegisterSignerServiceServer(g, s) }

// schemes maps kms.yaml's algorithms to the contract's enum.
var schemes = map[string]signerservicepb.SignatureScheme{
	AlgoEd25519:      signerservicepb.SignatureScheme_ED25519,
	AlgoSecp256k1:    signerservicepb.SignatureScheme_ECDSA_SECP256K1,
	AlgoSecp256k1Eth: signerservicepb.SignatureScheme_ECDSA_SECP256K1ETH,
}

func releasedKey(k *openedKey) *signerservicepb.Key {
	return &signerservicepb.Key{Id: k.id, Pubkey: k.pubKey(), Scheme: schemes[k.algorithm]}
}

// GetKey returns one key's id, public key and scheme.
func (s *SignerService) GetKey(_ context.Context, req *signerservicepb.GetKeyRequest) (*signerservicepb.GetKeyResponse, error) {
	k, err := lookupKey(s.keys, req.GetId())
	if err != nil {
		return nil, err
	}
	return &signerservicepb.GetKeyResponse{Key: releasedKey(k)}, nil
}

// GetKeys returns every key, ordered by id.
func (s *SignerService) GetKeys(context.Context, *signerservicepb.GetKeysRequest) (*signerservicepb.GetKeysResponse, error) {
	resp := &signerservicepb.GetKeysResponse{Keys: make([]*signerservicepb.Key, 0, len(s.keys.ids))}
	for _, id := range s.keys.ids {
		resp.Keys = append(resp.Keys, releasedKey(s.keys.get(id)))
	}
	return resp, nil
}

// Sign signs payload.generic by the key's scheme (see the proto).
func (s *SignerService) Sign(ctx context.Context, req *signerservicepb.SignRequest) (*signerservicepb.SignResponse, error) {
	k, err := lookupKey(s.keys, req.GetKeyId())
	if err != nil {
		return nil, err
	}
	payload := req.GetPayload().GetGeneric()
	sig, err := k.signPayload(ctx, payload)
	if err != nil {
		return nil, signStatus(k.id, err)
	}
	logSigned(ctx, s.log, k.id, payload)
	return &signerservicepb.SignResponse{Signature: sig}, nil
}

func lookupKey(ks *SignerKeys, id string) (*openedKey, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	k := ks.get(id)
	if k == nil {
		return nil, status.Errorf(codes.NotFound, "key %q is not configured on this signer", id)
	}
	return k, nil
}

// signStatus types a signing failure for the client: its own mistake, a
// deadline, a backend worth retrying, or an internal failure.
func signStatus(id string, err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, errPayload):
		code = codes.InvalidArgument
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, awskms.ErrThrottled), errors.Is(err, awskms.ErrUnavailable):
		code = codes.Unavailable
	}
	return status.Errorf(code, "sign with key %q: %v", id, err)
}

// logSigned records what was signed: a digest of the payload, never the
// payload, and who asked.
func logSigned(ctx context.Context, log *slog.Logger, id string, payload []byte) {
	digest := sha256.Sum256(payload)
	attrs := []any{
		slog.String("key_id", id),
		slog.String("payload_sha256", hex.EncodeToString(digest[:])),
		slog.Int("payload_len", len(payload)),
	}
	if p, ok := peer.FromContext(ctx); ok {
		attrs = append(attrs, slog.String("peer", p.Addr.String()))
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			attrs = append(attrs, slog.String("client_cert", ti.State.PeerCertificates[0].Subject.String()))
		}
	}
	log.Info("signer service: signed", attrs...)
}
