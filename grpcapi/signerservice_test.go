package grpcapi

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	decdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

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

func newTestCA(t *testing.T, name string) *testCA {
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
func (ca *testCA) issue(t *testing.T, cn string, server bool) (certPEM, keyPEM []byte) {
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

func writeFile(t *testing.T, dir, name string, data []byte) string {
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
func newSignerFixture(t *testing.T, ids ...string) *signerFixture {
	t.Helper()
	f := &signerFixture{dir: t.TempDir(), ca: newTestCA(t, "server CA"), keyHex: map[string]string{}, logs: &syncBuffer{}}
	certPEM, keyPEM := f.ca.issue(t, "signer", true)
	f.cfg = SignerServiceConfig{
		Listen:  "127.0.0.1:0",
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
		f.cfg.Keys = append(f.cfg.Keys, SignerKey{ID: id, KeyFile: writeFile(t, f.dir, id+".hex", []byte(h+"\n"))})
	}
	return f
}

func (f *signerFixture) start(t *testing.T) {
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
func (f *signerFixture) client(t *testing.T, clientCert ...[]byte) signerpb.SignerServiceClient {
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
	return signerpb.NewSignerServiceClient(conn)
}

func callCtx(t *testing.T) context.Context {
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

func wantCode(t *testing.T, what string, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Errorf("%s: err = %v, want code %s", what, err, code)
	}
}

// ---- tests ----------------------------------------------------------------

func TestSignerServiceSignRecoversGetKeyPubkey(t *testing.T) {
	f := newSignerFixture(t, "attestor-2", "attestor-1")
	f.start(t)
	c := f.client(t)
	ctx := callCtx(t)

	got, err := c.GetKey(ctx, &signerpb.GetKeyRequest{Id: "attestor-1"})
	if err != nil {
		t.Fatal(err)
	}
	k := got.GetKey()
	if k.GetId() != "attestor-1" || k.GetAlgo() != "secp256k1" || len(k.GetPubkey()) != 33 {
		t.Fatalf("GetKey = %v", k)
	}
	if p := k.GetPubkey()[0]; p != 0x02 && p != 0x03 {
		t.Fatalf("pubkey prefix %#x, want a compressed key", p)
	}

	halfOrder := new(big.Int).Rsh(dsecp.S256().N, 1)
	for i := range 16 {
		msg := []byte{0x01}
		inner := sha256.Sum256([]byte{byte(i)})
		msg = append(msg, inner[:]...)

		resp, err := c.Sign(ctx, recoverableReq("attestor-1", msg))
		if err != nil {
			t.Fatal(err)
		}
		sig := resp.GetRecoverableSignature()
		if sig == nil {
			t.Fatalf("response %v has no recoverable_signature", resp)
		}
		if len(sig.R) != 32 || len(sig.S) != 32 || len(sig.V) != 1 {
			t.Fatalf("r/s/v lengths %d/%d/%d, want 32/32/1", len(sig.R), len(sig.S), len(sig.V))
		}
		if sig.V[0] > 1 {
			t.Fatalf("v = %d, want 0 or 1", sig.V[0])
		}
		if new(big.Int).SetBytes(sig.S).Cmp(halfOrder) > 0 {
			t.Fatalf("s is not low-S")
		}

		// Recover as a client would: 65-byte r||s||v over SHA-256(msg).
		compact := append([]byte{27 + 4 + sig.V[0]}, append(append([]byte{}, sig.R...), sig.S...)...)
		digest := sha256.Sum256(msg)
		pub, _, err := decdsa.RecoverCompact(compact, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(pub.SerializeCompressed(), k.GetPubkey()) {
			t.Fatalf("recovered %x, GetKey says %x", pub.SerializeCompressed(), k.GetPubkey())
		}

		// Deterministic: the same message gives the same signature.
		again, err := c.Sign(ctx, recoverableReq("attestor-1", msg))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again.GetRecoverableSignature().R, sig.R) || !bytes.Equal(again.GetRecoverableSignature().S, sig.S) {
			t.Fatal("signing the same message twice gave different signatures")
		}
	}

	// The other key signs with its own public key.
	other, err := c.GetKey(ctx, &signerpb.GetKeyRequest{Id: "attestor-2"})
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(other.GetKey().GetPubkey(), k.GetPubkey()) {
		t.Fatal("two keys report the same public key")
	}

	logs := f.logs.String()
	digest := sha256.Sum256(append([]byte{0x01}, func() []byte { h := sha256.Sum256([]byte{0}); return h[:] }()...))
	if !strings.Contains(logs, "key_id=attestor-1") || !strings.Contains(logs, hex.EncodeToString(digest[:])) {
		t.Errorf("sign log lacks key id or message hash:\n%s", logs)
	}
	for id, h := range f.keyHex {
		if strings.Contains(strings.ToLower(logs), h) {
			t.Fatalf("logs contain the private key of %s", id)
		}
	}
}

func TestSignerServiceGetKeysListsAll(t *testing.T) {
	f := newSignerFixture(t, "c", "a", "b")
	f.start(t)
	c := f.client(t)
	ctx := callCtx(t)

	resp, err := c.GetKeys(ctx, &signerpb.GetKeysRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range resp.GetKeys() {
		ids = append(ids, k.GetId())
		one, err := c.GetKey(ctx, &signerpb.GetKeyRequest{Id: k.GetId()})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(one.GetKey().GetPubkey(), k.GetPubkey()) || k.GetAlgo() != "secp256k1" || len(k.GetPubkey()) != 33 {
			t.Errorf("GetKeys entry %v disagrees with GetKey %v", k, one.GetKey())
		}
		priv, _ := hex.DecodeString(f.keyHex[k.GetId()])
		if want := dsecp.PrivKeyFromBytes(priv).PubKey().SerializeCompressed(); !bytes.Equal(k.GetPubkey(), want) {
			t.Errorf("key %s: pubkey %x, want %x", k.GetId(), k.GetPubkey(), want)
		}
	}
	if strings.Join(ids, ",") != "a,b,c" {
		t.Fatalf("GetKeys ids = %v, want a,b,c", ids)
	}
}

func TestSignerServiceErrors(t *testing.T) {
	f := newSignerFixture(t, "k")
	f.start(t)
	c := f.client(t)
	ctx := callCtx(t)

	others := map[string]*signerpb.SignRequest{
		"evm_transaction": {KeyId: "k", Payload: &signerpb.SignRequest_EvmTransaction{
			EvmTransaction: &signerpb.EvmTransaction{ChainId: "1", TxBytes: []byte{1}}}},
		"cosmos_transaction": {KeyId: "k", Payload: &signerpb.SignRequest_CosmosTransaction{
			CosmosTransaction: &signerpb.CosmosTransaction{SignDocBytes: []byte{1}}}},
		"raw_message": {KeyId: "k", Payload: &signerpb.SignRequest_RawMessage{
			RawMessage: &signerpb.RawMessage{Message: []byte{1}}}},
		"solana_transaction": {KeyId: "k", Payload: &signerpb.SignRequest_SolanaTransaction{
			SolanaTransaction: &signerpb.SolanaTransaction{Transaction: "AQ=="}}},
	}
	for kind, req := range others {
		_, err := c.Sign(ctx, req)
		wantCode(t, kind, err, codes.Unimplemented)
		if err != nil && !strings.Contains(err.Error(), kind) {
			t.Errorf("%s: error %q does not name the payload kind", kind, err)
		}
	}

	_, err := c.Sign(ctx, recoverableReq("nope", []byte("x")))
	wantCode(t, "Sign unknown key", err, codes.NotFound)
	_, err = c.GetKey(ctx, &signerpb.GetKeyRequest{Id: "nope"})
	wantCode(t, "GetKey unknown key", err, codes.NotFound)
	_, err = c.GetKey(ctx, &signerpb.GetKeyRequest{})
	wantCode(t, "GetKey empty id", err, codes.InvalidArgument)
	_, err = c.Sign(ctx, recoverableReq("k", nil))
	wantCode(t, "Sign empty message", err, codes.InvalidArgument)
	_, err = c.Sign(ctx, &signerpb.SignRequest{KeyId: "k"})
	wantCode(t, "Sign without payload", err, codes.InvalidArgument)

	// None of these was signed or logged as signed; the service still works.
	if strings.Contains(f.logs.String(), "signed") {
		t.Errorf("a refused request was logged as signed:\n%s", f.logs.String())
	}
	if _, err := c.Sign(ctx, recoverableReq("k", []byte("ok"))); err != nil {
		t.Fatal(err)
	}
}

func TestSignerServiceClientCertificates(t *testing.T) {
	f := newSignerFixture(t, "k")
	clientCA := newTestCA(t, "client CA")
	f.cfg.ClientCA = writeFile(t, f.dir, "client-ca.crt", clientCA.pem)
	f.start(t)

	goodCert, goodKey := clientCA.issue(t, "good client", false)
	rogueCA := newTestCA(t, "rogue CA")
	badCert, badKey := rogueCA.issue(t, "rogue client", false)

	for name, c := range map[string]signerpb.SignerServiceClient{
		"no certificate":      f.client(t),
		"another CA's client": f.client(t, badCert, badKey),
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Sign(ctx, recoverableReq("k", []byte("x")))
		cancel()
		if err == nil {
			t.Errorf("%s: Sign succeeded, want the handshake refused", name)
		} else if code := status.Code(err); code != codes.Unavailable {
			t.Errorf("%s: err = %v, want Unavailable", name, err)
		}
	}

	c := f.client(t, goodCert, goodKey)
	if _, err := c.Sign(callCtx(t), recoverableReq("k", []byte("x"))); err != nil {
		t.Fatalf("client with a good certificate: %v", err)
	}
	if !strings.Contains(f.logs.String(), "good client") {
		t.Errorf("sign log does not name the client certificate:\n%s", f.logs.String())
	}
}

func TestSignerServiceRefusesOldTLS(t *testing.T) {
	f := newSignerFixture(t, "k")
	f.start(t)
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.cert)
	conn, err := tls.Dial("tcp", f.listener.Addr().String(), &tls.Config{
		RootCAs: pool, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11,
	})
	if err == nil {
		conn.Close()
		t.Fatal("TLS 1.1 handshake succeeded, want it refused")
	}
}

func TestSignerServiceConfigRejected(t *testing.T) {
	f := newSignerFixture(t, "k")
	cases := map[string]struct {
		edit func(c *SignerServiceConfig)
		want string
	}{
		"no TLS files": {func(c *SignerServiceConfig) { c.TLSCert, c.TLSKey = "", "" }, "tls_cert and tls_key are required"},
		"no TLS key":   {func(c *SignerServiceConfig) { c.TLSKey = "" }, "tls_cert and tls_key are required"},
		"no TLS cert":  {func(c *SignerServiceConfig) { c.TLSCert = "" }, "tls_cert and tls_key are required"},
		"missing cert file": {func(c *SignerServiceConfig) { c.TLSCert = filepath.Join(f.dir, "absent.crt") },
			"load TLS certificate"},
		"missing client CA": {func(c *SignerServiceConfig) { c.ClientCA = filepath.Join(f.dir, "absent-ca.crt") },
			"client CA"},
		"client CA not PEM": {func(c *SignerServiceConfig) { c.ClientCA = writeFile(t, f.dir, "junk.crt", []byte("junk")) },
			"no PEM certificate"},
		"no listen":  {func(c *SignerServiceConfig) { c.Listen = "" }, "listen: is required"},
		"bad listen": {func(c *SignerServiceConfig) { c.Listen = "9090" }, `listen: "9090" is not HOST:PORT`},
		"all interfaces without client CA": {func(c *SignerServiceConfig) { c.Listen = "0.0.0.0:0" },
			"sign any message with every grpc key; set client_ca"},
		"a name without client CA": {func(c *SignerServiceConfig) { c.Listen = "signer.example:0" },
			"grpc.allow_unauthenticated_clients: true"},
		"no keys":      {func(c *SignerServiceConfig) { c.Keys = nil }, "at least one key"},
		"key id empty": {func(c *SignerServiceConfig) { c.Keys[0].ID = "" }, "keys[0].id: is required"},
		"key file empty": {func(c *SignerServiceConfig) { c.Keys[0].KeyFile = "" },
			"keys[0].key_file: is required"},
		"duplicate id": {func(c *SignerServiceConfig) { c.Keys = append(c.Keys, c.Keys[0]) }, `"k" is used twice`},
		"bad key file": {func(c *SignerServiceConfig) {
			c.Keys[0].KeyFile = writeFile(t, f.dir, "bad.hex", []byte(strings.Repeat("0", 64)))
		}, `key "k"`},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := f.cfg
			cfg.Keys = append([]SignerKey(nil), f.cfg.Keys...)
			tc.edit(&cfg)
			l, err := StartSignerService(cfg, slog.New(slog.NewTextHandler(f.logs, nil)))
			if err == nil {
				l.Stop()
				t.Fatal("started, want the config rejected")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

// Beyond loopback the service needs client certificates, or an explicit
// yes to serving every TLS client.
func TestSignerServiceBeyondLoopbackWithConsent(t *testing.T) {
	f := newSignerFixture(t, "k")
	f.cfg.Listen = "0.0.0.0:0"
	f.cfg.AllowUnauthenticatedClients = true
	l, err := StartSignerService(f.cfg, slog.New(slog.NewTextHandler(f.logs, nil)))
	if err != nil {
		t.Fatalf("allow_unauthenticated_clients: %v", err)
	}
	l.Stop()
	f.cfg.AllowUnauthenticatedClients = false
	f.cfg.ClientCA = writeFile(t, f.dir, "client-ca.crt", newTestCA(t, "client CA").pem)
	if l, err = StartSignerService(f.cfg, slog.New(slog.NewTextHandler(f.logs, nil))); err != nil {
		t.Fatalf("client_ca: %v", err)
	}
	l.Stop()
}

func TestSignerServiceStopsAndNeedsTLS(t *testing.T) {
	f := newSignerFixture(t, "k")
	l, err := StartSignerService(f.cfg, slog.New(slog.NewTextHandler(f.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Stop(); err != nil {
		t.Fatalf("Stop = %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatal("still listening after Stop")
	}
	f.cfg.TLSCert = ""
	if _, err := StartSignerService(f.cfg, nil); err == nil || !strings.Contains(err.Error(), "TLS") {
		t.Fatalf("without TLS: err = %v, want a TLS error", err)
	}
}

// The wire contract of cosmos/kms's SignerService: a renamed or renumbered
// field breaks its clients, so it is pinned here.
func TestSignerServiceWireContract(t *testing.T) {
	methods := []string{
		signerpb.SignerService_GetKey_FullMethodName,
		signerpb.SignerService_GetKeys_FullMethodName,
		signerpb.SignerService_Sign_FullMethodName,
	}
	want := []string{
		"/cosmos.kms.signerservice.SignerService/GetKey",
		"/cosmos.kms.signerservice.SignerService/GetKeys",
		"/cosmos.kms.signerservice.SignerService/Sign",
	}
	for i := range want {
		if methods[i] != want[i] {
			t.Errorf("method %q, want %q", methods[i], want[i])
		}
	}

	fields := map[string]string{
		"Key":                         "id=1 pubkey=2 algo=3",
		"GetKeyRequest":               "id=1",
		"GetKeyResponse":              "key=1",
		"GetKeysRequest":              "",
		"GetKeysResponse":             "keys=1",
		"SignRequest":                 "key_id=1 evm_transaction=2 cosmos_transaction=3 raw_message=4 solana_transaction=5 recoverable_message=6",
		"SignResponse":                "evm_signature=1 cosmos_signature=2 raw_signature=3 solana_signature=4 recoverable_signature=5",
		"EvmTransaction":              "chain_id=1 tx_bytes=2",
		"EvmTransactionSignature":     "r=1 s=2 v=3",
		"CosmosTransaction":           "sign_doc_bytes=2",
		"CosmosTransactionSignature":  "signature=1",
		"RawMessage":                  "message=1",
		"RawMessageSignature":         "signature=1",
		"SolanaTransaction":           "transaction=1",
		"SolanaTransactionSignature":  "signature=1",
		"RecoverableMessage":          "message=1",
		"RecoverableMessageSignature": "r=1 s=2 v=3",
	}
	fd := signerpb.File_signerservice_signerservice_proto
	if fd.Package() != "cosmos.kms.signerservice" {
		t.Fatalf("package %q", fd.Package())
	}
	if fd.Messages().Len() != len(fields) {
		t.Errorf("%d messages, want %d", fd.Messages().Len(), len(fields))
	}
	for name, want := range fields {
		md := fd.Messages().ByName(protoreflect.Name(name))
		if md == nil {
			t.Errorf("message %s missing", name)
			continue
		}
		var got []string
		for i := 0; i < md.Fields().Len(); i++ {
			f := md.Fields().Get(i)
			got = append(got, fmt.Sprintf("%s=%d", f.Name(), f.Number()))
		}
		if strings.Join(got, " ") != want {
			t.Errorf("%s fields %q, want %q", name, strings.Join(got, " "), want)
		}
	}
	for msg, oneof := range map[string]string{"SignRequest": "payload", "SignResponse": "signature"} {
		if fd.Messages().ByName(protoreflect.Name(msg)).Oneofs().ByName(protoreflect.Name(oneof)) == nil {
			t.Errorf("%s has no oneof %s", msg, oneof)
		}
	}
}
