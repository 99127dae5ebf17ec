package node_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/decred/dcrd/dcrec/secp256k1/v4"
	"github.com/decred/dcrd/dcrec/secp256k1/v4/ecdsa"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/grpcapi/signerservicepb"
	"github.com/kms-ha/kms-ha/node"
	"github.com/kms-ha/kms-ha/pki"
)

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestGRPCOnlyNode runs a one-node cluster whose kms.yaml has no chains,
// only the SignerService (a valid cosmos/kms configuration), with metrics:
// a TLS client signs and recovers the key GetKey reports, the node is
// ready, and the cluster API answers only over mutual TLS.
func TestGRPCOnlyNode(t *testing.T) {
	home := t.TempDir()
	ca := filepath.Join(home, "ca")
	if err := pki.CreateCA(ca, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(ca, pki.IssueOptions{NodeID: "n1", Hosts: []string{"127.0.0.1"}, OutDir: filepath.Join(home, "tls")}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(filepath.Join(ca, pki.CACertFile))
	os.WriteFile(filepath.Join(home, "tls", pki.CACertFile), data, 0o644)
	// A throwaway secp256k1 key generated for this run.
	var seed [32]byte
	rand.Read(seed[:])
	priv := secp256k1.PrivKeyFromBytes(seed[:])
	os.WriteFile(filepath.Join(home, "attestor.hex"), []byte(hex.EncodeToString(priv.Serialize())), 0o600)

	raft, api, grpcAddr, metricsAddr := freePort(t), freePort(t), freePort(t), freePort(t)
	yaml := fmt.Sprintf(`cluster:
  node_id: n1
  raft_addr: %s
  api_addr: %s
grpc:
  listen: %s
  tls_cert: tls/node.crt
  tls_key: tls/node.key
  keys:
    - id: attestor-1
      key_file: attestor.hex
metrics:
  listen: %s
`, raft, api, grpcAddr, metricsAddr)
	if err := os.WriteFile(filepath.Join(home, config.FileName), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := node.Bootstrap(cfg, nil, log); err != nil {
		t.Fatal(err)
	}
	n, err := node.New(cfg, node.Options{}, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	// Ready once it leads its one-node cluster (no validators to wait for).
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + metricsAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not ready: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(data)
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	sc := signerservicepb.NewSignerServiceClient(conn)
	cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
	defer ccancel()
	k, err := sc.GetKey(cctx, &signerservicepb.GetKeyRequest{Id: "attestor-1"})
	if err != nil {
		t.Fatal(err)
	}
	if k.GetKey().GetScheme() != signerservicepb.SignatureScheme_ECDSA_SECP256K1ETH {
		t.Fatalf("scheme %v, want ECDSA_SECP256K1ETH (the default of a file key)", k.GetKey().GetScheme())
	}
	h := sha256.Sum256([]byte("attestation 42"))
	r, err := sc.Sign(cctx, &signerservicepb.SignRequest{KeyId: "attestor-1",
		Payload: &signerservicepb.Payload{Kind: &signerservicepb.Payload_Generic{Generic: h[:]}}})
	if err != nil {
		t.Fatal(err)
	}
	sig := r.GetSignature()
	if len(sig) != 65 || sig[64] > 1 {
		t.Fatalf("signature of %d bytes, want 65 with v 0 or 1", len(sig))
	}
	compact := append([]byte{27 + sig[64] + 4}, sig[:64]...)
	pub, _, err := ecdsa.RecoverCompact(compact, h[:])
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(pub.SerializeCompressed()), hex.EncodeToString(k.GetKey().GetPubkey()); got != want {
		t.Fatalf("recovered %s, GetKey says %s", got, want)
	}

	// The cluster API: plain TLS without a client certificate is refused,
	// the node's own certificate works.
	plain, _ := grpc.NewClient(api, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool})))
	defer plain.Close()
	if _, err := clusterpb.NewClusterClient(plain).Status(cctx, &clusterpb.StatusRequest{}); err == nil {
		t.Fatal("cluster API answered a client without a certificate")
	}
	d, err := node.NewDialer(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	err = d.Call(api, 5*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
		st, err := c.Status(ctx, &clusterpb.StatusRequest{Linearizable: true})
		if err == nil && (st.GetLeaderId() != "n1" || !st.GetLinearizable()) {
			err = fmt.Errorf("status %v", st)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "kmsha_is_leader 1") {
		t.Fatal("metrics: kmsha_is_leader is not 1")
	}
}
