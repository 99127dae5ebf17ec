// Command abciapp is the ABCI application of the vote-extension end-to-end
// test (../../voteext_test.go): CometBFT's kvstore example, served over an
// ABCI socket, with non-empty vote extensions.
//
//   - ExtendVote returns "ext-<height>".
//   - VerifyVoteExtension accepts exactly that and rejects anything else,
//     an empty extension included.
//   - PrepareProposal receives the proposer's extended commit of the previous
//     height (LocalLastCommit: each validator's extension and extension
//     signature). For every precommit for the block it checks the extension
//     and verifies the extension signature under the validator's public key
//     from genesis.json, over CometBFT's VoteExtensionSignBytes, and writes
//     one JSON line per vote to the record file. Below the genesis
//     consensus_params.abci.vote_extensions_enable_height it expects no
//     extension data at all.
//
// The record file is the test's only view of the extended commits: the RPC
// (/commit, /block) shows commits without extensions.
//
//	abciapp --addr tcp://127.0.0.1:26658 --genesis HOME/config/genesis.json --record FILE
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/cometbft/cometbft/abci/example/kvstore"
	"github.com/cometbft/cometbft/abci/server"
	abci "github.com/cometbft/cometbft/abci/types"
	"github.com/cometbft/cometbft/crypto"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
)

// Record is one line of the record file. The e2e harness decodes the same
// fields (harness.VoteExtRecord).
type Record struct {
	Time  time.Time `json:"time"`
	Event string    `json:"event"` // extend_vote, verify_vote_extension, local_last_commit
	// Height is the height of the vote: for local_last_commit, the height of
	// the extended commit (the proposal's height minus one).
	Height int64 `json:"height"`
	// Round is the commit round (local_last_commit only).
	Round     int32  `json:"round"`
	Validator string `json:"validator,omitempty"` // hex address
	Flag      int32  `json:"block_id_flag,omitempty"`
	Extension string `json:"extension,omitempty"`
	// ExtSigLen is the length of the extension signature.
	ExtSigLen int `json:"ext_sig_len,omitempty"`
	// OK: the extension is the expected one and its signature verifies
	// (local_last_commit), or the extension was accepted
	// (verify_vote_extension).
	OK  bool   `json:"ok"`
	Err string `json:"err,omitempty"`
}

// App is kvstore with vote extensions.
type App struct {
	*kvstore.Application

	chainID string
	pubKeys map[string]crypto.PubKey // by upper-case hex address
	// extHeight is the first height with vote extensions (genesis
	// consensus_params.abci.vote_extensions_enable_height; 0: never).
	extHeight int64

	mu  sync.Mutex
	out *os.File
}

func expected(height int64) []byte { return []byte(fmt.Sprintf("ext-%d", height)) }

func (a *App) record(r Record) {
	r.Time = time.Now().UTC()
	line, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.out.Write(append(line, '\n')); err != nil {
		fmt.Fprintln(os.Stderr, "abciapp: record:", err)
	}
}

// ExtendVote returns a non-empty extension, so that a signer that forgets
// the extension signature is caught by CometBFT and by PrepareProposal below.
func (a *App) ExtendVote(_ context.Context, req *abci.RequestExtendVote) (*abci.ResponseExtendVote, error) {
	a.record(Record{Event: "extend_vote", Height: req.Height, Extension: string(expected(req.Height)), OK: true})
	return &abci.ResponseExtendVote{VoteExtension: expected(req.Height)}, nil
}

// VerifyVoteExtension accepts only the extension ExtendVote produces.
func (a *App) VerifyVoteExtension(_ context.Context, req *abci.RequestVerifyVoteExtension) (*abci.ResponseVerifyVoteExtension, error) {
	ok := string(req.VoteExtension) == string(expected(req.Height))
	a.record(Record{Event: "verify_vote_extension", Height: req.Height,
		Validator: fmt.Sprintf("%X", req.ValidatorAddress), Extension: string(req.VoteExtension), OK: ok})
	if !ok {
		return &abci.ResponseVerifyVoteExtension{Status: abci.ResponseVerifyVoteExtension_REJECT}, nil
	}
	return &abci.ResponseVerifyVoteExtension{Status: abci.ResponseVerifyVoteExtension_ACCEPT}, nil
}

