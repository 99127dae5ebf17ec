package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSetVoteExtensionsEnableHeight(t *testing.T) {
	home := t.TempDir()
	if err := os.MkdirAll(filepath.Join(home, "config"), 0o755); err != nil {
		t.Fatal(err)
	}
	n := &CometNode{Home: home}
	genesis := `{
  "genesis_time": "2026-11-21T07:26:02.129550131Z",
  "chain_id": "c",
  "initial_height": "0",
  "consensus_params": {
    "block": {"max_bytes": "55600190", "max_gas": "-1"},
    "abci": {"vote_extensions_enable_height": "0"},
    "authority": {"authority": ""}
  },
  "validators": [],
  "app_hash": ""
}`
	if err := os.WriteFile(n.GenesisPath(), []byte(genesis), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := n.SetVoteExtensionsEnableHeight(2); err != nil {
		t.Fatal(err)
	}
	g, err := readGenesis(n.GenesisPath())
	if err != nil {
		t.Fatal(err)
	}
	cp := g["consensus_params"].(map[string]any)
	if got := cp["abci"].(map[string]any)["vote_extensions_enable_height"]; got != "2" {
		t.Errorf("vote_extensions_enable_height = %#v, want \"2\"", got)
	}
	// Everything else survives, numbers as written.
	data, _ := os.ReadFile(n.GenesisPath())
	for _, want := range []string{`"max_bytes": "55600190"`, `"genesis_time": "2026-11-21T07:26:02.129550131Z"`, `"authority": ""`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("genesis lost %s:\n%s", want, data)
		}
	}

	if err := os.WriteFile(n.GenesisPath(), []byte(`{"consensus_params": {"block": {}}}`), 0o644); err == nil {
		if err := n.SetVoteExtensionsEnableHeight(2); err == nil {
			t.Error("no error for a genesis without consensus_params.abci")
		}
	}
}
