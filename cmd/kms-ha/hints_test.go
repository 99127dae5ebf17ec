package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometbft/cometbft/privval"
)

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// oneNode runs a bootstrapped one-node cluster configured for chain c1
// (no watermark yet) and returns its home, raft and API addresses.
func oneNode(t *testing.T) (home, raftAddr, apiAddr string) {
	t.Helper()
	dir := t.TempDir()
	home = filepath.Join(dir, "n1")
	raftAddr, apiAddr = freePort(t), freePort(t)
	for _, args := range [][]string{
		{"init", "--home", home, "--node-id", "n1", "--raft-addr", raftAddr, "--api-addr", apiAddr},
		{"certs", "ca", "--out", filepath.Join(dir, "ca")},
		{"certs", "issue", "--ca", filepath.Join(dir, "ca"), "--node-id", "n1", "--host", "127.0.0.1", "--out", filepath.Join(home, "tls")},
	} {
		if _, stderr, code := run(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	privval.GenFilePV(filepath.Join(home, "key.json"), filepath.Join(dir, "state.json")).Save()
	yaml := "cluster:\n  node_id: n1\n  raft_addr: " + raftAddr + "\n  api_addr: " + apiAddr + "\n" +
		"chains: [{id: c1}]\nkeys: [{chain_ids: [c1], key_file: key.json}]\n"
	if err := os.WriteFile(filepath.Join(home, "kms.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := run(t, "bootstrap", "--home", home); code != 0 {
		t.Fatalf("bootstrap: %s", stderr)
	}
	cmd := exec.Command(bin, "start", "--home", home)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if out, _, code := run(t, "status", "--home", home); code == 0 && strings.Contains(out, "(leader)") {
			return home, raftAddr, apiAddr
		}
		if time.Now().After(deadline) {
			t.Fatal("the node did not lead within 20s")
		}
	}
}

// TestHintsOfARunningNode: what an operator sees for the mistakes the
// status and state commands meet most: the raft port where the API port
// belongs, an address without a port, and a chain without a watermark.
func TestHintsOfARunningNode(t *testing.T) {
	home, raftAddr, apiAddr := oneNode(t)
	kmsYAML := filepath.Join(home, "kms.yaml")

	t.Run("status at the raft port", func(t *testing.T) {
		_, stderr, code := run(t, "status", "--home", home, "--cluster", raftAddr)
		if code == 0 || !strings.Contains(stderr, raftAddr+" looks like a raft port (cluster.raft_addr)") ||
			!strings.Contains(stderr, "cluster.api_addr (default port 7101)") || strings.Contains(stderr, "cluster CA") {
			t.Fatalf("exit %d, %q", code, stderr)
		}
	})
	t.Run("an address without a port", func(t *testing.T) {
		for _, cmd := range [][]string{{"status", "--home", home}, {"join", "--home", home}, {"state", "show", "--home", home}} {
			start := time.Now()
			_, stderr, code := run(t, append(cmd, "--cluster", "127.0.0.1")...)
			if code != 2 || !strings.Contains(stderr, `--cluster "127.0.0.1" is not HOST:PORT`) ||
				!strings.Contains(stderr, "e.g. 127.0.0.1:7101") || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
				t.Errorf("%v: exit %d, %q", cmd, code, stderr)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("%v: took %s; the address is refused before any dial", cmd, d)
			}
		}
	})
	t.Run("status without a watermark", func(t *testing.T) {
		out, stderr, code := run(t, "status", "--home", home)
		want := "chain c1 (in " + kmsYAML + ") has no watermark: the signer refuses its requests until you " +
			"import one with `kms-ha state import --chain c1 FILE`"
		if code != 0 || !strings.Contains(out, "no chain has a watermark yet") || !strings.Contains(out, want) ||
			!strings.Contains(out, "--allow-fresh-state c1") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
	})
	t.Run("status without a watermark nor --home", func(t *testing.T) {
		tls := filepath.Join(home, "tls")
		out, stderr, code := run(t, "status", "--cluster", apiAddr, "--tls-ca", filepath.Join(tls, "ca.crt"),
			"--tls-cert", filepath.Join(tls, "node.crt"), "--tls-key", filepath.Join(tls, "node.key"))
		if code != 0 || !strings.Contains(out, "no chain has a watermark yet") ||
			!strings.Contains(out, "`kms-ha state import --chain CHAIN FILE`") || !strings.Contains(out, "--allow-fresh-state CHAIN") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
	})
	t.Run("state show with nothing", func(t *testing.T) {
		out, stderr, code := run(t, "state", "show", "--home", home)
		if code != 0 || out != "" || !strings.Contains(stderr, "no chain has a watermark yet") ||
			!strings.Contains(stderr, "kms-ha state import --chain c1") || !strings.Contains(stderr, "--allow-fresh-state c1") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, stderr)
		}
		out, _, code = run(t, "state", "show", "--home", home, "--json")
		if code != 0 || strings.TrimSpace(out) != "[]" {
			t.Fatalf("--json: exit %d, %q; want []", code, out)
		}
	})
	t.Run("state show --chain not found", func(t *testing.T) {
		_, stderr, code := run(t, "state", "show", "--home", home, "--chain", "c2")
		if code != 1 || !strings.Contains(stderr, "the cluster holds no watermark for chain c2 (no chain has one yet)") ||
			!strings.Contains(stderr, "kms-ha state import --chain c2") {
			t.Fatalf("exit %d, %q", code, stderr)
		}
	})
}

// TestUnbootstrappedNodeNamesBothWaysOut: a first node started without
// `kms-ha bootstrap` waits for admission like a joining node; it cannot
// tell which it is, so its log and its status name both fixes.
func TestUnbootstrappedNodeNamesBothWaysOut(t *testing.T) {
	dir := t.TempDir()
	home := filepath.Join(dir, "n1")
	for _, args := range [][]string{
		{"init", "--home", home, "--node-id", "n1", "--raft-addr", freePort(t), "--api-addr", freePort(t)},
		{"certs", "ca", "--out", filepath.Join(dir, "ca")},
		{"certs", "issue", "--ca", filepath.Join(dir, "ca"), "--node-id", "n1", "--host", "127.0.0.1", "--out", filepath.Join(home, "tls")},
	} {
		if _, stderr, code := run(t, args...); code != 0 {
			t.Fatalf("%v: %s", args, stderr)
		}
	}
	cmd := exec.Command(bin, "start", "--home", home)
	var logs syncBuffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	both := []string{"If this is the first node of a new cluster, stop it and run `kms-ha bootstrap --home ",
		"then start it; otherwise run `kms-ha join --home ", "--cluster MEMBER_API_ADDR` from another shell"}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), both[2]); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no admission hint in the log within 10s: %q", logs.String())
		}
	}
	for _, s := range both {
		if !strings.Contains(logs.String(), s) || !strings.Contains(logs.String(), "--home "+home) {
			t.Errorf("the log does not say %q for %s: %q", s, home, logs.String())
		}
	}
	out, stderr, code := run(t, "status", "--home", home)
	for _, s := range both {
		if code != 0 || !strings.Contains(out, s) {
			t.Errorf("status: exit %d, %q, %q; want %q", code, out, stderr, s)
		}
	}
}

// syncBuffer is a strings.Builder a child process writes while the test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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
