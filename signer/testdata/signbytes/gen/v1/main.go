// Command gen prints CometBFT v1.0's sign bytes for the vectors of
// kms-ha's signer tests (see ../README.md).
package main

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"time"

	cmtproto "github.com/cometbft/cometbft/api/cometbft/types/v1"
	"github.com/cometbft/cometbft/types"
	"github.com/cometbft/cometbft/version"
)

type vector struct {
	Name               string `json:"name"`
	ChainID            string `json:"chain_id"`
	Type               int32  `json:"type"`
	Height             int64  `json:"height"`
	Round              int32  `json:"round"`
	PolRound           int32  `json:"pol_round,omitempty"`
	BlockHash          string `json:"block_hash,omitempty"`
	PartsTotal         uint32 `json:"parts_total,omitempty"`
	PartsHash          string `json:"parts_hash,omitempty"`
	Timestamp          string `json:"timestamp"`
	Extension          string `json:"extension,omitempty"`
	SignBytes          string `json:"sign_bytes"`
	ExtensionSignBytes string `json:"extension_sign_bytes,omitempty"`
}

func main() {
	ts := time.Date(2026, 3, 4, 5, 6, 7, 891011121, time.UTC)
	hash := make([]byte, 32)
	for i := range hash {
		hash[i] = byte(i * 7)
	}
	bid := cmtproto.BlockID{Hash: hash, PartSetHeader: cmtproto.PartSetHeader{Total: 3, Hash: hash}}
	var out []vector
	for _, chainID := range []string{"cosmoshub-4", "a-much-longer-chain-id-for-a-test-network-2026"} {
		for _, v := range []struct {
			name string
			vote cmtproto.Vote
		}{
			{"prevote", cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, Round: 0, BlockID: bid, Timestamp: ts}},
			{"nil prevote", cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 2, Round: 3, Timestamp: ts}},
			{"precommit", cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 1 << 40, Round: 7, BlockID: bid, Timestamp: ts}},
			{"precommit with extension", cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 12, Round: 1, BlockID: bid, Timestamp: ts, Extension: []byte("ext-12")}},
			{"nil precommit", cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 12, Round: 2, Timestamp: ts}},
		} {
			vec := vector{Name: v.name, ChainID: chainID, Type: int32(v.vote.Type), Height: v.vote.Height, Round: v.vote.Round,
				BlockHash: hex.EncodeToString(v.vote.BlockID.Hash), PartsTotal: v.vote.BlockID.PartSetHeader.Total,
				PartsHash: hex.EncodeToString(v.vote.BlockID.PartSetHeader.Hash), Timestamp: ts.Format(time.RFC3339Nano),
				Extension: hex.EncodeToString(v.vote.Extension), SignBytes: hex.EncodeToString(types.VoteSignBytes(chainID, &v.vote))}
			if v.vote.Type == cmtproto.PrecommitType && len(v.vote.BlockID.Hash) > 0 {
				vec.ExtensionSignBytes = hex.EncodeToString(types.VoteExtensionSignBytes(chainID, &v.vote))
			}
			out = append(out, vec)
		}
		for _, p := range []struct {
			name string
			p    cmtproto.Proposal
		}{
			{"proposal", cmtproto.Proposal{Type: cmtproto.ProposalType, Height: 10, Round: 0, PolRound: -1, BlockID: bid, Timestamp: ts}},
			{"proposal with POL", cmtproto.Proposal{Type: cmtproto.ProposalType, Height: 10, Round: 4, PolRound: 2, BlockID: bid, Timestamp: ts}},
		} {
			out = append(out, vector{Name: p.name, ChainID: chainID, Type: int32(p.p.Type), Height: p.p.Height, Round: p.p.Round,
				PolRound: p.p.PolRound, BlockHash: hex.EncodeToString(hash), PartsTotal: 3, PartsHash: hex.EncodeToString(hash),
				Timestamp: ts.Format(time.RFC3339Nano), SignBytes: hex.EncodeToString(types.ProposalSignBytes(chainID, &p.p))})
		}
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(map[string]any{"cometbft": "v" + version.CMTSemVer, "vectors": out}); err != nil {
		panic(err)
	}
}
