package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	cmtlog "github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/p2p"
	"github.com/cometbft/cometbft/privval"

	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/pki"
	"github.com/kms-ha/kms-ha/transport"
)

const testChain = "test-chain"

func localAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// lockedBuffer collects the node's log lines from several goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// testHome writes a one-node home: cluster certificates, a consensus key,
// identity.json and a kms.yaml with the given validators block.
func testHome(t *testing.T, validators string) (home, metricsAddr string, key ed25519.PrivKey) {
	t.Helper()
	home = t.TempDir()
	ca := filepath.Join(home, "ca")
	if err := pki.CreateCA(ca, pki.CAOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pki.Issue(ca, pki.IssueOptions{NodeID: "n1", Hosts: []string{"127.0.0.1"}, OutDir: filepath.Join(home, "tls")}); err != nil {
		t.Fatal(err)
	}
	caCert, err := os.ReadFile(filepath.Join(ca, pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home, "tls", pki.CACertFile), caCert, 0o644); err != nil {
		t.Fatal(err)
	}
	key = ed25519.GenPrivKey()
	// A node_key.json carries a typed priv_key, which is what the file
	// backend reads from a priv_validator_key.json.
	if err := (&p2p.NodeKey{PrivKey: key}).SaveAs(filepath.Join(home, "consensus.json")); err != nil {
		t.Fatal(err)
	}
	if err := (&p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}).SaveAs(filepath.Join(home, "identity.json")); err != nil {
		t.Fatal(err)
	}
	metricsAddr = localAddr(t)
	yaml := fmt.Sprintf(`cluster:
  node_id: n1
  raft_addr: %s
  api_addr: %s
chains:
  - id: %s
validators:
%s
keys:
  - chain_ids: [%s]
    key_file: consensus.json
metrics:
  listen: %s
`, localAddr(t), localAddr(t), testChain, validators, testChain, metricsAddr)
	if err := os.WriteFile(filepath.Join(home, config.FileName), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return home, metricsAddr, key
}

// startTestNode bootstraps and runs a one-node cluster from home; adjust,
// if set, changes the node before it runs.
func startTestNode(t *testing.T, home string, adjust func(*Node)) *lockedBuffer {
	t.Helper()
	cfg, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), nil))
	if err := Bootstrap(cfg, nil, log); err != nil {
		t.Fatal(err)
	}
	n, err := New(cfg, Options{AllowFreshState: []string{testChain}}, log)
	if err != nil {
		t.Fatal(err)
	}
	if adjust != nil {
		adjust(n)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return logs
}

// validatorNode is a validator's privval listener as CometBFT builds it.
type validatorNode struct {
	endpoint *privval.SignerListenerEndpoint
	client   *privval.SignerClient
}

func startValidatorNode(t *testing.T, ln net.Listener) *validatorNode {
	t.Helper()
	var l net.Listener
	if ln.Addr().Network() == "unix" {
		l = privval.NewUnixListener(ln)
	} else {
		l = privval.NewTCPListener(ln, ed25519.GenPrivKey())
	}
	ep := privval.NewSignerListenerEndpoint(cmtlog.NewNopLogger(), l)
	client, err := privval.NewSignerClient(ep, testChain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if ep.IsRunning() {
			_ = ep.Stop()
		}
	})
	return &validatorNode{endpoint: ep, client: client}
}

