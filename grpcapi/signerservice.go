package grpcapi

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/grpcapi/signerpb"
	"github.com/kms-ha/kms-ha/internal/fielderr"
	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// SignerServiceConfig is the SignerService listener: cosmos/kms's grpc block
// plus an optional client CA.
type SignerServiceConfig struct {
	// Listen is the host:port to bind, e.g. 0.0.0.0:9090.
	Listen string
	// TLSCert and TLSKey are the PEM server certificate (chain) and key.
	// Both are required: the service never runs in plaintext.
	TLSCert string
	TLSKey  string
	// ClientCA, if set, is a PEM bundle of CAs; every client must then
	// present a certificate issued by one of them.
	ClientCA string
	// AllowUnauthenticatedClients lets the service listen beyond loopback
	// without ClientCA. Without a client CA any client that completes TLS
	// may sign any message with every key, so that takes an explicit yes.
	AllowUnauthenticatedClients bool
	// Keys are the secp256k1 keys the service signs with.
	Keys []SignerKey
}

// SignerKey is one SignerService key.
type SignerKey struct {
	// ID is the name clients use in GetKey and Sign.
	ID string
	// KeyFile holds the hex of the 32-byte secp256k1 private key.
	KeyFile string
}

// Validate checks the configuration without touching the files. It
// reports every problem at once; each is a *fielderr.Error naming the
// field of kms.yaml's grpc block, so that config reports it as grpc.<field>.
func (c SignerServiceConfig) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fielderr.New("signer service", field, format, args...))
	}
	host, _, err := net.SplitHostPort(c.Listen)
	switch {
	case c.Listen == "":
		bad("listen", "is required; the SignerService address, e.g. 0.0.0.0:9090")
	case err != nil:
		bad("listen", "%q is not HOST:PORT; the SignerService address, e.g. 0.0.0.0:9090", c.Listen)
	}
	if c.TLSCert == "" || c.TLSKey == "" {
		bad("tls_cert", "tls_cert and tls_key are required: the SignerService only serves TLS")
	}
	if c.ClientCA == "" && !c.AllowUnauthenticatedClients && (err != nil || !isLoopbackHost(host)) {
		bad("client_ca", "is required when grpc.listen (%q) is not a loopback address: without it any client that "+
			"completes TLS can sign any message with every grpc key; set client_ca to the CA of your clients' certificates, "+
			"listen on 127.0.0.1, or set grpc.allow_unauthenticated_clients: true if the network alone admits only your clients", c.Listen)
	}
	if len(c.Keys) == 0 {
		bad("keys", "is empty: add at least one key (id, key_file) or remove the grpc block")
	}
	seen := make(map[string]bool, len(c.Keys))
	for i, k := range c.Keys {
		p := fmt.Sprintf("keys[%d]", i)
		if k.ID == "" {
			bad(p+".id", "is required")
		} else if seen[k.ID] {
			bad(p+".id", "%q is used twice", k.ID)
		}
		seen[k.ID] = true
		if k.KeyFile == "" {
			bad(p+".key_file", "is required: a file holding the hex of a 32-byte secp256k1 key")
		}
	}
	return errors.Join(errs...)
}

// isLoopbackHost: a name other than localhost could resolve anywhere, so it
// does not count.
func isLoopbackHost(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || (ip != nil && ip.IsLoopback())
}

// LoadSignerKeys loads every configured key file. Errors never include key
// material.
func LoadSignerKeys(keys []SignerKey) (map[string]*secp256k1.Key, error) {
	out := make(map[string]*secp256k1.Key, len(keys))
	for _, k := range keys {
		if _, dup := out[k.ID]; dup {
			return nil, fmt.Errorf("signer service: key id %q is configured twice", k.ID)
		}
		key, err := secp256k1.Load(k.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("signer service: key %q: %w", k.ID, err)
		}
		out[k.ID] = key
	}
	return out, nil
}

// SignerServiceTLS builds the server's TLS configuration: TLS 1.2 or later
// with the configured certificate and, when ClientCA is set, mandatory
// client certificates verified against it.
func SignerServiceTLS(c SignerServiceConfig) (*tls.Config, error) {
	if c.TLSCert == "" || c.TLSKey == "" {
		return nil, errors.New("signer service: TLS is mandatory: set both tls_cert and tls_key")
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("signer service: load TLS certificate %s and key %s: %w", c.TLSCert, c.TLSKey, err)
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	}
	if c.ClientCA != "" {
		pem, err := os.ReadFile(c.ClientCA)
		if err != nil {
			return nil, fmt.Errorf("signer service: read client CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("signer service: client CA %s holds no PEM certificate", c.ClientCA)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// SignerService implements cosmos/kms's SignerService over secp256k1 keys:
// Sign accepts only RecoverableMessage payloads.
//
// Authorization is by transport alone, as in cosmos/kms: any client that
// completes the TLS handshake (with a client certificate when a client CA is
// configured) may use every configured key.
type SignerService struct {
	signerpb.UnimplementedSignerServiceServer
	keys map[string]*secp256k1.Key
	ids  []string // sorted
	log  *slog.Logger
}

var _ signerpb.SignerServiceServer = (*SignerService)(nil)

// NewSignerService serves keys, indexed by their id. The map is copied.
func NewSignerService(keys map[string]*secp256k1.Key, log *slog.Logger) *SignerService {
	if log == nil {
		log = slog.Default()
	}
	s := &SignerService{keys: make(map[string]*secp256k1.Key, len(keys)), log: log}
	for id, k := range keys {
		s.keys[id] = k
		s.ids = append(s.ids, id)
	}
	sort.Strings(s.ids)
	return s
}

// Register adds the service to g.
func (s *SignerService) Register(g *grpc.Server) { signerpb.RegisterSignerServiceServer(g, s) }

func (s *SignerService) key(id string) (*secp256k1.Key, error) {
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "key id is required")
	}
	k, ok := s.keys[id]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "key %q is not configured on this signer", id)
	}
	return k, nil
}

