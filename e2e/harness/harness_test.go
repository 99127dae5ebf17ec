package harness

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestSetTOML(t *testing.T) {
	doc := `# top
proxy_app = "tcp://127.0.0.1:26658"
# laddr = "commented"

[rpc]
laddr = "tcp://127.0.0.1:26657"

[p2p]
laddr = "tcp://0.0.0.0:26656"

[p2p.libp2p]
enabled = false
`
	out, err := applyTOML(doc, []tomlSetting{
		{"", "proxy_app", `"kvstore"`},
		{"p2p", "laddr", `"tcp://127.0.0.1:1"`},
		{"p2p.libp2p", "enabled", "false"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`proxy_app = "kvstore"`,
		"[rpc]\nladdr = \"tcp://127.0.0.1:26657\"",
		"[p2p]\nladdr = \"tcp://127.0.0.1:1\"",
		`# laddr = "commented"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in\n%s", want, out)
		}
	}
	if _, err := setTOML(doc, "consensus", "timeout_commit", `"1s"`); err == nil {
		t.Error("expected an error for a missing key")
	}
}

func TestSignLog(t *testing.T) {
	dir := t.TempDir()
	p1 := filepath.Join(dir, "node1.log")
	p2 := filepath.Join(dir, "node2.log")
	sha := func(c byte) string { return strings.Repeat(string(c), 64) }
	line := func(node string, h, r, s int, hash string) string {
		return `{"time":"2026-01-02T03:04:05.123456Z","level":"INFO","msg":"signed","chain":"c","height":` +
			strconv.Itoa(h) + `,"round":` + strconv.Itoa(r) + `,"step":` + strconv.Itoa(s) + `,"sign_bytes_sha256":"` + hash + `","node_id":"` + node + `"}` + "\n"
	}
	write := func(p, s string) {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
	}
	write(p1, "##### harness: start #1\n"+
		`{"time":"2026-01-02T03:04:05Z","level":"INFO","msg":"became leader"}`+"\n"+
		line("node1", 1, 0, 1, sha('a'))+line("node1", 1, 0, 3, sha('b')))
	write(p2, line("node2", 1, 0, 3, sha('b'))+line("node2", 2, 0, 3, sha('c')))

	tail := &LogTail{Path: p1}
	s, err := tail.Poll()
	if err != nil || len(s.Signed) != 2 || len(s.Events) != 1 || len(s.Errors) != 0 {
		t.Fatalf("poll: %+v %v", s, err)
	}
	// A partial line is left for the next poll.
	write(p1, `{"time":"2026-01-02T03:04:05Z","msg":"sig`)
	if s, _ = tail.Poll(); len(s.Signed) != 0 {
		t.Fatalf("partial line parsed: %+v", s)
	}
	write(p1, `ned","chain":"c","height":3,"round":0,"step":2,"sign_bytes_sha256":"`+sha('d')+`","node_id":"node1"}`+"\n")
	if s, _ = tail.Poll(); len(s.Signed) != 1 || s.Signed[0].Height != 3 || s.Signed[0].Line != 5 {
		t.Fatalf("completed line: %+v", s)
	}

	all, err := ScanLogs(p1, p2)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckNoDoubleSign(all.Signed); err != nil {
		t.Fatalf("same hash from two nodes is not a double sign: %v", err)
	}
	if n, _, ok := PrecommitSigner(all.Signed, "c", 2); !ok || n != "node2" {
		t.Fatalf("PrecommitSigner = %q %v", n, ok)
	}
	write(p2, line("node2", 1, 0, 1, sha('e')))
	all, _ = ScanLogs(p1, p2)
	err = CheckNoDoubleSign(all.Signed)
	if err == nil || !strings.Contains(err.Error(), "h=1 r=0 proposal") {
		t.Fatalf("conflict not reported: %v", err)
	}

	write(p2, `{"time":"2026-01-02T03:04:05Z","msg":"signed","chain":"c","height":"4"}`+"\n")
	all, _ = ScanLogs(p2)
	if len(all.Errors) != 1 {
		t.Fatalf("malformed signed line not reported: %+v", all.Errors)
	}
}

func TestCheckLeaderOnly(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "n.log")
	good := "##### harness: start #1\n" +
		`{"msg":"became leader"}` + "\n" +
		`{"msg":"transport: connected"}` + "\n" +
		`{"msg":"signed"}` + "\n" +
		`{"msg":"lost leadership"}` + "\n" +
		"##### harness: start #2\n" +
		`{"msg":"became leader"}` + "\n" +
		`{"msg":"transport: connected"}` + "\n"
	os.WriteFile(p, []byte(good), 0o600)
	if n, err := CheckLeaderOnly(p); err != nil || n != 2 {
		t.Fatalf("good log: %d connects, %v", n, err)
	}
	for name, bad := range map[string]string{
		"after losing":  `{"msg":"became leader"}` + "\n" + `{"msg":"lost leadership"}` + "\n" + `{"msg":"transport: connected"}` + "\n",
		"after restart": `{"msg":"became leader"}` + "\n" + "##### harness: start #2\n" + `{"msg":"signed"}` + "\n",
		"never leader":  `{"msg":"transport: connected"}` + "\n",
	} {
		os.WriteFile(p, []byte(bad), 0o600)
		if _, err := CheckLeaderOnly(p); err == nil {
			t.Errorf("%s: not reported", name)
		}
	}
}

func TestCheckNoRace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "n.log")
	os.WriteFile(p, []byte(`{"msg":"signed"}`+"\n"), 0o600)
	if err := CheckNoRace(p); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, []byte("==================\nWARNING: DATA RACE\nWrite at 0x00c0001 by goroutine 7:\n"), 0o600)
	if err := CheckNoRace(p); err == nil {
		t.Fatal("a race report was not noticed")
	}
}
