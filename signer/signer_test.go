package signer_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"
	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/signer"
)

// fakeReserver applies reservations to a local FSM, as a one-node cluster
// would, and can be told to fail.
type fakeReserver struct {
	mu    sync.Mutex
	state *fsm.FSM
	fail  error
	calls int
	delay time.Duration
}

func (f *fakeReserver) Reserve(ctx context.Context, chainID string, hrs fsm.HRS, sb []byte) (fsm.Decision, error) {
	f.mu.Lock()
	f.calls++
	fail, delay := f.fail, f.delay
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return fsm.Decision{}, ctx.Err()
		}
	}
	if fail != nil {
		return fsm.Decision{}, fail
	}
	cur, _ := f.state.Watermark(chainID)
	d := fsm.Decide(cur, hrs, sb)
	if d.Outcome == fsm.Allow {
		data, _ := fsm.EncodeReserve(fsm.Reserve{ChainID: chainID, HRS: hrs, SignBytes: sb, NeedState: true})
		return f.state.Apply(applyLog(data)).(fsm.Decision), nil
	}
	return d, nil
}

// countingKey counts signatures so tests can prove nothing was signed.
type countingKey struct {
	keys.Signer
	mu    sync.Mutex
	signs int
}

func (k *countingKey) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	k.mu.Lock()
	k.signs++
	k.mu.Unlock()
	return k.Signer.Sign(ctx, msg)
}

const chainID = "unit-chain"

// freshFSM holds the empty watermark for each chain, as a cluster started
// with --allow-fresh-state does.
func freshFSM(t *testing.T, chains ...string) *fsm.FSM {
	t.Helper()
	f := fsm.New()
	for _, c := range chains {
		data, err := fsm.Encode(fsm.CmdImport, fsm.Import{ChainID: c})
		if err != nil {
			t.Fatal(err)
		}
		f.Apply(&raft.Log{Type: raft.LogCommand, Data: data})
	}
	return f
}

func newUnit(t *testing.T) (*signer.Signer, *fakeReserver, *countingKey, *bytes.Buffer) {
	t.Helper()
	f := freshFSM(t, chainID)
	r := &fakeReserver{state: f}
	k := &countingKey{Signer: file.New(ed25519.GenPrivKey())}
	var logs bytes.Buffer
	s, err := signer.New(signer.Config{
		NodeID: "n1", Reserver: r, State: f,
		Keys:        map[string]keys.Signer{chainID: k},
		SignTimeout: 500 * time.Millisecond,
		Logger:      slog.New(slog.NewJSONHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, r, k, &logs
}

func bid(b byte) cmtproto.BlockID {
	h := bytes.Repeat([]byte{b}, 32)
	return cmtproto.BlockID{Hash: h, PartSetHeader: cmtproto.PartSetHeader{Total: 1, Hash: h}}
}

func voteReq(chain string, v *cmtproto.Vote) privvalproto.Message {
	return privvalproto.Message{Sum: &privvalproto.Message_SignVoteRequest{
		SignVoteRequest: &privvalproto.SignVoteRequest{Vote: v, ChainId: chain}}}
}

func propReq(chain string, p *cmtproto.Proposal) privvalproto.Message {
	return privvalproto.Message{Sum: &privvalproto.Message_SignProposalRequest{
		SignProposalRequest: &privvalproto.SignProposalRequest{Proposal: p, ChainId: chain}}}
}

func signedVote(t *testing.T, m privvalproto.Message) (cmtproto.Vote, *privvalproto.RemoteSignerError) {
	t.Helper()
	r, ok := m.Sum.(*privvalproto.Message_SignedVoteResponse)
	if !ok {
		t.Fatalf("response is %T, want SignedVoteResponse", m.Sum)
	}
	return r.SignedVoteResponse.Vote, r.SignedVoteResponse.Error
}

var ts = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func TestPrecommitCarriesVerifiedExtensionSignature(t *testing.T) {
	s, _, k, logs := newUnit(t)
	v := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 5, BlockID: bid(1), Timestamp: ts, Extension: []byte("ext")}
	got, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, v)))
	if rerr != nil {
		t.Fatalf("refused: %s", rerr.Description)
	}
	pub := k.PubKey()
	if !pub.VerifySignature(types.VoteSignBytes(chainID, &got), got.Signature) {
		t.Fatal("vote signature does not verify")
	}
	if !pub.VerifySignature(types.VoteExtensionSignBytes(chainID, &got), got.ExtensionSignature) {
		t.Fatal("extension signature missing or invalid on a non-nil precommit")
	}
	if !strings.Contains(logs.String(), `"msg":"signed"`) || !strings.Contains(logs.String(), `"sign_bytes_sha256"`) {
		t.Fatalf("no audit line for the signature: %s", logs.String())
	}
}

