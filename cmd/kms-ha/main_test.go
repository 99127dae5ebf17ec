package main

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kms-ha-cli")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "kms-ha")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		panic(string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func run(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return stdout.String(), stderr.String(), code
}

func TestEveryCommandHasHelp(t *testing.T) {
	for _, c := range []string{"init", "bootstrap", "start", "join", "status", "version", "remove", "leave",
		"transfer-leadership", "recover", "peer-id", "certs ca", "certs issue", "state import", "state show",
		"snapshot save", "snapshot restore"} {
		out, _, code := run(t, append(strings.Fields(c), "--help")...)
		if code != 0 || !strings.Contains(out, "kms-ha "+c) {
			t.Errorf("%s --help: exit %d, output %q", c, code, out)
		}
	}
}

func TestUsageErrorsAreOneLine(t *testing.T) {
	cases := [][]string{
		{"status", "--bogus"},
		{"--bogus"},
		{"frobnicate"},
		{"status"},
		{"join", "--home", "x"},
		{"init", "--home", t.TempDir()},
		{"start", "--home", filepath.Join(t.TempDir(), "missing")},
		{"bootstrap", "--home", t.TempDir(), "--peers", "garbage"},
		{"remove", "--cluster", "127.0.0.1:1"},
		{"certs", "ca"},
		{"certs", "issue", "--ca", t.TempDir(), "--node-id", "n1", "--out", t.TempDir()},
		{"state", "import", "--chain", "c", filepath.Join(t.TempDir(), "missing.json")},
		{"snapshot", "save"},
		{"peer-id"},
		{"recover", "--home", t.TempDir()},
	}
	for _, args := range cases {
		stdout, stderr, code := run(t, args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code == 0 || len(lines) != 1 || lines[0] == "" || stdout != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want one error line and a non-zero exit", args, code, stdout, stderr)
		}
	}
}

func TestInitWritesFilesAndRefusesToOverwrite(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	if _, stderr, code := run(t, "init", "--home", home, "--node-id", "n1"); code != 0 {
		t.Fatalf("init: %s", stderr)
	}
	for _, f := range []string{"kms.yaml", "identity.json"} {
		st, err := os.Stat(filepath.Join(home, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s is readable by others: %v", f, st.Mode())
		}
	}
	before, _ := os.ReadFile(filepath.Join(home, "identity.json"))
	_, stderr, code := run(t, "init", "--home", home, "--node-id", "n1")
	after, _ := os.ReadFile(filepath.Join(home, "identity.json"))
	if code == 0 || !strings.Contains(stderr, "refusing to overwrite") || string(before) != string(after) {
		t.Fatalf("second init: exit %d, %q", code, stderr)
	}
	// bootstrap once, then refuse.
	if _, stderr, code := run(t, "bootstrap", "--home", home); code != 0 {
		t.Fatalf("bootstrap: %s", stderr)
	}
	if _, stderr, code := run(t, "bootstrap", "--home", home); code == 0 || !strings.Contains(stderr, "already holds raft state") {
		t.Fatalf("second bootstrap: exit %d, %q", code, stderr)
	}
}

func TestInvalidConfigNamesTheField(t *testing.T) {
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, "kms.yaml"), []byte("cluster:\n  node_id: n1\n  raft_addr: 127.0.0.1:1\n  api_addr: nope\n"), 0o600)
	_, stderr, code := run(t, "start", "--home", home)
	if code == 0 || !strings.Contains(stderr, "cluster.api_addr") {
		t.Fatalf("exit %d, %q", code, stderr)
	}
}

// TestStartRefusesUnusableValidator: a validators entry whose identity file
// does not load stops `start` with the field and the fix, instead of a node
// that leads and never dials.
func TestStartRefusesUnusableValidator(t *testing.T) {
	home := t.TempDir()
	os.WriteFile(filepath.Join(home, "kms.yaml"), []byte("cluster:\n  node_id: n1\n  raft_addr: 127.0.0.1:1\n  api_addr: 127.0.0.1:2\n"+
		"chains: [{id: c}]\nkeys: [{chain_ids: [c], key_file: k.json}]\n"+
		"validators: [{chain_id: c, addr: 'tcp://10.0.0.1:26659', identity_key: missing.json}]\n"), 0o600)
	_, stderr, code := run(t, "start", "--home", home)
	if code == 0 || !strings.Contains(stderr, "validators[0].identity_key: transport: load identity "+filepath.Join(home, "missing.json")) ||
		!strings.Contains(stderr, "`kms-ha init` writes one as identity.json") {
		t.Fatalf("exit %d, %q", code, stderr)
	}
}

