package harness

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/tmhash"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	"github.com/cometbft/cometbft/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
)

// TestCheckCommits feeds CheckCommits canned /block answers, so that each
// failure it must report is shown to be reported.
func TestCheckCommits(t *testing.T) {
	const chainID = "c"
	priv := ed25519.GenPrivKey()
	key := ValidatorKey{Address: priv.PubKey().Address(), PubKey: priv.PubKey()}
	other := ed25519.GenPrivKey()

	// commit builds the commit of height h (round 1) signed by signer with
	// flag, and returns it with the SHA-256 of its sign bytes.
	commit := func(h int64, signer ed25519.PrivKey, flag types.BlockIDFlag) (*types.Commit, string) {
		bid := types.BlockID{Hash: tmhash.Sum([]byte(fmt.Sprint("block", h))),
			PartSetHeader: types.PartSetHeader{Total: 1, Hash: tmhash.Sum([]byte(fmt.Sprint("parts", h)))}}
		ts := time.Date(2026, 1, 2, 3, 4, 5, int(h), time.UTC)
		v := &types.Vote{Type: cmtproto.PrecommitType, Height: h, Round: 1, BlockID: bid, Timestamp: ts,
			ValidatorAddress: signer.PubKey().Address()}
		sb := types.VoteSignBytes(chainID, v.ToProto())
		sig, err := signer.Sign(sb)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(sb)
		return &types.Commit{Height: h, Round: 1, BlockID: bid, Signatures: []types.CommitSig{{
			BlockIDFlag: flag, ValidatorAddress: signer.PubKey().Address(), Timestamp: ts, Signature: sig,
		}}}, hex.EncodeToString(sum[:])
	}
	commits := map[int64]*types.Commit{} // by the height of the block carrying it
	var recs []SignRecord
	for h := int64(1); h <= 3; h++ {
		c, sha := commit(h, priv, types.BlockIDFlagCommit)
		commits[h+1] = c
		recs = append(recs, SignRecord{Chain: chainID, Height: h, Round: 1, Step: StepPrecommit, SHA: sha, NodeID: "n1"})
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, _ := strconv.ParseInt(r.URL.Query().Get("height"), 10, 64)
		c, ok := commits[h]
		if r.URL.Path != "/block" || !ok {
			fmt.Fprint(w, `{"jsonrpc":"2.0","id":-1,"error":{"code":-32603,"message":"no block"}}`)
			return
		}
		lc, err := cmtjson.Marshal(c)
		if err != nil {
			t.Error(err)
		}
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":-1,"result":{"block":{"last_commit":%s}}}`, lc)
	}))
	defer srv.Close()
	node := func(chain string) *CometNode {
		return &CometNode{ChainID: chain, RPCAddr: strings.TrimPrefix(srv.URL, "http://"), client: srv.Client()}
	}
	check := func(n *CometNode, k ValidatorKey, recs []SignRecord) *CommitReport {
		t.Helper()
		rep, err := n.CheckCommits(t.Context(), k, 1, 3, recs)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}

	if rep := check(node(chainID), key, recs); rep.Err() != nil || rep.Present != 3 || len(rep.Hashes) != 3 {
		t.Fatalf("good chain: %+v: %v", rep, rep.Err())
	}
	otherKey := ValidatorKey{Address: key.Address, PubKey: other.PubKey()}
	if rep := check(node(chainID), otherKey, recs); len(rep.BadSignature) != 3 {
		t.Errorf("wrong key: %+v", rep)
	}
	if rep := check(node("other-chain"), key, recs); len(rep.BadSignature) != 3 || rep.Err() == nil {
		t.Errorf("sign bytes of another chain id: %+v", rep)
	}

	// The audit log: a line missing, a line with other bytes, a line under
	// another chain id.
	bad := append([]SignRecord(nil), recs[:2]...)
	bad[0].SHA = strings.Repeat("0", 64)
	bad[1].Chain = "other-chain"
	rep := check(node(chainID), key, bad)
	if len(rep.LogMismatch) != 1 || len(rep.NotLogged) != 2 || rep.Present != 3 {
		t.Errorf("audit log problems: %+v", rep)
	}

	// The validator's precommit absent from a commit, or present as nil.
	commits[3], _ = commit(2, other, types.BlockIDFlagCommit)
	commits[4], _ = commit(3, priv, types.BlockIDFlagNil)
	rep = check(node(chainID), key, recs)
	if len(rep.Missing) != 2 || rep.Present != 1 || !strings.Contains(fmt.Sprint(rep.Err()), "missing from the commit") {
		t.Errorf("missing precommits: %+v: %v", rep, rep.Err())
	}

	// LoadValidatorKey reads what cometbft init writes.
	dir := t.TempDir()
	p := filepath.Join(dir, "priv_validator_key.json")
	privval.NewFilePV(priv, p, filepath.Join(dir, "priv_validator_state.json")).Save()
	if k, err := LoadValidatorKey(p); err != nil || !k.PubKey.Equals(key.PubKey) || !bytes.Equal(k.Address, key.Address) {
		t.Fatalf("LoadValidatorKey: %v %v", k, err)
	}
}
