package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var quietLog = WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))

// testCluster is a CA and node certificates in a temp dir.
type testCluster struct {
	t     *testing.T
	caDir string
}

func newTestCluster(t *testing.T) *testCluster {
	t.Helper()
	c := &testCluster{t: t, caDir: filepath.Join(t.TempDir(), "ca")}
	if err := CreateCA(c.caDir, CAOptions{}); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *testCluster) issue(id string, hosts ...string) Files {
	c.t.Helper()
	out := filepath.Join(c.t.TempDir(), id)
	if err := Issue(c.caDir, IssueOptions{NodeID: id, Hosts: hosts, OutDir: out}); err != nil {
		c.t.Fatal(err)
	}
	return Files{CA: filepath.Join(c.caDir, CACertFile), Cert: filepath.Join(out, NodeCertFile), Key: filepath.Join(out, NodeKeyFile)}
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	certs, err := readCerts(path, "test", "")
	if err != nil {
		t.Fatal(err)
	}
	return certs[0]
}

type handshakeResult struct {
	server, client       tls.ConnectionState
	serverErr, clientErr error
}

// handshake runs a TLS handshake over loopback TCP and one byte of data
// from server to client: with TLS 1.3 a client learns that the server
// rejected its certificate only when it reads.
func handshake(t *testing.T, server, client *tls.Config) handshakeResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var res handshakeResult
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, err := ln.Accept()
		if err != nil {
			res.serverErr = err
			return
		}
		defer raw.Close()
		raw.SetDeadline(time.Now().Add(5 * time.Second))
		conn := tls.Server(raw, server)
		if res.serverErr = conn.Handshake(); res.serverErr != nil {
			return
		}
		res.server = conn.ConnectionState()
		_, res.serverErr = conn.Write([]byte{1})
	}()
	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(5 * time.Second))
	conn := tls.Client(raw, client)
	if res.clientErr = conn.Handshake(); res.clientErr == nil {
		res.client = conn.ConnectionState()
		_, res.clientErr = conn.Read(make([]byte, 1))
	}
	raw.Close()
	<-done
	return res
}

