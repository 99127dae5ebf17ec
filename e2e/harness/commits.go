package harness

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/cometbft/cometbft/crypto"
	cmtjson "github.com/cometbft/cometbft/libs/json"
	"github.com/cometbft/cometbft/types"
)

// ValidatorKey is the public half of a priv_validator_key.json.
type ValidatorKey struct {
	Address crypto.Address
	PubKey  crypto.PubKey
}

// LoadValidatorKey reads the address and public key of a CometBFT
// priv_validator_key.json (the private key is not kept).
func LoadValidatorKey(path string) (ValidatorKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ValidatorKey{}, err
	}
	var k struct {
		Address types.Address `json:"address"`
		PubKey  crypto.PubKey `json:"pub_key"`
	}
	if err := cmtjson.Unmarshal(data, &k); err != nil {
		return ValidatorKey{}, fmt.Errorf("%s: %w", path, err)
	}
	if k.PubKey == nil {
		return ValidatorKey{}, fmt.Errorf("%s: no pub_key", path)
	}
	if !bytes.Equal(k.PubKey.Address(), k.Address) {
		return ValidatorKey{}, fmt.Errorf("%s: address %X is not the address of pub_key (%X)", path, k.Address, k.PubKey.Address())
	}
	return ValidatorKey{Address: k.Address, PubKey: k.PubKey}, nil
}

// LastCommit fetches block h and returns its last_commit, the commit of
// height h-1, decoded with CometBFT's own types so that its sign bytes can be
// rebuilt.
func (n *CometNode) LastCommit(ctx context.Context, h int64) (*types.Commit, error) {
	var r struct {
		Block struct {
			LastCommit json.RawMessage `json:"last_commit"`
		} `json:"block"`
	}
	if err := n.rpc(ctx, fmt.Sprintf("/block?height=%d", h), &r); err != nil {
		return nil, err
	}
	if len(r.Block.LastCommit) == 0 {
		return nil, fmt.Errorf("/block?height=%d: no last_commit", h)
	}
	var c types.Commit
	if err := cmtjson.Unmarshal(r.Block.LastCommit, &c); err != nil {
		return nil, fmt.Errorf("/block?height=%d: last_commit: %w", h, err)
	}
	if c.Height != h-1 {
		return nil, fmt.Errorf("/block?height=%d: last_commit is for height %d, want %d", h, c.Height, h-1)
	}
	return &c, nil
}

// CommitReport is what CheckCommits found in the chain's blocks.
type CommitReport struct {
	ChainID string
	// From and To are the heights whose commits were read (the commit of
	// height h is block h+1's last_commit).
	From, To int64
	// Present counts the heights where the validator's precommit for the
	// block is in the commit (block_id_flag 2) and verifies under its key.
	Present int
	// Missing: heights whose commit has no precommit for the block from the
	// validator: its address absent, or flagged absent (1) or nil (3).
	Missing []string
	// BadSignature: the validator's commit signature does not verify under
	// its key over the sign bytes rebuilt for this chain id.
	BadSignature []string
	// NotLogged: no kms-ha audit line for the precommit slot (chain, height,
	// commit round) that the commit carries.
	NotLogged []string
	// LogMismatch: the audit line(s) for that slot name a sign_bytes_sha256
	// other than the SHA-256 of the precommit that made it into the chain.
	LogMismatch []string
	// Hashes maps each checked precommit slot to the SHA-256 of the sign
	// bytes the chain committed, for cross-checks between chains.
	Hashes map[HRS]string
}

// Err lists every problem, or nil when every commit carries the validator's
// verified precommit and every one is in the audit log with the same bytes.
func (r *CommitReport) Err() error {
	var parts []string
	add := func(what string, list []string) {
		if len(list) > 0 {
			parts = append(parts, fmt.Sprintf("%s %d of %d heights (%d..%d): %s",
				what, len(list), r.To-r.From+1, r.From, r.To, strings.Join(list, "; ")))
		}
	}
	add("validator precommit missing from the commit at", r.Missing)
	add("commit signature does not verify under the validator key at", r.BadSignature)
	add("committed precommit not in any kms-ha audit log at", r.NotLogged)
	add("audit log hash differs from the committed precommit at", r.LogMismatch)
	if len(parts) == 0 {
		return nil
	}
	return fmt.Errorf("chain %s: %s", r.ChainID, strings.Join(parts, "\n  "))
}

// CheckCommits reads the commits of heights from..to (blocks from+1..to+1)
// and checks, for each, that the validator's precommit for the block is
// there, that its signature verifies under key over the sign bytes rebuilt
// with this chain's id, and that the kms-ha audit log (recs) has a signed
// line for that precommit slot under this chain's id with the SHA-256 of
// exactly those bytes. With a single validator a block cannot commit without
// its precommit, so anything missing here means the harness is not looking
// at what it thinks, and a signature that does not verify means kms-ha
// signed with the wrong key or over the wrong chain id.
func (n *CometNode) CheckCommits(ctx context.Context, key ValidatorKey, from, to int64, recs []SignRecord) (*CommitReport, error) {
	if from < 1 || to < from {
		return nil, fmt.Errorf("CheckCommits: bad range %d..%d", from, to)
	}
	logged := map[HRS]map[string]bool{}
	for _, r := range recs {
		if r.Chain != n.ChainID || r.Step != StepPrecommit {
			continue
		}
		if logged[r.HRS()] == nil {
			logged[r.HRS()] = map[string]bool{}
		}
		logged[r.HRS()][r.SHA] = true
	}
	rep := &CommitReport{ChainID: n.ChainID, From: from, To: to, Hashes: map[HRS]string{}}
	for h := from; h <= to; h++ {
		c, err := n.LastCommit(ctx, h+1)
		if err != nil {
			return rep, err
		}
		idx := -1
		for i, s := range c.Signatures {
			if bytes.Equal(s.ValidatorAddress, key.Address) {
				idx = i
				break
			}
		}
		if idx < 0 {
			rep.Missing = append(rep.Missing, fmt.Sprintf("%d (address %X not in %d signatures)", h, key.Address, len(c.Signatures)))
			continue
		}
		cs := c.Signatures[idx]
		if cs.BlockIDFlag != types.BlockIDFlagCommit {
			rep.Missing = append(rep.Missing, fmt.Sprintf("%d (block_id_flag %d)", h, cs.BlockIDFlag))
			continue
		}
		signBytes := c.VoteSignBytes(n.ChainID, int32(idx))
		if !key.PubKey.VerifySignature(signBytes, cs.Signature) {
			rep.BadSignature = append(rep.BadSignature, fmt.Sprint(h))
			continue
		}
		rep.Present++
		sum := sha256.Sum256(signBytes)
		sha := hex.EncodeToString(sum[:])
		slot := HRS{Chain: n.ChainID, Height: h, Round: int64(c.Round), Step: StepPrecommit}
		rep.Hashes[slot] = sha
		switch got := logged[slot]; {
		case len(got) == 0:
			rep.NotLogged = append(rep.NotLogged, slot.String())
		case !got[sha] || len(got) > 1:
			var other []string
			for s := range got {
				if s != sha {
					other = append(other, s[:16]+"…")
				}
			}
			sort.Strings(other)
			rep.LogMismatch = append(rep.LogMismatch, fmt.Sprintf("%s: committed %s…, logged also/instead %s", slot, sha[:16], strings.Join(other, ", ")))
		}
	}
	return rep, nil
}
