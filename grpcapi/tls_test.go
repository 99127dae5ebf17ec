package grpcapi_test

import (
	"context"
	"crypto/tls"
	"path/filepath"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/pki"
)

type tlsFiles struct {
	server, client *tls.Config
}

type testPKI struct {
	dir, ca string
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	p.ca = filepath.Join(p.dir, "ca")
	if err := pki.CreateCA(p.ca, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	// The operator's tools hold a certificate of their own.
	operator = grpcapi.Dialer{TLS: p.node(t, "operator").client}
	return p
}

func (p *testPKI) node(t *testing.T, id string) tlsFiles {
	t.Helper()
	out := filepath.Join(p.dir, id)
	if err := pki.Issue(p.ca, pki.IssueOptions{NodeID: id, Hosts: []string{"127.0.0.1"}, OutDir: out}); err != nil {
		t.Fatal(err)
	}
	f := pki.Files{CA: filepath.Join(p.ca, pki.CACertFile), Cert: filepath.Join(out, pki.NodeCertFile), Key: filepath.Join(out, pki.NodeKeyFile)}
	srv, err := pki.ServerConfig(f)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := pki.ClientConfig(f, "")
	if err != nil {
		t.Fatal(err)
	}
	return tlsFiles{server: srv, client: cli}
}

// operator is the dialer tests use as `kms-ha` commands would.
var operator grpcapi.Dialer

func importVia(t *testing.T, addr string, req *clusterpb.ImportStateRequest) *clusterpb.ImportStateResponse {
	t.Helper()
	var r *clusterpb.ImportStateResponse
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		err = operator.Call(addr, 3*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
			var err error
			r, err = c.ImportState(ctx, req)
			return err
		})
		if err == nil {
			return r
		}
	}
	t.Fatalf("import via %s: %v", addr, err)
	return nil
}