func mustServer(t *testing.T, f Files, opts ...Option) *tls.Config {
	t.Helper()
	c, err := ServerConfig(f, append([]Option{quietLog}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustClient(t *testing.T, f Files, serverName string) *tls.Config {
	t.Helper()
	c, err := ClientConfig(f, serverName, quietLog)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCreateCAAndIssueWriteUsableFiles(t *testing.T) {
	c := newTestCluster(t)
	f := c.issue("node-1", "127.0.0.1", "Node1.example.com.", "::1", "127.0.0.1")

	for path, want := range map[string]os.FileMode{
		filepath.Join(c.caDir, CAKeyFile): 0o600,
		f.Key:                             0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode().Perm(), want)
		}
	}
	for _, path := range []string{filepath.Join(c.caDir, CACertFile), f.Cert} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s: mode %v is writable by others", path, fi.Mode().Perm())
		}
	}

	ca := readCert(t, f.CA)
	if !ca.IsCA || ca.MaxPathLen != 0 || !ca.MaxPathLenZero || ca.Subject.CommonName != "kms-ha cluster CA" {
		t.Errorf("CA: isCA=%v maxPathLen=%d cn=%q", ca.IsCA, ca.MaxPathLen, ca.Subject.CommonName)
	}
	if years := ca.NotAfter.Sub(time.Now()).Hours() / 24 / 365; years < 9.9 || years > 10.1 {
		t.Errorf("CA valid for %.1f years, want 10", years)
	}
	if ca.SerialNumber.Sign() <= 0 || ca.SerialNumber.BitLen() < 64 {
		t.Errorf("CA serial %v is not a large random number", ca.SerialNumber)
	}

	leaf := readCert(t, f.Cert)
	if leaf.Subject.CommonName != "node-1" || leaf.IsCA {
		t.Errorf("leaf: cn=%q isCA=%v", leaf.Subject.CommonName, leaf.IsCA)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "kms-ha://node/node-1" {
		t.Errorf("leaf URIs %v", leaf.URIs)
	}
	if id, err := nodeIDOf(leaf); err != nil || id != "node-1" {
		t.Errorf("nodeIDOf: %q %v", id, err)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("leaf ext key usage %v", leaf.ExtKeyUsage)
	}
	if len(leaf.IPAddresses) != 2 || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "node1.example.com" {
		t.Errorf("leaf SANs: ips=%v dns=%v", leaf.IPAddresses, leaf.DNSNames)
	}
	if years := leaf.NotAfter.Sub(time.Now()).Hours() / 24 / 365; years < 1.9 || years > 2.1 {
		t.Errorf("leaf valid for %.1f years, want 2", years)
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		t.Errorf("leaf not signed by the CA: %v", err)
	}
}

func TestNodeCertificateNeverOutlivesTheCA(t *testing.T) {
	caDir := filepath.Join(t.TempDir(), "ca")
	if err := CreateCA(caDir, CAOptions{Validity: 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "n")
	if err := Issue(caDir, IssueOptions{NodeID: "n", Hosts: []string{"127.0.0.1"}, OutDir: out}); err != nil {
		t.Fatal(err)
	}
	ca, leaf := readCert(t, filepath.Join(caDir, CACertFile)), readCert(t, filepath.Join(out, NodeCertFile))
	if leaf.NotAfter.After(ca.NotAfter) {
		t.Fatalf("leaf expires %v, after its CA (%v)", leaf.NotAfter, ca.NotAfter)
	}
}

func TestOverwriteRefused(t *testing.T) {
	c := newTestCluster(t)
	caBefore, _ := os.ReadFile(filepath.Join(c.caDir, CAKeyFile))
	err := CreateCA(c.caDir, CAOptions{})
	if err == nil || !strings.Contains(err.Error(), "already exists") || !strings.Contains(err.Error(), "new directory") {
		t.Fatalf("second CreateCA: %v", err)
	}
	if after, _ := os.ReadFile(filepath.Join(c.caDir, CAKeyFile)); !bytes.Equal(caBefore, after) {
		t.Fatal("the CA key changed")
	}

	f := c.issue("n1", "127.0.0.1")
	keyBefore, _ := os.ReadFile(f.Key)
	err = Issue(c.caDir, IssueOptions{NodeID: "n1", Hosts: []string{"127.0.0.1"}, OutDir: filepath.Dir(f.Cert)})
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second Issue: %v", err)
	}
	if after, _ := os.ReadFile(f.Key); !bytes.Equal(keyBefore, after) {
		t.Fatal("the node key changed")
	}

	// A half-present pair is refused too, and left as it was.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, NodeCertFile), []byte("mine"), 0o644)
	if err := Issue(c.caDir, IssueOptions{NodeID: "n2", Hosts: []string{"h"}, OutDir: dir}); err == nil {
		t.Fatal("Issue wrote next to an existing node.crt")
	}
	if _, err := os.Stat(filepath.Join(dir, NodeKeyFile)); !os.IsNotExist(err) {
		t.Fatalf("node.key was written next to a foreign node.crt: %v", err)
	}
}

func TestIssueRejectsBadInput(t *testing.T) {
	c := newTestCluster(t)
	for _, tc := range []struct {
		id    string
		hosts []string
		want  string
	}{
		{"", []string{"h"}, "node id"},
		{"a/b", []string{"h"}, "node id"},
		{"n", nil, "no hosts"},
		{"n", []string{" "}, "no hosts"},
		{"n", []string{"10.0.0.1:7001"}, "port"},
		{"n", []string{"node1.example.com:7001"}, "port"},
		{"n", []string{"https://node1"}, "URL"},
		{"n", []string{"bad host"}, "neither"},
	} {
		err := Issue(c.caDir, IssueOptions{NodeID: tc.id, Hosts: tc.hosts, OutDir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Issue(%q, %q): %v; want an error about %s", tc.id, tc.hosts, err, tc.want)
		}
	}
	err := Issue(filepath.Join(t.TempDir(), "nope"), IssueOptions{NodeID: "n", Hosts: []string{"h"}, OutDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "ca.crt") || !strings.Contains(err.Error(), "kms-ha certs ca") {
		t.Errorf("Issue without a CA: %v", err)
	}
}

func TestMutualTLSBothWays(t *testing.T) {
	c := newTestCluster(t)
	a := c.issue("a", "127.0.0.1", "localhost")
	b := c.issue("b", "127.0.0.1")
	for _, tc := range []struct {
		name             string
		srv, cli         Files
		srvID, cliID, sn string
	}{
		{"b dials a", a, b, "a", "b", "127.0.0.1"},
		{"a dials b", b, a, "b", "a", "127.0.0.1"},
		{"b dials a by name", a, b, "a", "b", "localhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := handshake(t, mustServer(t, tc.srv), mustClient(t, tc.cli, tc.sn))
			if res.serverErr != nil || res.clientErr != nil {
				t.Fatalf("server: %v; client: %v", res.serverErr, res.clientErr)
			}
			if res.server.Version != tls.VersionTLS13 {
				t.Errorf("negotiated %x, want TLS 1.3", res.server.Version)
			}
			if id, err := PeerNodeID(res.server); err != nil || id != tc.cliID {
				t.Errorf("server sees peer %q %v, want %s", id, err, tc.cliID)
			}
			if id, err := PeerNodeID(res.client); err != nil || id != tc.srvID {
				t.Errorf("client sees peer %q %v, want %s", id, err, tc.srvID)
			}
		})
	}
}

func TestPeersOutsideTheClusterAreRefused(t *testing.T) {
	c := newTestCluster(t)
	a := c.issue("a", "127.0.0.1")
	other := newTestCluster(t)
	x := other.issue("x", "127.0.0.1")

	t.Run("client from another CA", func(t *testing.T) {
		cli := mustClient(t, x, "127.0.0.1")
		cli.RootCAs = mustServer(t, a).ClientCAs // it even trusts our CA
		res := handshake(t, mustServer(t, a), cli)
		if res.serverErr == nil || !strings.Contains(res.serverErr.Error(), "unknown authority") {
			t.Fatalf("server accepted a client certificate from another CA: %v", res.serverErr)
		}
		if res.clientErr == nil {
			t.Fatal("the client read data from a server that refused it")
		}
	})
	t.Run("server from another CA", func(t *testing.T) {
		res := handshake(t, mustServer(t, x), mustClient(t, a, "127.0.0.1"))
		if res.clientErr == nil || !strings.Contains(res.clientErr.Error(), "unknown authority") {
			t.Fatalf("client accepted a server certificate from another CA: %v", res.clientErr)
		}
	})
	t.Run("client without a certificate", func(t *testing.T) {
		cli := &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: mustServer(t, a).ClientCAs, ServerName: "127.0.0.1"}
		res := handshake(t, mustServer(t, a), cli)
		if res.serverErr == nil || !strings.Contains(res.serverErr.Error(), "certificate") {
			t.Fatalf("server accepted a client without a certificate: %v", res.serverErr)
		}
		if res.clientErr == nil {
			t.Fatal("the client read data from a server that refused it")
		}
	})
	t.Run("TLS 1.2 client", func(t *testing.T) {
		cli := mustClient(t, a, "127.0.0.1")
		cli.MinVersion, cli.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
		if res := handshake(t, mustServer(t, a), cli); res.serverErr == nil {
			t.Fatal("server accepted TLS 1.2")
		}
	})
}

func TestHostnameMismatchRefused(t *testing.T) {
	c := newTestCluster(t)
	a := c.issue("a", "10.1.2.3", "a.example.com")
	b := c.issue("b", "127.0.0.1")
	for _, sn := range []string{"127.0.0.1", "b.example.com", "10.1.2.4"} {
		res := handshake(t, mustServer(t, a), mustClient(t, b, sn))
		if res.clientErr == nil || !strings.Contains(res.clientErr.Error(), "certificate is valid for") {
			t.Errorf("dialing %s, whose certificate is for 10.1.2.3 and a.example.com, as %s: %v", "a", sn, res.clientErr)
		}
	}
	// The same certificate does verify for the hosts it names; the port
	// of an address is ignored.
	for _, sn := range []string{"10.1.2.3", "a.example.com", "10.1.2.3:7001"} {
		if res := handshake(t, mustServer(t, a), mustClient(t, b, sn)); res.clientErr != nil {
			t.Errorf("as %s: %v", sn, res.clientErr)
		}
	}
}

func TestLoadErrorsAreClear(t *testing.T) {
	c := newTestCluster(t)
	a := c.issue("a", "127.0.0.1")
	b := c.issue("b", "127.0.0.1")
	other := newTestCluster(t)
	x := other.issue("x", "127.0.0.1")

	expiredDir := filepath.Join(t.TempDir(), "old")
	past := time.Now().Add(-48 * time.Hour)
	if err := issue(c.caDir, IssueOptions{NodeID: "old", Hosts: []string{"127.0.0.1"}, OutDir: expiredDir, Validity: time.Hour}, past); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "none", "node.crt")

	for _, tc := range []struct {
		name string
		f    Files
		want []string
	}{
		{"missing cert", Files{CA: a.CA, Cert: missing, Key: a.Key}, []string{missing, "not found", "kms-ha certs issue"}},
		{"missing key", Files{CA: a.CA, Cert: a.Cert, Key: missing}, []string{missing, "not found", "kms-ha certs issue"}},
		{"missing CA", Files{CA: missing, Cert: a.Cert, Key: a.Key}, []string{missing, "not found", "kms-ha certs ca"}},
		{"no CA configured", Files{Cert: a.Cert, Key: a.Key}, []string{"no CA certificate file configured"}},
		{"key of another node", Files{CA: a.CA, Cert: a.Cert, Key: b.Key}, []string{b.Key, "does not belong", a.Cert}},
		{"cert from another CA", Files{CA: a.CA, Cert: x.Cert, Key: x.Key}, []string{x.Cert, "not signed by the cluster CA", a.CA}},
		{"expired", Files{CA: a.CA, Cert: filepath.Join(expiredDir, NodeCertFile), Key: filepath.Join(expiredDir, NodeKeyFile)}, []string{"expired on", "kms-ha certs issue"}},
		{"key in place of cert", Files{CA: a.CA, Cert: a.Key, Key: a.Key}, []string{a.Key, "no PEM certificate"}},
		{"node cert in place of CA", Files{CA: a.Cert, Cert: a.Cert, Key: a.Key}, []string{"not a CA certificate"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, errS := ServerConfig(tc.f, quietLog)
			_, errC := ClientConfig(tc.f, "127.0.0.1", quietLog)
			for _, err := range []error{errS, errC} {
				if err == nil {
					t.Fatal("loaded")
				}
				for _, w := range tc.want {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
			}
		})
	}
}

func TestPeerNodeIDNeedsAVerifiedCertificate(t *testing.T) {
	if _, err := PeerNodeID(tls.ConnectionState{}); err == nil {
		t.Fatal("no handshake, yet a node id")
	}
	c := newTestCluster(t)
	leaf := readCert(t, c.issue("a", "h").Cert)
	cs := tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{leaf}}
	if _, err := PeerNodeID(cs); err == nil {
		t.Fatal("node id from an unverified certificate")
	}
	cs.VerifiedChains = [][]*x509.Certificate{{leaf}}
	if id, err := PeerNodeID(cs); err != nil || id != "a" {
		t.Fatalf("%q %v", id, err)
	}
	leaf.URIs = nil
	if _, err := PeerNodeID(cs); err == nil || !strings.Contains(err.Error(), "kms-ha://node/<id>") {
		t.Fatalf("certificate without a node URI: %v", err)
	}
}