func TestBootstrapRefusesWhenAPeerRuns(t *testing.T) {
	home := filepath.Join(t.TempDir(), "h")
	if _, stderr, code := run(t, "init", "--home", home, "--node-id", "n1", "--raft-addr", "127.0.0.1:17999"); code != 0 {
		t.Fatal(stderr)
	}
	peer, err := net.Listen("tcp", "127.0.0.1:0") // a running member's raft port
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	_, stderr, code := run(t, "bootstrap", "--home", home, "--peers", "n1=127.0.0.1:17999,n2="+peer.Addr().String())
	if code == 0 || !strings.Contains(stderr, "already running") {
		t.Fatalf("exit %d, %q", code, stderr)
	}
	for _, store := range []string{"raft.db", "wal"} {
		if _, err := os.Stat(filepath.Join(home, "raft", store)); err == nil {
			t.Fatalf("a refused bootstrap left raft state behind (%s)", store)
		}
	}
}

func TestCertsAndPeerID(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if _, stderr, code := run(t, "certs", "ca", "--out", ca); code != 0 {
		t.Fatalf("certs ca: %s", stderr)
	}
	if _, stderr, code := run(t, "certs", "ca", "--out", ca); code == 0 || !strings.Contains(stderr, "refusing to overwrite") {
		t.Fatalf("second certs ca: exit %d, %s", code, stderr)
	}
	out := filepath.Join(dir, "n1", "tls")
	if _, stderr, code := run(t, "certs", "issue", "--ca", ca, "--node-id", "n1", "--host", "127.0.0.1", "--out", out); code != 0 {
		t.Fatalf("certs issue: %s", stderr)
	}
	for _, f := range []string{"node.crt", "node.key", "ca.crt"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Fatalf("certs issue did not write %s", f)
		}
	}
	if st, _ := os.Stat(filepath.Join(out, "node.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("node.key mode %v", st.Mode().Perm())
	}
	home := filepath.Join(dir, "n1")
	if _, stderr, code := run(t, "init", "--home", home, "--node-id", "n1"); code != 0 {
		t.Fatalf("init: %s", stderr)
	}
	id, stderr, code := run(t, "peer-id", "--home", home)
	if code != 0 || !strings.HasPrefix(strings.TrimSpace(id), "12D3KooW") {
		t.Fatalf("peer-id: exit %d %q %s", code, id, stderr)
	}
	// The node's status without a running node: one clear line.
	_, stderr, code = run(t, "status", "--home", home)
	if code == 0 || !strings.Contains(stderr, "unavailable") {
		t.Fatalf("status of a stopped node: exit %d %s", code, stderr)
	}
}

func TestStateImportRefusesBadFilesBeforeCalling(t *testing.T) {
	f := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(f, []byte(`{"height":"10","round":0,"step":7}`), 0o600)
	_, stderr, code := run(t, "state", "import", "--chain", "c", "--cluster", "127.0.0.1:1", f)
	if code == 0 || !strings.Contains(stderr, "nothing was imported") || !strings.Contains(stderr, "step") {
		t.Fatalf("exit %d, %s", code, stderr)
	}
}

func TestCertsIssueOperator(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca")
	if _, stderr, code := run(t, "certs", "ca", "--out", ca); code != 0 {
		t.Fatalf("certs ca: %s", stderr)
	}
	out := filepath.Join(dir, "alice")
	stdout, stderr, code := run(t, "certs", "issue", "--ca", ca, "--operator", "alice", "--read-only", "--out", out)
	if code != 0 || !strings.Contains(stdout, "read-only operator alice") || !strings.Contains(stdout, "--tls-cert") {
		t.Fatalf("certs issue --operator: exit %d %q %s", code, stdout, stderr)
	}
	for _, f := range []string{"operator.crt", "operator.key", "ca.crt"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Fatalf("certs issue --operator did not write %s", f)
		}
	}
	if st, _ := os.Stat(filepath.Join(out, "operator.key")); st.Mode().Perm() != 0o600 {
		t.Fatalf("operator.key mode %v", st.Mode().Perm())
	}
	for _, args := range [][]string{
		{"--node-id", "n1", "--operator", "bob", "--host", "127.0.0.1"},
		{"--node-id", "n1", "--read-only", "--host", "127.0.0.1"},
		{"--operator", "bob", "--host", "127.0.0.1"},
		{"--operator", "not a name"},
	} {
		args = append([]string{"certs", "issue", "--ca", ca, "--out", filepath.Join(dir, "x")}, args...)
		if _, stderr, code := run(t, args...); code == 0 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%v: exit %d, %q; want one error line", args, code, stderr)
		}
	}
}

// A damaged raft.db (log_store bolt) or wal/wal-meta.db (the WAL's bolt
// meta file) stops `kms-ha start` with one line that names the file and
// the way out, where bbolt used to die with SIGBUS and a stack trace.
func TestStartOnDamagedRaftDBIsOneLine(t *testing.T) {
	for _, store := range []string{"bolt", "wal"} {
		t.Run(store, func(t *testing.T) { testStartOnDamagedStore(t, store) })
	}
}