func keyInfo(id string, k *secp256k1.Key) *signerpb.Key {
	return &signerpb.Key{Id: id, Pubkey: k.PubKeyCompressed(), Algo: secp256k1.Algo}
}

// GetKey returns one key's id, compressed public key and algorithm.
func (s *SignerService) GetKey(_ context.Context, req *signerpb.GetKeyRequest) (*signerpb.GetKeyResponse, error) {
	k, err := s.key(req.GetId())
	if err != nil {
		return nil, err
	}
	return &signerpb.GetKeyResponse{Key: keyInfo(req.GetId(), k)}, nil
}

// GetKeys returns every key, ordered by id.
func (s *SignerService) GetKeys(context.Context, *signerpb.GetKeysRequest) (*signerpb.GetKeysResponse, error) {
	resp := &signerpb.GetKeysResponse{Keys: make([]*signerpb.Key, 0, len(s.ids))}
	for _, id := range s.ids {
		resp.Keys = append(resp.Keys, keyInfo(id, s.keys[id]))
	}
	return resp, nil
}

// Sign signs SHA-256 of a RecoverableMessage and answers with r, s (32 bytes
// each, low-S) and v (one byte, the recovery id 0 or 1). Other payload kinds
// are UNIMPLEMENTED.
func (s *SignerService) Sign(ctx context.Context, req *signerpb.SignRequest) (*signerpb.SignResponse, error) {
	k, err := s.key(req.GetKeyId())
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
	digest := sha256.Sum256(msg)
	r, sv, v := k.SignRecoverable(msg)
	attrs := []any{
		slog.String("key_id", req.GetKeyId()),
		slog.String("msg_sha256", hex.EncodeToString(digest[:])),
		slog.Int("msg_len", len(msg)),
	}
	if p, ok := peer.FromContext(ctx); ok {
		attrs = append(attrs, slog.String("peer", p.Addr.String()))
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			attrs = append(attrs, slog.String("client_cert", ti.State.PeerCertificates[0].Subject.String()))
		}
	}
	s.log.Info("signer service: signed", attrs...)
	return &signerpb.SignResponse{Signature: &signerpb.SignResponse_RecoverableSignature{
		RecoverableSignature: &signerpb.RecoverableMessageSignature{R: r[:], S: sv[:], V: []byte{v}},
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

// SignerServiceListener is a running SignerService.
type SignerServiceListener struct {
	srv  *grpc.Server
	lis  net.Listener
	done chan error
	log  *slog.Logger
}

// StartSignerService validates cfg, loads its keys and TLS files, binds
// cfg.Listen and serves in the background until Stop.
func StartSignerService(cfg SignerServiceConfig, log *slog.Logger) (*SignerServiceListener, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	tlsCfg, err := SignerServiceTLS(cfg)
	if err != nil {
		return nil, err
	}
	keys, err := LoadSignerKeys(cfg.Keys)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("signer service: listen on %s: %w", cfg.Listen, err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsCfg)))
	NewSignerService(keys, log).Register(srv)
	l := &SignerServiceListener{srv: srv, lis: lis, done: make(chan error, 1), log: log}
	go func() { l.done <- srv.Serve(lis) }()
	log.Info("signer service: listening", "addr", lis.Addr().String(), "keys", len(keys),
		"client_certs", cfg.ClientCA != "")
	return l, nil
}

// Addr is the bound address (useful when Listen used port 0).
func (l *SignerServiceListener) Addr() net.Addr { return l.lis.Addr() }

// Stop stops accepting connections, lets in-flight calls finish for up to
// five seconds, then closes everything. It returns the serve error, if any.
func (l *SignerServiceListener) Stop() error {
	stopped := make(chan struct{})
	go func() {
		l.srv.GracefulStop()
		close(stopped)
	}()
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		l.srv.Stop()
		<-stopped
	}
	err := <-l.done
	l.done <- err // keep Stop idempotent
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}
