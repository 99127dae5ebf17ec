package signer_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"

	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
)

// TestChainIDMismatchPointsAtKmsYAML: a chains[].id that differs from the
// validator's genesis makes CometBFT exit on its first request. The
// signer's log says, at ERROR, which kms.yaml fields name the chain and
// which chain the validator runs, and the validator's own log (the
// RemoteSignerError) names kms.yaml too. Nothing is reserved or signed.
func TestChainIDMismatchPointsAtKmsYAML(t *testing.T) {
	f := freshFSM(t, "chain-y")
	r := &fakeReserver{state: f}
	k := &countingKey{Signer: file.New(ed25519.GenPrivKey())}
	var logs bytes.Buffer
	s, err := signer.New(signer.Config{
		NodeID: "n1", Reserver: r, State: f, Keys: map[string]keys.Signer{"chain-y": k},
		Logger:      slog.New(slog.NewJSONHandler(&logs, nil)),
		ChainFields: map[string]string{"chain-y": "validators[1].chain_id, chains[0].id, keys[0].chain_ids in /h/kms.yaml"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pub := s.Handle(ctx, "chain-y", privvalproto.Message{Sum: &privvalproto.Message_PubKeyRequest{
		PubKeyRequest: &privvalproto.PubKeyRequest{ChainId: "chain-x"}}})
	vote := s.Handle(ctx, "chain-y", voteReq("chain-x", &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, BlockID: bid(1),
		Timestamp: time.Now()}))
	for name, e := range map[string]*privvalproto.RemoteSignerError{
		"pubkey": pub.GetPubKeyResponse().GetError(), "vote": vote.GetSignedVoteResponse().GetError(),
	} {
		if e == nil || !strings.Contains(e.Description, `request for chain "chain-x" on a connection for chain "chain-y"`) ||
			!strings.Contains(e.Description, "kms.yaml names chain \"chain-y\" (validators[1].chain_id, chains[0].id") {
			t.Errorf("%s: the validator reads %v", name, e)
		}
	}
	if r.calls != 0 || k.signs != 0 {
		t.Fatalf("%d reserves, %d signatures", r.calls, k.signs)
	}
	var errorsLogged int
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatal(err)
		}
		if rec["level"] != "ERROR" {
			continue
		}
		errorsLogged++
		msg, _ := rec["msg"].(string)
		for _, want := range []string{`the validator asked to sign for chain "chain-x"`, `configured for chain "chain-y"`,
			"validators[1].chain_id, chains[0].id, keys[0].chain_ids in /h/kms.yaml", "genesis.json", "Nothing was signed"} {
			if !strings.Contains(msg, want) {
				t.Errorf("ERROR line %q lacks %q", msg, want)
			}
		}
		if rec["validator_chain_id"] != "chain-x" || rec["chain"] != "chain-y" {
			t.Errorf("ERROR line attributes: %v", rec)
		}
	}
	if errorsLogged != 2 {
		t.Fatalf("%d ERROR lines, want one per request: %s", errorsLogged, logs.String())
	}
	if w, _ := f.Watermark("chain-y"); w.HRS != (fsm.HRS{}) {
		t.Fatalf("watermark moved: %+v", w)
	}
}
