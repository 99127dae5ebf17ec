package harness

import (
	"os"
	"path/filepath"
	"testing"
)

func TestScanAudit(t *testing.T) {
	p := filepath.Join(t.TempDir(), "node1.log")
	log := `##### harness: start #1 of node1 at 2026-01-02T03:04:05Z
{"time":"2026-01-02T03:04:06Z","level":"INFO","msg":"transport: connected","node_id":"node1","chain":"c","addr":"tcp://127.0.0.1:1","after_failures":0}
{"time":"2026-01-02T03:04:07Z","level":"INFO","msg":"signed","node_id":"node1","chain":"c","height":1,"round":0,"step":1,"outcome":"allow","sign_bytes_sha256":"00"}
{"time":"2026-01-02T03:04:07Z","level":"INFO","msg":"signed","node_id":"node1","chain":"c","height":1,"round":0,"step":1,"outcome":"allow_stored","sign_bytes_sha256":"00"}
{"time":"2026-01-02T03:04:08Z","level":"WARN","msg":"refused to sign","node_id":"node1","chain":"c","reason":"conflict","err":"refused to sign (conflict): x"}
{"time":"2026-01-02T03:04:09Z","level":"INFO","msg":"transport: disconnected","node_id":"node1","chain":"c","addr":"tcp://127.0.0.1:1","reason":"context done","served":3}
{"time":"2026-01-02T03:04:10Z","level":"INFO","msg":"transport: disconnected","node_id":"node1","chain":"c","addr":"tcp://127.0.0.1:2","err":"transport: read request: EOF","served":5}
`
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := ScanAudit(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Conns) != 3 || s.Conns[0].Ends() || !s.Conns[1].Ends() {
		t.Fatalf("connection events %+v", s.Conns)
	}
	if e := s.Conns[1]; e.Reason != ReasonContextDone || e.Served != 3 || e.Addr != "tcp://127.0.0.1:1" || e.NodeID != "node1" {
		t.Errorf("context-done disconnect parsed as %+v", e)
	}
	if e := s.Conns[2]; e.Reason != "" || e.Err != "transport: read request: EOF" {
		t.Errorf("EOF disconnect parsed as %+v", e)
	}
	if got := s.RefusalsByReason("c"); got["conflict"] != 1 || len(got) != 1 {
		t.Errorf("refusals %v", got)
	}
	if got := s.Outcomes["c"]; got["allow"] != 1 || got["allow_stored"] != 1 {
		t.Errorf("outcomes %v", got)
	}
	if got := FormatCounts(map[string]int{"b": 2, "a": 1}); got != "a=1 b=2" {
		t.Errorf("FormatCounts = %q", got)
	}
}
