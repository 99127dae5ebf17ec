package stateimport

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"

	"github.com/kms-ha/kms-ha/fsm"
)

// TestEveryLinesFilePVState parses priv_validator_state.json files written
// by the FilePV of real cometbft v0.34.33, v0.37.18 and v1.0.1 nodes
// (testdata/filepv: each a one-validator kvstore chain run for a few
// seconds, then SIGKILLed), so an operator moving any line's validator to
// kms-ha can import its state. The sign bytes are checked by the
// signature the node stored with them, under the validator's key.
func TestEveryLinesFilePVState(t *testing.T) {
	for _, line := range []string{"v0.34.33", "v0.37.18", "v1.0.1"} {
		t.Run(line, func(t *testing.T) {
			dir := filepath.Join("testdata", "filepv", line)
			st, err := ParseFile(filepath.Join(dir, "priv_validator_state.json"), FormatAuto)
			if err != nil {
				t.Fatalf("parse %s's own state file: %v", line, err)
			}
			var v struct {
				ChainID string `json:"chain_id"`
				PubKey  string `json:"pub_key_ed25519"`
			}
			raw, err := os.ReadFile(filepath.Join(dir, "validator.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatal(err)
			}
			pub, err := base64.StdEncoding.DecodeString(v.PubKey)
			if err != nil {
				t.Fatal(err)
			}
			file, err := os.ReadFile(filepath.Join(dir, "priv_validator_state.json"))
			if err != nil {
				t.Fatal(err)
			}
			var f struct {
				Signature []byte `json:"signature"`
			}
			if err := json.Unmarshal(file, &f); err != nil {
				t.Fatal(err)
			}
			if st.Format != FormatCometBFT || st.Height < 10 || st.Step != fsm.StepPrecommit || len(st.SignBytes) == 0 {
				t.Fatalf("parsed %+v: want a cometbft state at a precommit above height 10 with its sign bytes", st)
			}
			if !ed25519.PubKey(pub).VerifySignature(st.SignBytes, f.Signature) {
				t.Fatal("the node's stored signature does not verify over the parsed sign bytes")
			}
			if !bytes.Contains(st.SignBytes, []byte(v.ChainID)) || !strings.HasPrefix(v.ChainID, "test-chain-") {
				t.Fatalf("sign bytes do not name chain %q", v.ChainID)
			}
		})
	}
}
