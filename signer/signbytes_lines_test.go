package signer_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/internal/voteext"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
)

// signBytesVector is one vote or proposal with the sign bytes a CometBFT
// line's own types package computes for it (testdata/signbytes/gen).
type signBytesVector struct {
	Name               string `json:"name"`
	ChainID            string `json:"chain_id"`
	Type               int32  `json:"type"`
	Height             int64  `json:"height"`
	Round              int32  `json:"round"`
	PolRound           int32  `json:"pol_round"`
	BlockHash          string `json:"block_hash"`
	PartsTotal         uint32 `json:"parts_total"`
	PartsHash          string `json:"parts_hash"`
	Timestamp          string `json:"timestamp"`
	Extension          string `json:"extension"`
	SignBytes          string `json:"sign_bytes"`
	ExtensionSignBytes string `json:"extension_sign_bytes"`
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (v signBytesVector) blockID(t *testing.T) cmtproto.BlockID {
	return cmtproto.BlockID{Hash: mustHex(t, v.BlockHash),
		PartSetHeader: cmtproto.PartSetHeader{Total: v.PartsTotal, Hash: mustHex(t, v.PartsHash)}}
}

// Every line's votes and proposals, signed by the signer as the transport
// hands them over, carry signatures that verify over the sign bytes of that
// line's own library: CometBFT v0.34.33, v0.37.18 and v1.0.1 (v0.38 to
// v0.40 are the library kms-ha is built with). Lines without extensions get
// none signed; v1 gets the extension signed over its own extension bytes.
func TestSignBytesOfEveryLine(t *testing.T) {
	for _, line := range []struct {
		file string
		skip bool // the transport marks this line's requests: no extensions
	}{
		{"v0.34.33.json", true}, {"v0.37.18.json", true}, {"v1.0.1.json", false},
	} {
		data, err := os.ReadFile(filepath.Join("testdata", "signbytes", line.file))
		if err != nil {
			t.Fatal(err)
		}
		var doc struct {
			CometBFT string            `json:"cometbft"`
			Vectors  []signBytesVector `json:"vectors"`
		}
		if err := json.Unmarshal(data, &doc); err != nil {
			t.Fatal(err)
		}
		if len(doc.Vectors) < 10 {
			t.Fatalf("%s: only %d vectors", line.file, len(doc.Vectors))
		}
		for _, v := range doc.Vectors {
			t.Run(doc.CometBFT+"/"+v.ChainID+"/"+v.Name, func(t *testing.T) {
				ctx := context.Background()
				if line.skip {
					ctx = voteext.Skip(ctx)
				}
				checkVector(ctx, t, v)
			})
		}
	}
}

func checkVector(ctx context.Context, t *testing.T, v signBytesVector) {
	s, _, k, _ := newUnitFor(t, v.ChainID)
	ts, err := time.Parse(time.RFC3339Nano, v.Timestamp)
	if err != nil {
		t.Fatal(err)
	}
	want := mustHex(t, v.SignBytes)
	if cmtproto.SignedMsgType(v.Type) == cmtproto.ProposalType {
		p := &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: v.Height, Round: v.Round, PolRound: v.PolRound,
			BlockID: v.blockID(t), Timestamp: ts}
		if got := types.ProposalSignBytes(v.ChainID, p); !bytes.Equal(got, want) {
			t.Fatalf("proposal sign bytes differ from the line's:\nkms-ha %x\nline   %x", got, want)
		}
		r, ok := s.Handle(ctx, v.ChainID, propReq(v.ChainID, p)).Sum.(*privvalproto.Message_SignedProposalResponse)
		if !ok || r.SignedProposalResponse.Error != nil || !k.PubKey().VerifySignature(want, r.SignedProposalResponse.Proposal.Signature) {
			t.Fatalf("proposal signature does not verify over the line's sign bytes: %+v", r)
		}
		return
	}
	vote := &cmtproto.Vote{Type: cmtproto.SignedMsgType(v.Type), Height: v.Height, Round: v.Round,
		BlockID: v.blockID(t), Timestamp: ts, Extension: mustHex(t, v.Extension)}
	if got := types.VoteSignBytes(v.ChainID, vote); !bytes.Equal(got, want) {
		t.Fatalf("vote sign bytes differ from the line's:\nkms-ha %x\nline   %x", got, want)
	}
	got, rerr := signedVote(t, s.Handle(ctx, v.ChainID, voteReq(v.ChainID, vote)))
	if rerr != nil {
		t.Fatalf("refused: %s", rerr.Description)
	}
	if !k.PubKey().VerifySignature(want, got.Signature) {
		t.Fatal("vote signature does not verify over the line's sign bytes")
	}
	switch {
	case v.ExtensionSignBytes != "" && !voteext.Skipped(ctx):
		if !k.PubKey().VerifySignature(mustHex(t, v.ExtensionSignBytes), got.ExtensionSignature) {
			t.Fatal("extension signature does not verify over the line's extension sign bytes")
		}
	case len(got.ExtensionSignature) > 0:
		t.Fatal("an extension signature on a vote of a line (or kind) without one")
	}
}

// newUnitFor is newUnit for another chain id.
func newUnitFor(t *testing.T, chain string) (*signer.Signer, *fakeReserver, *countingKey, *bytes.Buffer) {
	t.Helper()
	f := freshFSM(t, chain)
	r := &fakeReserver{state: f}
	k := &countingKey{Signer: file.New(ed25519.GenPrivKey())}
	var logs bytes.Buffer
	s, err := signer.New(signer.Config{
		NodeID: "n1", Reserver: r, State: f,
		Keys:        map[string]keys.Signer{chain: k},
		SignTimeout: 500 * time.Millisecond,
		Logger:      slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, r, k, &logs
}