func testStartOnDamagedStore(t *testing.T, store string) {
	file := map[string]string{"bolt": "raft.db", "wal": filepath.Join("wal", "wal-meta.db")}[store]
	for name, damage := range map[string]func(path string) error{
		// Less than the two header pages of either file.
		"truncated": func(path string) error { return os.Truncate(path, int64(os.Getpagesize())+2000) },
		"both meta pages overwritten": func(path string) error {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			garbage := []byte(strings.Repeat("x", 64))
			if _, err := f.WriteAt(garbage, 16); err != nil {
				return err
			}
			_, err = f.WriteAt(garbage, int64(os.Getpagesize())+16) // bbolt pages are OS pages
			return err
		},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			home := filepath.Join(dir, "n1")
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			l.Close()
			for _, args := range [][]string{
				{"init", "--home", home, "--node-id", "n1", "--raft-addr", l.Addr().String()},
				{"certs", "ca", "--out", filepath.Join(dir, "ca")},
				{"certs", "issue", "--ca", filepath.Join(dir, "ca"), "--node-id", "n1", "--host", "127.0.0.1", "--out", filepath.Join(home, "tls")},
				{"bootstrap", "--home", home},
			} {
				if args[0] == "bootstrap" {
					setLogStore(t, home, store)
				}
				if _, stderr, code := run(t, args...); code != 0 {
					t.Fatalf("%v: %s", args, stderr)
				}
			}
			db := filepath.Join(home, "raft", file)
			if err := damage(db); err != nil {
				t.Fatal(err)
			}
			// Before the check, a damaged file could also open and run:
			// bound the wait so that such a start fails the test.
			cmd := exec.Command(bin, "start", "--home", home)
			var out, errOut strings.Builder
			cmd.Stdout, cmd.Stderr = &out, &errOut
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			timer := time.AfterFunc(20*time.Second, func() { cmd.Process.Kill() })
			cmd.Wait()
			timer.Stop()
			stdout, stderr, code := out.String(), errOut.String(), cmd.ProcessState.ExitCode()
			t.Log(stderr)
			lines := strings.Split(strings.TrimSpace(stderr), "\n")
			last := lines[len(lines)-1]
			if code == 0 || strings.Contains(stderr, "goroutine") || strings.Contains(stdout+stderr, "SIGBUS") ||
				!strings.Contains(last, db) || !strings.Contains(last, "kms-ha join") ||
				!strings.Contains(last, "move the data dir "+filepath.Join(home, "raft")+" away") {
				t.Fatalf("exit %d, stdout %q, stderr %q; want one line naming %s and the fix", code, stdout, stderr, db)
			}
			if len(lines) != 1 {
				t.Errorf("stderr has %d lines; want the error alone: %q", len(lines), stderr)
			}
		})
	}
}

// setLogStore sets cluster.log_store in the kms.yaml `kms-ha init` wrote,
// on the template's commented line.
func setLogStore(t *testing.T, home, store string) {
	t.Helper()
	path := filepath.Join(home, "kms.yaml")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	y := strings.Replace(string(b), "  # log_store: wal\n", "  log_store: "+store+"\n", 1)
	if y == string(b) {
		t.Fatal("kms.yaml has no log_store line")
	}
	if err := os.WriteFile(path, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
}

// `kms-ha start` refuses a secret file other accounts can read, naming the
// field, the file and the chmod, before it opens anything.
func TestStartRefusesAnOpenIdentityFile(t *testing.T) {
	home := filepath.Join(t.TempDir(), "n1")
	if _, stderr, code := run(t, "init", "--home", home, "--node-id", "n1"); code != 0 {
		t.Fatal(stderr)
	}
	identity := filepath.Join(home, "identity.json")
	if err := os.Chmod(identity, 0o644); err != nil {
		t.Fatal(err)
	}
	yaml := "cluster:\n  node_id: n1\n  raft_addr: 127.0.0.1:7001\n  api_addr: 127.0.0.1:7101\n" +
		"chains: [{id: c1}]\n" +
		"validators: [{chain_id: c1, addr: 'tcp://127.0.0.1:26659', identity_key: identity.json}]\n" +
		"keys: [{chain_ids: [c1], backend: awskms, key_id: alias/v}]\n"
	if err := os.WriteFile(filepath.Join(home, "kms.yaml"), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, code := run(t, "start", "--home", home)
	if code == 0 || !strings.Contains(stderr, "validators[0].identity_key") || !strings.Contains(stderr, "chmod 600 "+identity) ||
		strings.Contains(stderr, "goroutine") {
		t.Fatalf("exit %d, %q", code, stderr)
	}
}