// pubKeyWithin retries GetPubKey: the signer dials only once it leads.
func (v *validatorNode) pubKeyWithin(t *testing.T, d time.Duration) ed25519.PubKey {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		pk, err := v.client.GetPubKey()
		if err == nil {
			return pk.(ed25519.PubKey)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no public key from the signer within %v: %v", d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func readyz(t *testing.T, addr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/readyz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func waitReadyz(t *testing.T, addr string, d time.Duration, ok func(code int, body string) bool) (int, string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		code, body := readyz(t, addr)
		if ok(code, body) || time.Now().After(deadline) {
			return code, body
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestUnixValidatorNeedsNoIdentity: a unix:// entry without identity_key
// starts (node.New used to open "" as an identity) and serves the
// validator's real unix listener.
func TestUnixValidatorNeedsNoIdentity(t *testing.T) {
	dir, err := os.MkdirTemp("", "kmsha") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "pv.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	val := startValidatorNode(t, ln)
	home, metricsAddr, key := testHome(t, fmt.Sprintf("  - chain_id: %s\n    addr: unix://%s\n", testChain, sock))
	startTestNode(t, home, nil)

	if pk := val.pubKeyWithin(t, 10*time.Second); !pk.Equals(key.PubKey()) {
		t.Fatalf("the signer answered with %X, want the configured key %X", pk.Bytes(), key.PubKey().Bytes())
	}
	if code, body := waitReadyz(t, metricsAddr, 5*time.Second, func(c int, _ string) bool { return c == http.StatusOK }); code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", code, body)
	}
}

// TestReconnectFalseOnReadyz: an entry with reconnect: false is not
// redialled after its connection ends, and /readyz names it, its chain and
// the setting.
func TestReconnectFalseOnReadyz(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "tcp://" + ln.Addr().String()
	val := startValidatorNode(t, ln)
	home, metricsAddr, _ := testHome(t, fmt.Sprintf("  - chain_id: %s\n    addr: %s\n    identity_key: identity.json\n    reconnect: false\n", testChain, addr))
	logs := startTestNode(t, home, nil)

	val.pubKeyWithin(t, 10*time.Second)
	if code, body := waitReadyz(t, metricsAddr, 5*time.Second, func(c int, _ string) bool { return c == http.StatusOK }); code != http.StatusOK {
		t.Fatalf("/readyz while connected: %d %s", code, body)
	}
	if err := val.endpoint.Stop(); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("not ready: leader, but validator %s (chain %s) disconnected and is not redialled because its entry says reconnect: false", addr, testChain)
	code, body := waitReadyz(t, metricsAddr, 5*time.Second, func(_ int, b string) bool { return strings.Contains(b, want) })
	if code != http.StatusServiceUnavailable || !strings.Contains(body, want) {
		t.Fatalf("/readyz after the disconnect: %d %q, want 503 containing %q", code, body, want)
	}
	if !strings.Contains(logs.String(), "not redialled (reconnect: false)") {
		t.Fatalf("no log line for the stopped validator:\n%s", logs.String())
	}
}

// TestEndedValidatorLoopRestarts: a validator loop that ends while this node
// leads (no real validator can make transport.Run do that today, so the
// first run fails by hand) is restarted, logged, and serves the validator.
func TestEndedValidatorLoopRestarts(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	val := startValidatorNode(t, ln)
	home, metricsAddr, key := testHome(t, fmt.Sprintf("  - chain_id: %s\n    addr: tcp://%s\n    identity_key: identity.json\n", testChain, ln.Addr()))
	var runs atomic.Int32
	logs := startTestNode(t, home, func(n *Node) {
		n.runValidator = func(ctx context.Context, v transport.Validator, h transport.Handler, o transport.Options) error {
			if runs.Add(1) == 1 {
				return errors.New("loop ended by the test")
			}
			return transport.Run(ctx, v, h, o)
		}
	})

	if pk := val.pubKeyWithin(t, 10*time.Second); !pk.Equals(key.PubKey()) {
		t.Fatal("the signer answered with another key")
	}
	if runs.Load() < 2 {
		t.Fatalf("validator loop ran %d times, want a restart", runs.Load())
	}
	if out := logs.String(); !strings.Contains(out, "validator connection loop ended while leading; restarting it") ||
		!strings.Contains(out, "loop ended by the test") {
		t.Fatalf("no log line for the restart:\n%s", out)
	}
	if code, body := waitReadyz(t, metricsAddr, 5*time.Second, func(c int, _ string) bool { return c == http.StatusOK }); code != http.StatusOK {
		t.Fatalf("/readyz: %d %s", code, body)
	}
}
