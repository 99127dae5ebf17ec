package grpcapi

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
)

// The SignerService contracts kms-ha serves, as kms.yaml's grpc.api names
// them.
const (
	// APIReleased is cosmos/kms v0.1.0's contract (proto
	// signerservice/signerservice.proto, Go package signerservicepb).
	APIReleased = "released"
	// APIPreview is the pre-release contract kms-ha served before v0.1.0
	// (RecoverableMessage in, r, s, v out; Go package signerpb).
	APIPreview = "preview"
)

// SignerServiceConfig is the SignerService listener: cosmos/kms's grpc block
// plus an optional client CA and the contract to serve.
type SignerServiceConfig struct {
	// Listen is the host:port to bind, e.g. 0.0.0.0:9090.
	Listen string
	// API is APIReleased or APIPreview.
	API string
	// TLSCert and TLSKey are the PEM server certificate (chain) and key.
	// Both empty serve plaintext, which only a loopback Listen may do.
	TLSCert string
	TLSKey  string
	// ClientCA, if set, is a PEM bundle of CAs; every client must then
	// present a certificate issued by one of them.
	ClientCA string
	// AllowUnauthenticatedClients lets the service listen beyond loopback
	// without ClientCA. Without a client CA any client that completes TLS
	// may sign any message with every key, so that takes an explicit yes.
	AllowUnauthenticatedClients bool
	// Keys are the keys the service signs with.
	Keys []SignerKey
	// ConsensusKeys are the public keys (raw bytes, as keys.Signer's
	// PubKey().Bytes()) of the node's consensus keys. A SignerService key
	// equal to one of them is refused: the service signs whatever its
	// clients send, with no watermark, so it could sign two conflicting
	// votes and tombstone the validator.
	ConsensusKeys [][]byte
}

// SignerKey is one SignerService key: an id, a backend and an algorithm,
// and the backend's own fields.
type SignerKey struct {
	// ID is the name clients use in GetKey and Sign.
	ID string
	// Backend is file, pkcs11 or awskms.
	Backend string
	// Algorithm is ed25519, secp256k1 or secp256k1eth; which ones a
	// backend offers is in signerAlgorithms.
	Algorithm string
	// KeyFile (backend file) holds the hex of a 32-byte secp256k1 key, or
	// an Ed25519 key as keys/file reads it.
	KeyFile string
	// PKCS11 and AWSKMS select the key on those backends.
	PKCS11 pkcs11.Config
	AWSKMS awskms.Config
}

// SignerService key backends and algorithms, as kms.yaml spells them.
const (
	BackendFile   = "file"
	BackendPKCS11 = "pkcs11"
	BackendAWSKMS = "awskms"

	AlgoEd25519      = "ed25519"
	AlgoSecp256k1    = "secp256k1"
	AlgoSecp256k1Eth = "secp256k1eth"
)

// signerAlgorithms are cosmos/kms v0.1.0's grpc.keys combinations; the
// first of each is the default when algorithm is omitted. file defaults to
// secp256k1eth so that a kms.yaml of an earlier kms-ha (id and key_file of
// a secp256k1 hex key) keeps loading.
var signerAlgorithms = map[string][]string{
	BackendFile:   {AlgoSecp256k1Eth, AlgoEd25519},
	BackendPKCS11: {AlgoEd25519, AlgoSecp256k1Eth},
	BackendAWSKMS: {AlgoEd25519, AlgoSecp256k1, AlgoSecp256k1Eth},
}

// DefaultSignerAlgorithm is the algorithm of a grpc.keys entry of backend
// that names none ("" for an unknown backend).
func DefaultSignerAlgorithm(backend string) string {
	if algs := signerAlgorithms[backend]; len(algs) > 0 {
		return algs[0]
	}
	return ""
}

// SignerServiceTLS builds the server's TLS configuration: TLS 1.2 or later
// with the configured certificate and, when ClientCA is set, mandatory
// client certificates verified against it. It is nil for plaintext.
func SignerServiceTLS(c SignerServiceConfig) (*tls.Config, error) {
	if c.TLSCert == "" && c.TLSKey == "" {
		return nil, nil
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

// SignerServiceListener is a running SignerService.
type SignerServiceListener struct {
	srv  *grpc.Server
	lis  net.Listener
	keys *SignerKeys
	done chan error
	log  *slog.Logger
}

// StartSignerService validates cfg, opens its keys and loads its TLS
// files, binds cfg.Listen and serves the configured contract in the
// background until Stop.
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
	keys, err := OpenSignerKeys(cfg.Keys, log)
	if err != nil {
		return nil, err
	}
	if err := keys.refuseConsensusKeys(cfg.ConsensusKeys); err != nil {
		keys.Close()
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		keys.Close()
		return nil, fmt.Errorf("signer service: listen on %s: %w", cfg.Listen, err)
	}
	var opts []grpc.ServerOption
	if tlsCfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(tlsCfg)))
	}
	srv := grpc.NewServer(opts...)
	if cfg.API == APIPreview {
		NewPreviewSignerService(keys, log).Register(srv)
	} else {
		NewSignerService(keys, log).Register(srv)
	}
	l := &SignerServiceListener{srv: srv, lis: lis, keys: keys, done: make(chan error, 1), log: log}
	go func() { l.done <- srv.Serve(lis) }()
	log.Info("signer service: listening", "addr", lis.Addr().String(), "api", cfg.API, "keys", len(cfg.Keys),
		"tls", tlsCfg != nil, "client_certs", cfg.ClientCA != "")
	return l, nil
}

// Addr is the bound address (useful when Listen used port 0).
func (l *SignerServiceListener) Addr() net.Addr { return l.lis.Addr() }

// Stop stops accepting connections, lets in-flight calls finish for up to
// five seconds, then closes everything, keys included. It returns the
// serve error, if any.
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
	l.keys.Close()
	if errors.Is(err, grpc.ErrServerStopped) {
		err = nil
	}
	return err
}
