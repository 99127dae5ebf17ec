package grpcapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/grpcapi/signerpb"
)

// ---- throwaway PKI ----------------------------------------------------

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err)
	}
	return n
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a PEM certificate and PEM key signed by ca, for a server
// on 127.0.0.1 or for a client.
func (ca *testCA) issue(t testing.TB, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// ---- fixtures -----------------------------------------------------------

// syncBuffer is a log sink the server goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type signerFixture struct {
	dir      string
	ca       *testCA // issues the server certificate
	cfg      SignerServiceConfig
	keyHex   map[string]string
	logs     *syncBuffer
	listener *SignerServiceListener
}

// newSignerFixture writes a server certificate and key files for ids and
// returns a config listening on 127.0.0.1:0 (not started).
func newSignerFixture(t testing.TB, ids ...string) *signerFixture {
	t.Helper()
	f := &signerFixture{dir: t.TempDir(), ca: newTestCA(t, "server CA"), keyHex: map[string]string{}, logs: &syncBuffer{}}
	certPEM, keyPEM := f.ca.issue(t, "signer", true)
	f.cfg = SignerServiceConfig{
		Listen:  "127.0.0.1:0",
		API:     APIPreview,
		TLSCert: writeFile(t, f.dir, "server.crt", certPEM),
		TLSKey:  writeFile(t, f.dir, "server.key", keyPEM),
	}
	for _, id := range ids {
		priv, err := dsecp.GeneratePrivateKey()
		if err != nil {
			t.Fatal(err)
		}
		h := hex.EncodeToString(priv.Serialize())
		f.keyHex[id] = h
		f.cfg.Keys = append(f.cfg.Keys, SignerKey{ID: id, Backend: BackendFile, Algorithm: AlgoSecp256k1Eth, KeyFile: writeFile(t, f.dir, id+".hex", []byte(h+"\n"))})
	}
	return f
}

func (f *signerFixture) start(t testing.TB) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l, err := StartSignerService(f.cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	f.listener = l
	t.Cleanup(func() {
		if err := l.Stop(); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
}

// client dials the running service, trusting the server CA and presenting
// clientCert (PEM cert and key) if given.
func (f *signerFixture) client(t testing.TB, clientCert ...[]byte) signerpb.SignerServiceClient {
	t.Helper()
	return NewPreviewSignerClient(f.dial(t, clientCert...))
}

// dial connects to the running service over TLS, trusting the server CA
// and presenting clientCert (PEM cert and key) if given.
func (f *signerFixture) dial(t testing.TB, clientCert ...[]byte) *grpc.ClientConn {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.cert)
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if len(clientCert) == 2 {
		c, err := tls.X509KeyPair(clientCert[0], clientCert[1])
		if err != nil {
			t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	conn, err := grpc.NewClient(f.listener.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func callCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func recoverableReq(id string, msg []byte) *signerpb.SignRequest {
	return &signerpb.SignRequest{KeyId: id, Payload: &signerpb.SignRequest_RecoverableMessage{
		RecoverableMessage: &signerpb.RecoverableMessage{Message: msg},
	}}
}

func wantCode(t testing.TB, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: err = %v, want code %s", what, err, code)
	}
}
