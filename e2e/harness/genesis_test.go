package harness

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/types"
)

// A genesis.json as `cometbft init` (v0.40.0) writes it.
const initGenesis = `{
  "genesis_time": "2026-11-21T07:36:51.684734921Z",
  "chain_id": "test-chain-77LqU8",
  "initial_height": "0",
  "consensus_params": {
    "block": {
      "max_bytes": "55600190",
      "max_gas": "-1"
    },
    "evidence": {
      "max_age_num_blocks": "100000",
      "max_age_duration": "172800000000000",
      "max_bytes": "1048576"
    },
    "validator": {
      "pub_key_types": [
        "ed25519"
      ]
    },
    "version": {
      "app": "0"
    },
    "abci": {
      "vote_extensions_enable_height": "0"
    },
    "authority": {
      "authority": ""
    }
  },
  "validators": [
    {
      "address": "49A3E26CA6B26F8F2FB96CB928F8348EC3446F27",
      "pub_key": {
        "type": "tendermint/PubKeyEd25519",
        "value": "O1f3O57xOomSr3Ye0U5PBjzbCNUQZCwYGyEPoe2nzVc="
      },
      "power": "10",
      "name": ""
    }
  ],
  "app_hash": ""
}
`

func TestUseValidatorKey(t *testing.T) {
	home := t.TempDir()
	for _, d := range []string{"config", "data"} {
		if err := os.MkdirAll(filepath.Join(home, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	genPath := filepath.Join(home, "config", "genesis.json")
	if err := os.WriteFile(genPath, []byte(initGenesis), 0o644); err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(home, "config", "priv_validator_key.json")
	orig, err := WriteFileKey(keyFile, filepath.Join(home, "data", "priv_validator_state.json"))
	if err != nil {
		t.Fatal(err)
	}
	n := &CometNode{Home: home, KeyFile: keyFile}
	pub := ed25519.GenPrivKey().PubKey()

	val, decoy, err := n.UseValidatorKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(val.Address, pub.Address()) || !val.PubKey.Equals(pub) {
		t.Fatalf("validator %X, want %X", val.Address, pub.Address())
	}
	if bytes.Equal(decoy.Address, orig.Address) || bytes.Equal(decoy.Address, val.Address) {
		t.Fatalf("decoy %X is the original key %X or the validator %X", decoy.Address, orig.Address, val.Address)
	}
	if n.KeyFile != "" {
		t.Fatalf("KeyFile %q, want cleared", n.KeyFile)
	}
	onDisk, err := LoadValidatorKey(keyFile)
	if err != nil || !bytes.Equal(onDisk.Address, decoy.Address) {
		t.Fatalf("priv_validator_key.json holds %X (%v), want the decoy %X", onDisk.Address, err, decoy.Address)
	}
	doc, err := types.GenesisDocFromFile(genPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(doc.Validators) != 1 || !doc.Validators[0].PubKey.Equals(pub) || !bytes.Equal(doc.Validators[0].Address, pub.Address()) {
		t.Fatalf("genesis validators %+v, want only %X", doc.Validators, pub.Address())
	}
	// Only the two values changed; every other byte is as cometbft wrote it.
	got, _ := os.ReadFile(genPath)
	gotLines, wantLines := strings.Split(string(got), "\n"), strings.Split(initGenesis, "\n")
	if len(gotLines) != len(wantLines) {
		t.Fatalf("genesis has %d lines, want %d", len(gotLines), len(wantLines))
	}
	changed := 0
	for i := range gotLines {
		if gotLines[i] != wantLines[i] {
			changed++
		}
	}
	if changed != 2 {
		t.Fatalf("%d genesis lines changed, want 2 (address, pub_key value):\n%s", changed, got)
	}
	if _, _, err := n.UseValidatorKey(ed25519.PubKey([]byte{1, 2, 3})); err == nil {
		t.Fatal("a 3-byte key was accepted")
	}
}
