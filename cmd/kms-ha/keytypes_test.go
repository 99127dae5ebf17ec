package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
)

// kms-ha status names each chain's key type and public key: whole for
// ed25519 and the secp256k1 types, abbreviated in the table for a 1952-byte
// ML-DSA-65 key (whole in --json).
func TestStatusShowsEveryKeyType(t *testing.T) {
	ml, err := mldsa65.GenPrivKey()
	if err != nil {
		t.Fatal(err)
	}
	s := statusJSON{NodeID: "node1", State: "Leader", LeaderID: "node1"}
	pubs := []crypto.PubKey{ed25519.GenPrivKey().PubKey(), secp256k1.GenPrivKey().PubKey(), secp256k1eth.GenPrivKey().PubKey(), ml.PubKey()}
	for i, p := range pubs {
		id := fmt.Sprintf("chain-%d", i)
		s.Chains = append(s.Chains, watermarkOut{ChainID: id, Height: 5, Step: 3})
		s.Keys = append(s.Keys, keyOut{ChainID: id, KeyType: p.Type(), PubKey: fmt.Sprintf("%X", p.Bytes())})
	}
	var b bytes.Buffer
	printStatus(&b, s)
	text := b.String()
	for i, p := range pubs[:3] {
		if want := fmt.Sprintf("chain-%d  5       0      precommit  %s %X", i, p.Type(), p.Bytes()); !strings.Contains(text, want) {
			t.Errorf("status lacks %q:\n%s", want, text)
		}
	}
	full := fmt.Sprintf("%X", pubs[3].Bytes())
	if want := "ml_dsa_65 " + full[:16] + "..." + full[len(full)-8:] + " (1952 bytes; --json shows it whole)"; !strings.Contains(text, want) {
		t.Errorf("status lacks %q:\n%s", want, text)
	}
	js, _ := json.Marshal(s)
	if !strings.Contains(string(js), full) {
		t.Error("--json lacks the whole ML-DSA-65 key")
	}
}
