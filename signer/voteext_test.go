package signer_test

import (
	"context"
	"testing"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/internal/voteext"
	"github.com/kms-ha/kms-ha/signer"
)

// What a precommit costs the key: a v0.38 to v0.40 node (no mark) gets the
// vote and its extension signed, two signatures; a request marked by the
// transport as one whose extension must not be signed (a v0.34 or v0.37
// node, or v1's skip_extension_signing) costs one, and carries no
// extension signature.
func TestPrecommitKeySignaturesPerLine(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ctx       context.Context
		wantSigns int
		wantExt   bool
	}{
		{"v0.38 non-nil precommit", context.Background(), 2, true},
		{"v0.37 precommit (extensions skipped)", voteext.Skip(context.Background()), 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, _, k, _ := newUnit(t)
			v := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 5, BlockID: bid(1), Timestamp: ts}
			got, rerr := signedVote(t, s.Handle(tc.ctx, chainID, voteReq(chainID, v)))
			if rerr != nil {
				t.Fatalf("refused: %s", rerr.Description)
			}
			if k.signs != tc.wantSigns {
				t.Fatalf("key signed %d times, want %d", k.signs, tc.wantSigns)
			}
			if !k.PubKey().VerifySignature(types.VoteSignBytes(chainID, &got), got.Signature) {
				t.Fatal("vote signature does not verify")
			}
			if hasExt := len(got.ExtensionSignature) > 0; hasExt != tc.wantExt {
				t.Fatalf("extension signature present = %v, want %v", hasExt, tc.wantExt)
			}
		})
	}
}

// A skipped extension still obeys the double-sign rules: the same precommit
// asked again (the node retrying after a dropped connection) gets the same
// signature, and costs one more key signature, not two.
func TestSkippedExtensionRepeatIsIdempotent(t *testing.T) {
	s, _, k, _ := newUnit(t)
	ctx := voteext.Skip(context.Background())
	v1 := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 7, BlockID: bid(2), Timestamp: ts}
	v2 := *v1
	a, rerr := signedVote(t, s.Handle(ctx, chainID, voteReq(chainID, v1)))
	if rerr != nil {
		t.Fatal(rerr.Description)
	}
	b, rerr := signedVote(t, s.Handle(ctx, chainID, voteReq(chainID, &v2)))
	if rerr != nil {
		t.Fatal(rerr.Description)
	}
	if string(a.Signature) != string(b.Signature) || k.signs != 2 {
		t.Fatalf("repeat: same signature %v, key signs %d (want true, 2)", string(a.Signature) == string(b.Signature), k.signs)
	}
}

// One chain served on two lines at once (a chain mid-upgrade: the old
// binary behind one sentry, the new one behind another): the watermark is
// the chain's, whatever the line. The same precommit asked on a line with
// extensions and on one without gets the same vote signature; a conflicting
// precommit at the same height and round is refused on either.
func TestOneChainAcrossLines(t *testing.T) {
	s, _, _, _ := newUnit(t)
	v038 := context.Background()
	v037 := voteext.Skip(context.Background())
	vote := func(b byte) *cmtproto.Vote {
		return &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 9, Round: 0, BlockID: bid(b), Timestamp: ts}
	}
	a, rerr := signedVote(t, s.Handle(v038, chainID, voteReq(chainID, vote(1))))
	if rerr != nil {
		t.Fatal(rerr.Description)
	}
	b, rerr := signedVote(t, s.Handle(v037, chainID, voteReq(chainID, vote(1))))
	if rerr != nil {
		t.Fatal(rerr.Description)
	}
	if string(a.Signature) != string(b.Signature) || len(a.ExtensionSignature) == 0 || len(b.ExtensionSignature) != 0 {
		t.Fatalf("same precommit on two lines: same signature %v, extension signatures %d and %d bytes (want true, 64, 0)",
			string(a.Signature) == string(b.Signature), len(a.ExtensionSignature), len(b.ExtensionSignature))
	}
	for _, ctx := range []context.Context{v037, v038} {
		if _, rerr := signedVote(t, s.Handle(ctx, chainID, voteReq(chainID, vote(2)))); rerr == nil || rerr.Code != signer.CodeRefused {
			t.Fatalf("conflicting precommit: got %v, want a refusal", rerr)
		}
	}
}