func TestNilPrecommitAndPrevoteHaveNoExtensionSignature(t *testing.T) {
	s, _, _, _ := newUnit(t)
	for _, v := range []*cmtproto.Vote{
		{Type: cmtproto.PrevoteType, Height: 5, BlockID: bid(1), Timestamp: ts},
		{Type: cmtproto.PrecommitType, Height: 5, Timestamp: ts},
	} {
		got, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, v)))
		if rerr != nil {
			t.Fatalf("refused: %s", rerr.Description)
		}
		if len(got.ExtensionSignature) != 0 {
			t.Fatalf("%v carries an extension signature", v.Type)
		}
	}
	// An extension on a prevote is invalid: refused, nothing reserved.
	_, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID,
		&cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 6, BlockID: bid(1), Timestamp: ts, Extension: []byte("x")})))
	if rerr == nil || rerr.Code != signer.CodeInvalid {
		t.Fatalf("extension on a prevote: got %v", rerr)
	}
}

func TestSameHRSRules(t *testing.T) {
	s, _, k, _ := newUnit(t)
	ctx := context.Background()
	v1 := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 9, Round: 1, BlockID: bid(1), Timestamp: ts}
	first, rerr := signedVote(t, s.Handle(ctx, chainID, voteReq(chainID, v1)))
	if rerr != nil {
		t.Fatal(rerr.Description)
	}
	// Same vote, later timestamp: the stored timestamp and signature come back.
	v2 := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 9, Round: 1, BlockID: bid(1), Timestamp: ts.Add(3 * time.Second)}
	again, rerr := signedVote(t, s.Handle(ctx, chainID, voteReq(chainID, v2)))
	if rerr != nil {
		t.Fatal(rerr.Description)
	}
	if !again.Timestamp.Equal(ts) || !bytes.Equal(again.Signature, first.Signature) {
		t.Fatalf("timestamp-only retry: got ts %v, want the stored %v and the same signature", again.Timestamp, ts)
	}
	// Other block at the same HRS: refused, the connection-level response
	// is still a well-formed SignedVoteResponse.
	signs := k.signs
	_, rerr = signedVote(t, s.Handle(ctx, chainID, voteReq(chainID,
		&cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 9, Round: 1, BlockID: bid(2), Timestamp: ts})))
	if rerr == nil || rerr.Code != signer.CodeRefused || !strings.Contains(rerr.Description, "conflict") {
		t.Fatalf("conflicting vote: got %v", rerr)
	}
	// A regression is refused too.
	_, rerr = signedVote(t, s.Handle(ctx, chainID, voteReq(chainID,
		&cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 8, BlockID: bid(1), Timestamp: ts})))
	if rerr == nil || !strings.Contains(rerr.Description, "regression") {
		t.Fatalf("regression: got %v", rerr)
	}
	if k.signs != signs {
		t.Fatal("the key signed for a refused request")
	}
}

func TestNothingSignedWithoutCommittedReservation(t *testing.T) {
	s, r, k, _ := newUnit(t)
	r.fail = errors.New("cluster: reserve: not the leader")
	_, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID,
		&cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, BlockID: bid(1), Timestamp: ts})))
	if rerr == nil || rerr.Code != signer.CodeUnavailable {
		t.Fatalf("got %v, want an unavailable error", rerr)
	}
	if k.signs != 0 {
		t.Fatal("signed although the reservation failed")
	}
	// A reservation that hangs is cut off by the sign timeout, well before
	// the validator's 5 s.
	r.fail, r.delay = nil, 10*time.Second
	start := time.Now()
	_, rerr = signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID,
		&cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, BlockID: bid(1), Timestamp: ts})))
	if rerr == nil || time.Since(start) > 3*time.Second || k.signs != 0 {
		t.Fatalf("hung reservation: err %v after %s, %d signatures", rerr, time.Since(start), k.signs)
	}
}

