package grpcapi_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/kms-ha/kms-ha/cluster"

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

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	p.ca = filepath.Join(p.dir, "ca")
	if err := pki.CreateCA(p.ca, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	// The operator's tools hold a certificate of their own.
	operator = p.operator(t, "ops", false)
	return p
}

// operator issues an operator certificate and returns a dialer with it.
func (p *testPKI) operator(t testing.TB, name string, readOnly bool) grpcapi.Dialer {
	t.Helper()
	out := filepath.Join(p.dir, "op-"+name)
	if err := pki.IssueOperator(p.ca, pki.OperatorOptions{Name: name, ReadOnly: readOnly, OutDir: out}); err != nil {
		t.Fatal(err)
	}
	f := pki.Files{CA: filepath.Join(p.ca, pki.CACertFile), Cert: filepath.Join(out, pki.OperatorCertFile), Key: filepath.Join(out, pki.OperatorKeyFile)}
	cli, err := pki.ClientConfig(f, "")
	if err != nil {
		t.Fatal(err)
	}
	return grpcapi.Dialer{TLS: cli}
}

func (p *testPKI) node(t testing.TB, id string) tlsFiles {
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

var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// operator is the dialer tests use as `kms-ha` commands would.
var operator grpcapi.Dialer

func importVia(t testing.TB, addr string, req *clusterpb.ImportStateRequest) *clusterpb.ImportStateResponse {
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

// TestAPIRefusesPeersWithoutAClusterCertificate: a caller with no client
// certificate, with one from another CA, or speaking plaintext can neither
// read the API nor join; a holder of a cluster certificate can.
func TestAPIRefusesPeersWithoutAClusterCertificate(t *testing.T) {
	pk := newPKI(t)
	m := &member{api: freeAddr(t), tls: pk.node(t, "n1"), cfg: cluster.Config{
		NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "n1"), BindAddr: freeAddr(t), Logger: quietLog,
	}}
	if err := cluster.Bootstrap(m.cfg, nil); err != nil {
		t.Fatal(err)
	}
	m.start(t)
	defer m.stop()
	waitFor(t, "n1 to lead", func() bool { return m.node.IsLeader() })

	other := newPKIOnly(t)
	foreign := other.node(t, "n1") // same node id, wrong CA
	noCert := operator.TLS.Clone()
	noCert.GetClientCertificate = nil
	cases := map[string]grpcapi.Dialer{
		"certificate from another CA": {TLS: foreign.client},
		"no client certificate":       {TLS: noCert},
		"plaintext":                   {},
	}
	for name, d := range cases {
		err := d.Call(m.api, 2*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Status(ctx, &clusterpb.StatusRequest{})
			return err
		})
		if err == nil {
			t.Errorf("%s: status answered", name)
		}
		err = d.Call(m.api, 2*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Join(ctx, &clusterpb.JoinRequest{Id: "intruder", RaftAddr: "127.0.0.1:1", Fresh: true})
			return err
		})
		if err == nil {
			t.Errorf("%s: join accepted", name)
		}
	}
	members, _ := m.node.Members()
	if len(members) != 1 {
		t.Fatalf("membership changed: %+v", members)
	}
	if st := status(t, m.api); st.GetNodeId() != "n1" {
		t.Fatalf("a cluster certificate holder cannot read: %+v", st)
	}
}

// newPKIOnly makes a second, unrelated CA without touching operator.
func newPKIOnly(t *testing.T) *testPKI {
	t.Helper()
	p := &testPKI{dir: t.TempDir()}
	p.ca = filepath.Join(p.dir, "ca")
	if err := pki.CreateCA(p.ca, pki.CAOptions{CommonName: "another cluster"}); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCallAtTheRaftPortNamesTheMistake: an operator who gives a node's
// raft address where its API address belongs is told so, not that the
// certificates may come from different CAs.
func TestCallAtTheRaftPortNamesTheMistake(t *testing.T) {
	pk := newPKI(t)
	m := &member{api: freeAddr(t), tls: pk.node(t, "n1"), cfg: cluster.Config{
		NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "n1"), BindAddr: freeAddr(t), Logger: quietLog,
	}}
	if err := cluster.Bootstrap(m.cfg, nil); err != nil {
		t.Fatal(err)
	}
	m.start(t)
	defer m.stop()
	for name, d := range map[string]grpcapi.Dialer{"operator": operator, "node": {TLS: m.tls.client}} {
		err := d.Call(m.cfg.BindAddr, 2*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Status(ctx, &clusterpb.StatusRequest{})
			return err
		})
		want := m.cfg.BindAddr + " looks like a raft port (cluster.raft_addr)"
		if !errors.Is(err, grpcapi.ErrNotClusterAPI) || !strings.Contains(err.Error(), want) ||
			!strings.Contains(err.Error(), "cluster.api_addr (default port 7101)") || strings.Contains(err.Error(), "CA") {
			t.Errorf("%s at the raft port: %v; want %q and the API address", name, err, want)
		}
		if grpcstatus.Code(err) != codes.Unavailable {
			t.Errorf("%s: code %v, want Unavailable", name, grpcstatus.Code(err))
		}
	}
	// The API itself still answers, and a closed port is no raft port.
	if st := status(t, m.api); st.GetNodeId() != "n1" {
		t.Fatalf("status at the API: %+v", st)
	}
	err := operator.Call(freeAddr(t), time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
		_, err := c.Status(ctx, &clusterpb.StatusRequest{})
		return err
	})
	if errors.Is(err, grpcapi.ErrNotClusterAPI) || !strings.Contains(err.Error(), "is kms-ha running there?") {
		t.Fatalf("closed port: %v", err)
	}
}
