package grpcapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"
	decdsa "github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/kms-ha/kms-ha/grpcapi/signerpb"
)

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
		"plaintext beyond loopback": {func(c *SignerServiceConfig) {
			c.TLSCert, c.TLSKey, c.Listen, c.AllowUnauthenticatedClients = "", "", "0.0.0.0:0", true
		}, "tls_cert and tls_key are required when grpc.listen"},
		"plaintext with a client CA": {func(c *SignerServiceConfig) {
			c.TLSCert, c.TLSKey, c.ClientCA = "", "", writeFile(t, f.dir, "ca.crt", newTestCA(t, "client CA").pem)
		}, "client_ca: needs TLS"},
		"no TLS key":  {func(c *SignerServiceConfig) { c.TLSKey = "" }, "tls_cert and tls_key go together"},
		"no TLS cert": {func(c *SignerServiceConfig) { c.TLSCert = "" }, "tls_cert and tls_key go together"},
		"unknown api": {func(c *SignerServiceConfig) { c.API = "v2" }, `api: "v2" is unknown; use released`},
		"ed25519 on the preview": {func(c *SignerServiceConfig) { c.Keys[0].Algorithm = AlgoEd25519 },
			"cannot be served by grpc.api: preview"},
		"a combination the release lacks": {func(c *SignerServiceConfig) { c.Keys[0].Algorithm = AlgoSecp256k1 },
			`keys[0].algorithm: "secp256k1" is not offered by backend file`},
		"unknown backend": {func(c *SignerServiceConfig) { c.Keys[0].Backend = "vault" }, `keys[0].backend: "vault" is unknown`},
		"pkcs11 fields":   {func(c *SignerServiceConfig) { c.Keys[0].Backend = BackendPKCS11 }, "keys[0].module: is required"},
		"awskms fields": {func(c *SignerServiceConfig) { c.Keys[0].Backend = BackendAWSKMS; c.Keys[0].Algorithm = AlgoSecp256k1 },
			"keys[0].key_id: is required"},
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

// The wire contract of the pre-release SignerService: a renamed or
// renumbered field breaks its clients, so it is pinned here. The paths are
// those its clients call (the generated code's, rewritten as the service
// registers and the client helper calls them).
func TestPreviewSignerServiceWireContract(t *testing.T) {
	var methods []string
	for _, m := range []string{signerpb.SignerService_GetKey_FullMethodName, signerpb.SignerService_GetKeys_FullMethodName,
		signerpb.SignerService_Sign_FullMethodName} {
		methods = append(methods, strings.Replace(m, previewGenerated, releasedPath, 1))
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
	fd := signerpb.File_signerservice_preview_signerservice_proto
	if fd.Package() != "kmsha.signerservice.preview" {
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