func TestBadInputIsRefusedWithoutReserving(t *testing.T) {
	s, r, k, _ := newUnit(t)
	ctx := context.Background()
	cases := map[string]privvalproto.Message{
		"wrong chain":   voteReq("other-chain", &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, Timestamp: ts}),
		"nil vote":      voteReq(chainID, nil),
		"bad type":      voteReq(chainID, &cmtproto.Vote{Type: 77, Height: 1, Timestamp: ts}),
		"zero height":   voteReq(chainID, &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 0, Timestamp: ts}),
		"neg round":     voteReq(chainID, &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, Round: -1, Timestamp: ts}),
		"nil proposal":  propReq(chainID, nil),
		"proposal type": propReq(chainID, &cmtproto.Proposal{Type: cmtproto.PrevoteType, Height: 1, Timestamp: ts}),
	}
	for name, req := range cases {
		resp := s.Handle(ctx, chainID, req)
		var rerr *privvalproto.RemoteSignerError
		switch m := resp.Sum.(type) {
		case *privvalproto.Message_SignedVoteResponse:
			rerr = m.SignedVoteResponse.Error
		case *privvalproto.Message_SignedProposalResponse:
			rerr = m.SignedProposalResponse.Error
		default:
			t.Fatalf("%s: response %T", name, resp.Sum)
		}
		if rerr == nil || rerr.Description == "" {
			t.Fatalf("%s: not refused", name)
		}
	}
	if r.calls != 0 || k.signs != 0 {
		t.Fatalf("bad input reached the cluster (%d reserves) or the key (%d signs)", r.calls, k.signs)
	}
	// PubKey for another chain is refused; Ping is answered.
	other := s.Handle(ctx, chainID, privvalproto.Message{Sum: &privvalproto.Message_PubKeyRequest{
		PubKeyRequest: &privvalproto.PubKeyRequest{ChainId: "other"}}})
	if other.GetPubKeyResponse().GetError() == nil {
		t.Fatal("pubkey for another chain was answered")
	}
	ping := s.Handle(ctx, chainID, privvalproto.Message{Sum: &privvalproto.Message_PingRequest{}})
	if ping.GetPingResponse() == nil {
		t.Fatal("ping not answered")
	}
	if s.Handle(ctx, chainID, privvalproto.Message{}).Sum != nil {
		t.Fatal("an empty message got an answer")
	}
}

func TestProposalSignedAndPubKey(t *testing.T) {
	s, _, k, _ := newUnit(t)
	ctx := context.Background()
	p := &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: 3, PolRound: -1, BlockID: bid(4), Timestamp: ts}
	msg := s.Handle(ctx, chainID, propReq(chainID, p))
	resp := msg.GetSignedProposalResponse()
	if resp.Error != nil {
		t.Fatal(resp.Error.Description)
	}
	if !k.PubKey().VerifySignature(types.ProposalSignBytes(chainID, &resp.Proposal), resp.Proposal.Signature) {
		t.Fatal("proposal signature does not verify")
	}
	pkMsg := s.Handle(ctx, chainID, privvalproto.Message{Sum: &privvalproto.Message_PubKeyRequest{
		PubKeyRequest: &privvalproto.PubKeyRequest{ChainId: chainID}}})
	pk := pkMsg.GetPubKeyResponse()
	if pk.Error != nil || !bytes.Equal(pk.PubKey.GetEd25519(), k.PubKey().Bytes()) {
		t.Fatalf("pubkey: %v", pk)
	}
}

// rendezvousReserver lets each Reserve through only once both chains'
// reservations are in flight at the same time: serialised chains would
// never meet, and time out.
type rendezvousReserver struct {
	*fakeReserver
	arrived chan struct{}
}

func (r *rendezvousReserver) Reserve(ctx context.Context, chainID string, hrs fsm.HRS, sb []byte) (fsm.Decision, error) {
	r.arrived <- struct{}{}
	deadline := time.After(2 * time.Second)
	for len(r.arrived) < 2 {
		select {
		case <-deadline:
			return fsm.Decision{}, errors.New("the other chain's reservation never ran concurrently")
		case <-time.After(time.Millisecond):
		}
	}
	return r.fakeReserver.Reserve(ctx, chainID, hrs, sb)
}