// TestReloadAfterRotation replaces a node's certificate under a running
// config: the next handshake presents the new one, and a rotation caught
// halfway (new certificate, old key) keeps the old pair in service.
func TestReloadAfterRotation(t *testing.T) {
	c := newTestCluster(t)
	a := c.issue("a", "127.0.0.1")
	b := c.issue("b", "127.0.0.1")
	srv, cli := mustServer(t, a), mustClient(t, b, "127.0.0.1")
	bSrv := mustServer(t, b)
	aCli := mustClient(t, a, "127.0.0.1")

	serial := func() (fromServer, fromClient string) {
		t.Helper()
		res := handshake(t, srv, cli)
		if res.serverErr != nil || res.clientErr != nil {
			t.Fatalf("server: %v; client: %v", res.serverErr, res.clientErr)
		}
		res2 := handshake(t, bSrv, aCli)
		if res2.serverErr != nil || res2.clientErr != nil {
			t.Fatalf("server: %v; client: %v", res2.serverErr, res2.clientErr)
		}
		return res.client.PeerCertificates[0].SerialNumber.String(), res2.server.PeerCertificates[0].SerialNumber.String()
	}
	old := readCert(t, a.Cert).SerialNumber.String()
	if s, cs := serial(); s != old || cs != old {
		t.Fatalf("presented %s/%s, want %s", s, cs, old)
	}

	a2 := c.issue("a", "127.0.0.1")
	replace := func(dst, src string, at time.Time) {
		t.Helper()
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o600); err != nil {
			t.Fatal(err)
		}
		// Explicit times: two writes within one tick of a coarse
		// filesystem clock would otherwise look unchanged.
		if err := os.Chtimes(dst, at, at); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	replace(a.Cert, a2.Cert, now.Add(time.Second))
	if s, cs := serial(); s != old || cs != old {
		t.Fatalf("halfway through the rotation, presented %s/%s; want the old pair %s", s, cs, old)
	}
	replace(a.Key, a2.Key, now.Add(2*time.Second))
	fresh := readCert(t, a2.Cert).SerialNumber.String()
	if s, cs := serial(); s != fresh || cs != fresh {
		t.Fatalf("after the rotation, presented %s/%s; want %s", s, cs, fresh)
	}

	// A certificate from another CA dropped in by mistake is not used.
	other := newTestCluster(t)
	x := other.issue("a", "127.0.0.1")
	replace(a.Cert, x.Cert, now.Add(3*time.Second))
	replace(a.Key, x.Key, now.Add(3*time.Second))
	if s, cs := serial(); s != fresh || cs != fresh {
		t.Fatalf("after a foreign certificate was dropped in, presented %s/%s; want %s", s, cs, fresh)
	}
	// Nor is a missing file fatal.
	os.Remove(a.Cert)
	if s, _ := serial(); s != fresh {
		t.Fatalf("with node.crt missing, presented %s; want %s", s, fresh)
	}
}