// PrepareProposal checks the extended commit of the previous height, then
// lets kvstore build the block.
func (a *App) PrepareProposal(ctx context.Context, req *abci.RequestPrepareProposal) (*abci.ResponsePrepareProposal, error) {
	h := req.Height - 1
	for _, v := range req.LocalLastCommit.Votes {
		addr := fmt.Sprintf("%X", v.Validator.Address)
		r := Record{Event: "local_last_commit", Height: h, Round: req.LocalLastCommit.Round,
			Validator: addr, Flag: int32(v.BlockIdFlag), Extension: string(v.VoteExtension),
			ExtSigLen: len(v.ExtensionSignature)}
		r.OK, r.Err = a.check(h, req.LocalLastCommit.Round, addr, v)
		a.record(r)
	}
	return a.Application.PrepareProposal(ctx, req)
}

func (a *App) check(h int64, round int32, addr string, v abci.ExtendedVoteInfo) (bool, string) {
	if v.BlockIdFlag != cmtproto.BlockIDFlagCommit || a.extHeight == 0 || h < a.extHeight {
		// Nil and absent votes carry no extension, nor does any vote
		// before extensions are enabled.
		if len(v.VoteExtension) > 0 || len(v.ExtensionSignature) > 0 {
			return false, "extension data on a vote that is not a precommit for the block"
		}
		return true, ""
	}
	if string(v.VoteExtension) != string(expected(h)) {
		return false, fmt.Sprintf("extension %q, want %q", v.VoteExtension, expected(h))
	}
	if len(v.ExtensionSignature) == 0 {
		return false, "no extension signature"
	}
	pk, ok := a.pubKeys[addr]
	if !ok {
		return false, "validator not in genesis"
	}
	signBytes := types.VoteExtensionSignBytes(a.chainID, &cmtproto.Vote{
		Type: cmtproto.PrecommitType, Height: h, Round: round, Extension: v.VoteExtension,
	})
	if !pk.VerifySignature(signBytes, v.ExtensionSignature) {
		return false, "extension signature does not verify under the validator's key"
	}
	return true, ""
}

func main() {
	addr := flag.String("addr", "", "ABCI listen address, tcp://127.0.0.1:PORT or unix://PATH")
	genesis := flag.String("genesis", "", "the chain's genesis.json (chain id and validator keys)")
	recordPath := flag.String("record", "", "file to append one JSON line per extension event to")
	flag.Parse()
	if *addr == "" || *genesis == "" || *recordPath == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := run(*addr, *genesis, *recordPath); err != nil {
		fmt.Fprintln(os.Stderr, "abciapp:", err)
		os.Exit(1)
	}
}

func run(addr, genesis, recordPath string) error {
	doc, err := types.GenesisDocFromFile(genesis)
	if err != nil {
		return err
	}
	out, err := os.OpenFile(recordPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	app := &App{
		Application: kvstore.NewInMemoryApplication(),
		chainID:     doc.ChainID,
		pubKeys:     map[string]crypto.PubKey{},
		extHeight:   doc.ConsensusParams.ABCI.VoteExtensionsEnableHeight,
		out:         out,
	}
	if app.extHeight == 0 {
		// CometBFT v1.0 moved the height to consensus_params.feature.
		if app.extHeight, err = featureExtHeight(genesis); err != nil {
			return err
		}
	}
	for _, v := range doc.Validators {
		app.pubKeys[fmt.Sprintf("%X", v.PubKey.Address())] = v.PubKey
	}
	srv, err := server.NewServer(addr, "socket", app)
	if err != nil {
		return err
	}
	if err := srv.Start(); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "abciapp: serving chain %s (%d validators, vote extensions from height %d) on %s, recording to %s\n",
		doc.ChainID, len(app.pubKeys), app.extHeight, addr, recordPath)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	<-sigs
	return srv.Stop()
}

// featureExtHeight reads consensus_params.feature.vote_extensions_enable_height,
// where a CometBFT v1.0 genesis keeps it (0 when absent).
func featureExtHeight(path string) (int64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	var g struct {
		ConsensusParams struct {
			Feature struct {
				VoteExtensionsEnableHeight json.Number `json:"vote_extensions_enable_height"`
			} `json:"feature"`
		} `json:"consensus_params"`
	}
	if err := json.Unmarshal(data, &g); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if g.ConsensusParams.Feature.VoteExtensionsEnableHeight == "" {
		return 0, nil
	}
	return g.ConsensusParams.Feature.VoteExtensionsEnableHeight.Int64()
}