func TestChainsSignConcurrently(t *testing.T) {
	f := freshFSM(t, "a", "b")
	r := &rendezvousReserver{fakeReserver: &fakeReserver{state: f}, arrived: make(chan struct{}, 2)}
	key := file.New(ed25519.GenPrivKey())
	s, _ := signer.New(signer.Config{Reserver: r, State: f, SignTimeout: 3 * time.Second,
		Keys:   map[string]keys.Signer{"a": key, "b": key},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	var wg sync.WaitGroup
	errs := make(chan *privvalproto.RemoteSignerError, 2)
	for _, ch := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, rerr := signedVote(t, s.Handle(context.Background(), ch,
				voteReq(ch, &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, Timestamp: ts})))
			errs <- rerr
		}()
	}
	wg.Wait()
	close(errs)
	for rerr := range errs {
		if rerr != nil {
			t.Fatalf("different chains did not proceed concurrently: %s", rerr.Description)
		}
	}
}

func applyLog(data []byte) *raft.Log { return &raft.Log{Type: raft.LogCommand, Data: data} }

// TestMalformedBlockIDIsRefusedNotPanicking: CometBFT's sign-bytes helpers
// panic on a malformed block id; a validator (or anyone on its port) must
// not be able to crash the leader with one.
func TestMalformedBlockIDIsRefusedNotPanicking(t *testing.T) {
	s, r, k, _ := newUnit(t)
	badVote := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 1, Timestamp: ts,
		BlockID: cmtproto.BlockID{Hash: []byte{1, 2, 3}}}
	_, rerr := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, badVote)))
	if rerr == nil || rerr.Code != signer.CodeInvalid {
		t.Fatalf("malformed vote block id: %v", rerr)
	}
	for _, p := range []*cmtproto.Proposal{
		{Type: cmtproto.ProposalType, Height: 1, PolRound: -1, Timestamp: ts, BlockID: cmtproto.BlockID{Hash: []byte{1}}},
		{Type: cmtproto.ProposalType, Height: 1, PolRound: -1, Timestamp: ts},                           // nil block
		{Type: cmtproto.ProposalType, Height: 1, Round: 1, PolRound: 3, Timestamp: ts, BlockID: bid(1)}, // POL after round
	} {
		msg := s.Handle(context.Background(), chainID, propReq(chainID, p))
		if e := msg.GetSignedProposalResponse().GetError(); e == nil || e.Code != signer.CodeInvalid {
			t.Fatalf("malformed proposal %+v: %v", p, e)
		}
	}
	if r.calls != 0 || k.signs != 0 {
		t.Fatal("a malformed request reached the cluster or the key")
	}
}

type failingReserver struct{ err error }

func (r failingReserver) Reserve(context.Context, string, fsm.HRS, []byte) (fsm.Decision, error) {
	return fsm.Decision{}, r.err
}

// TestRetryableFailureDropsTheConnection: a request whose reservation
// failed because this node stopped leading, or because it did not commit
// within apply_timeout, gets no answer (the transport then drops the
// connection and CometBFT retries, with the new leader or once the quorum
// answers), and nothing is signed. An error answer would be final:
// CometBFT never retries a RemoteSignerError, and a lost precommit halts a
// chain whose other validators cannot outvote it.
func TestRetryableFailureDropsTheConnection(t *testing.T) {
	for _, fail := range []error{
		fmt.Errorf("cluster: reserve: %w: leadership lost while committing", cluster.ErrNotLeader),
		fmt.Errorf("cluster: reserve: %w within 2s (is a quorum reachable?)", cluster.ErrNotCommitted),
	} {
		f := freshFSM(t, chainID)
		k := &countingKey{Signer: file.New(ed25519.GenPrivKey())}
		s, err := signer.New(signer.Config{Reserver: failingReserver{fail}, State: f,
			Keys: map[string]keys.Signer{chainID: k}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			t.Fatal(err)
		}
		resp := s.Handle(context.Background(), chainID, voteReq(chainID, &cmtproto.Vote{
			Type: cmtproto.PrecommitType, Height: 5, Round: 0, BlockID: bid(1), Timestamp: time.Now(),
			ValidatorAddress: k.PubKey().Address(),
		}))
		if resp.Sum != nil {
			t.Fatalf("%v: answered %v; want no answer so the connection is dropped", fail, resp.Sum)
		}
		if k.signs != 0 {
			t.Fatalf("%v: signed without a reservation", fail)
		}
	}
}
