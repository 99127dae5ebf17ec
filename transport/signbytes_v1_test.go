package transport

import (
	"bytes"
	"testing"
	"time"

	typesv1 "github.com/cometbft/cometbft/api/cometbft/types/v1"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
)

// The signer computes every line's sign bytes with CometBFT v0.40's
// types.VoteSignBytes, VoteExtensionSignBytes and ProposalSignBytes, on
// the v0.38 form the transport hands it. These tests pin that a v1 vote or
// proposal, converted as the transport converts it, gets exactly the bytes
// CometBFT v1.0 signs: v1's canonicalisation (types/canonical.go of
// v1.0.1, below) over the api module's cometbft.types.v1 canonical types.

func v1CanonicalBlockID(b typesv1.BlockID) *typesv1.CanonicalBlockID {
	if len(b.Hash) == 0 && b.PartSetHeader.Total == 0 && len(b.PartSetHeader.Hash) == 0 {
		return nil
	}
	return &typesv1.CanonicalBlockID{Hash: b.Hash,
		PartSetHeader: typesv1.CanonicalPartSetHeader{Total: b.PartSetHeader.Total, Hash: b.PartSetHeader.Hash}}
}

func delimited(t *testing.T, msg interface {
	Marshal() ([]byte, error)
}) []byte {
	t.Helper()
	b, err := msg.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	var lenbuf [10]byte
	n := putUvarint(lenbuf[:], uint64(len(b)))
	out.Write(lenbuf[:n])
	out.Write(b)
	return out.Bytes()
}

func putUvarint(buf []byte, x uint64) int {
	i := 0
	for x >= 0x80 {
		buf[i] = byte(x) | 0x80
		x >>= 7
		i++
	}
	buf[i] = byte(x)
	return i + 1
}

func v1VoteSignBytes(t *testing.T, chainID string, v *typesv1.Vote) []byte {
	t.Helper()
	return delimited(t, &typesv1.CanonicalVote{Type: v.Type, Height: v.Height, Round: int64(v.Round),
		BlockID: v1CanonicalBlockID(v.BlockID), Timestamp: v.Timestamp, ChainID: chainID})
}

func v1VoteExtensionSignBytes(t *testing.T, chainID string, v *typesv1.Vote) []byte {
	t.Helper()
	return delimited(t, &typesv1.CanonicalVoteExtension{Extension: v.Extension, Height: v.Height,
		Round: int64(v.Round), ChainId: chainID})
}

func v1ProposalSignBytes(t *testing.T, chainID string, p *typesv1.Proposal) []byte {
	t.Helper()
	return delimited(t, &typesv1.CanonicalProposal{Type: typesv1.ProposalType, Height: p.Height,
		Round: int64(p.Round), POLRound: int64(p.PolRound), BlockID: v1CanonicalBlockID(p.BlockID),
		Timestamp: p.Timestamp, ChainID: chainID})
}

func TestV1VoteSignBytesMatchV038(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 891011121, time.UTC)
	for name, v := range map[string]*typesv1.Vote{
		"prevote":                {Type: typesv1.PrevoteType, Height: 1, Round: 0, BlockID: v1BlockID(), Timestamp: ts},
		"nil prevote":            {Type: typesv1.PrevoteType, Height: 2, Round: 3, Timestamp: ts},
		"precommit":              {Type: typesv1.PrecommitType, Height: 1 << 40, Round: 7, BlockID: v1BlockID(), Timestamp: ts, ValidatorIndex: 5},
		"precommit with ext":     {Type: typesv1.PrecommitType, Height: 12, Round: 1, BlockID: v1BlockID(), Timestamp: ts, Extension: []byte("extension bytes")},
		"nil precommit":          {Type: typesv1.PrecommitType, Height: 12, Round: 2, Timestamp: ts},
		"zero time, long chain":  {Type: typesv1.PrecommitType, Height: 3, BlockID: v1BlockID()},
		"big extension, round 0": {Type: typesv1.PrecommitType, Height: 99, BlockID: v1BlockID(), Timestamp: ts, Extension: bytes.Repeat([]byte{0xab}, 4096)},
	} {
		t.Run(name, func(t *testing.T) {
			for _, chainID := range []string{testChainID, "a-much-longer-chain-id-for-a-v1-network-2026"} {
				var got cmtproto.Vote
				if err := convertWire(&got, v); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(types.VoteSignBytes(chainID, &got), v1VoteSignBytes(t, chainID, v)) {
					t.Fatalf("vote sign bytes differ:\nv0.38 %x\nv1    %x", types.VoteSignBytes(chainID, &got), v1VoteSignBytes(t, chainID, v))
				}
				if !bytes.Equal(types.VoteExtensionSignBytes(chainID, &got), v1VoteExtensionSignBytes(t, chainID, v)) {
					t.Fatal("vote extension sign bytes differ")
				}
			}
		})
	}
}

func TestV1ProposalSignBytesMatchV038(t *testing.T) {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)
	for name, p := range map[string]*typesv1.Proposal{
		"no POL":   {Type: typesv1.ProposalType, Height: 10, Round: 0, PolRound: -1, BlockID: v1BlockID(), Timestamp: ts},
		"with POL": {Type: typesv1.ProposalType, Height: 10, Round: 4, PolRound: 2, BlockID: v1BlockID(), Timestamp: ts},
	} {
		t.Run(name, func(t *testing.T) {
			var got cmtproto.Proposal
			if err := convertWire(&got, p); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(types.ProposalSignBytes(testChainID, &got), v1ProposalSignBytes(t, testChainID, p)) {
				t.Fatal("proposal sign bytes differ")
			}
			var back typesv1.Proposal
			if err := convertWire(&back, &got); err != nil || !sameWire(t, &back, p) {
				t.Fatalf("proposal round trip: %v %+v", err, back)
			}
		})
	}
}

// sameWire reports whether two messages encode to the same bytes.
func sameWire(t *testing.T, a, b wireMsg) bool {
	t.Helper()
	ab, err := a.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bb, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ab, bb)
}
