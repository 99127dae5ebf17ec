package grpcapi

import (
	"context"
	"crypto/sha256"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/grpcapi/signerpb"
)

// PreviewSignerService serves the pre-release SignerService (grpc.api:
// preview): Sign accepts only RecoverableMessage payloads and answers r, s
// and v over SHA-256 of the message, with secp256k1 keys.
type PreviewSignerService struct {
	signerpb.UnimplementedSignerServiceServer
	keys *SignerKeys
	log  *slog.Logger
}

var _ signerpb.SignerServiceServer = (*PreviewSignerService)(nil)

// NewPreviewSignerService serves keys, which must all be secp256k1 keys
// (SignerServiceConfig.Validate refuses ed25519 with the preview).
func NewPreviewSignerService(keys *SignerKeys, log *slog.Logger) *PreviewSignerService {
	if log == nil {
		log = slog.Default()
	}
	return &PreviewSignerService{keys: keys, log: log}
}

// previewGenerated is the service path the generated preview code uses;
// releasedPath the one its clients call (see the preview proto).
const (
	previewGenerated = "kmsha.signerservice.preview.SignerService"
	releasedPath     = "cosmos.kms.signerservice.SignerService"
)

// Register adds the service to g under the path preview clients call.
func (s *PreviewSignerService) Register(g *grpc.Server) {
	desc := signerpb.SignerService_ServiceDesc
	desc.ServiceName = releasedPath
	g.RegisterService(&desc, s)
}

// NewPreviewSignerClient is a client of the pre-release contract: the
// generated client with its calls sent to the path the service has on the
// wire.
func NewPreviewSignerClient(cc grpc.ClientConnInterface) signerpb.SignerServiceClient {
	return signerpb.NewSignerServiceClient(previewConn{cc})
}

type previewConn struct{ grpc.ClientConnInterface }

func (c previewConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.ClientConnInterface.Invoke(ctx, strings.Replace(method, previewGenerated, releasedPath, 1), args, reply, opts...)
}

// previewAlgo is the algo the pre-release GetKey reports for every key.
const previewAlgo = "secp256k1"

func previewKey(k *openedKey) *signerpb.Key {
	return &signerpb.Key{Id: k.id, Pubkey: k.pubKey(), Algo: previewAlgo}
}

// GetKey returns one key's id, compressed public key and algorithm.
func (s *PreviewSignerService) GetKey(_ context.Context, req *signerpb.GetKeyRequest) (*signerpb.GetKeyResponse, error) {
	k, err := lookupKey(s.keys, req.GetId())
	if err != nil {
		return nil, err
	}
	return &signerpb.GetKeyResponse{Key: previewKey(k)}, nil
}

// GetKeys returns every key, ordered by id.
func (s *PreviewSignerService) GetKeys(context.Context, *signerpb.GetKeysRequest) (*signerpb.GetKeysResponse, error) {
	resp := &signerpb.GetKeysResponse{Keys: make([]*signerpb.Key, 0, len(s.keys.ids))}
	for _, id := range s.keys.ids {
		resp.Keys = append(resp.Keys, previewKey(s.keys.get(id)))
	}
	return resp, nil
}

// Sign signs SHA-256 of a RecoverableMessage and answers with r, s (32 bytes
// each, low-S) and v (one byte, the recovery id 0 or 1). Other payload kinds
// are UNIMPLEMENTED.
func (s *PreviewSignerService) Sign(ctx context.Context, req *signerpb.SignRequest) (*signerpb.SignResponse, error) {
	k, err := lookupKey(s.keys, req.GetKeyId())
	if err != nil {
		return nil, err
	}
	var msg []byte
	switch p := req.GetPayload().(type) {
	case *signerpb.SignRequest_RecoverableMessage:
		msg = p.RecoverableMessage.GetMessage()
	case nil:
		return nil, status.Error(codes.InvalidArgument, "no payload: set recoverable_message")
	default:
		return nil, status.Errorf(codes.Unimplemented,
			"payload %s is not supported by this signer: only recoverable_message (secp256k1) is", payloadKind(req))
	}
	if len(msg) == 0 {
		return nil, status.Error(codes.InvalidArgument, "recoverable_message.message is empty")
	}
	if k.ecdsa == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "key %q is not a secp256k1 key", k.id)
	}
	digest := sha256.Sum256(msg)
	rs, v, err := k.signDigest(ctx, digest[:])
	if err != nil {
		return nil, signStatus(k.id, err)
	}
	logSigned(ctx, s.log, k.id, msg)
	return &signerpb.SignResponse{Signature: &signerpb.SignResponse_RecoverableSignature{
		RecoverableSignature: &signerpb.RecoverableMessageSignature{R: rs[:32], S: rs[32:], V: []byte{v}},
	}}, nil
}

// payloadKind names the oneof field a request set, as on the wire.
func payloadKind(req *signerpb.SignRequest) string {
	od := req.ProtoReflect().Descriptor().Oneofs().ByName("payload")
	if fd := req.ProtoReflect().WhichOneof(od); fd != nil {
		return string(fd.Name())
	}
	return "(none)"
}
