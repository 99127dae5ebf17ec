// Package signer answers CometBFT privval requests: it validates each
// request, reserves its height/round/step through the cluster, and signs
// with the chain's key only after the reservation was committed and allowed.
package signer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	cryptoenc "github.com/cometbft/cometbft/crypto/encoding"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/internal/voteext"
	"github.com/kms-ha/kms-ha/keys"
)

// Reserver commits a reservation through the cluster (cluster.Node).
type Reserver interface {
	Reserve(ctx context.Context, chainID string, hrs fsm.HRS, signBytes []byte) (fsm.Decision, error)
}

// Recorder commits the signature released at a watermark (cluster.Node),
// for keys that are not deterministic.
type Recorder interface {
	RecordSignature(ctx context.Context, r fsm.RecordSignature) (fsm.RecordResult, error)
}

// StateReader reads the local replica's watermarks (fsm.FSM).
type StateReader interface {
	Watermark(chainID string) (fsm.Watermark, bool)
}

// Release describes a signature handed to a validator, for audits and tests.
type Release struct {
	NodeID    string
	ChainID   string
	HRS       fsm.HRS
	SignBytes []byte
	Signature []byte
	Outcome   fsm.Outcome
}

// Config builds a Signer.
type Config struct {
	NodeID   string
	Reserver Reserver
	// Recorder is required when a key is not deterministic.
	Recorder Recorder
	State    StateReader
	// Keys maps each chain id to its consensus key.
	Keys map[string]keys.Signer
	// SignTimeout bounds one request end to end; the validator gives up
	// after 5 s, so answer (possibly with an error) before that.
	SignTimeout time.Duration
	Logger      *slog.Logger
	// OnRelease, if set, sees every signature before it is sent.
	OnRelease func(Release)
	// Observer, if set, receives timings and outcomes for metrics.
	Observer Observer
	// Backends names each chain's key backend for Observer.
	Backends map[string]string
	// ChainFields names, per chain id, the kms.yaml fields that spell it
	// (config.Config.ChainFields), for the message about a validator whose
	// genesis names another chain.
	ChainFields map[string]string
}

// Observer is what the signer reports for metrics. Implementations must
// be cheap: they run on the sign path.
type Observer interface {
	ObserveSign(chain, step string, d time.Duration)
	ObserveReserve(chain string, d time.Duration)
	ObserveKeySign(chain, backend string, d time.Duration)
	Refused(chain, reason string)
	// Signed reports a signature returned at step ("proposal", "prevote"
	// or "precommit"), height and round.
	Signed(chain, step string, height int64, round int32)
	// Missed reports n prevotes or precommits (step) that the validator
	// never asked for: heights it skipped since the chain's watermark.
	Missed(chain, step string, n int64)
}

type noObserver struct{}

func (noObserver) ObserveSign(string, string, time.Duration)    {}
func (noObserver) ObserveReserve(string, time.Duration)         {}
func (noObserver) ObserveKeySign(string, string, time.Duration) {}
func (noObserver) Refused(string, string)                       {}
func (noObserver) Signed(string, string, int64, int32)          {}
func (noObserver) Missed(string, string, int64)                 {}

// Signer serves every configured chain. Requests of one chain are
// serialised; different chains proceed concurrently.
type Signer struct {
	cfg    Config
	chains map[string]*chain
	log    *slog.Logger
}

type chain struct {
	id  string
	key keys.Signer
	mu  sync.Mutex
	// last is the step and time of the chain's latest signature, packed
	// for lock-free reads by Quiet.
	lastStep atomic.Int32
	lastAt   atomic.Int64
}

// Quiet reports whether every chain is between heights: its latest
// signature is a precommit (the validator waits timeout_commit before it
// asks again) or it signed nothing for idle. A leader that hands over in
// such a moment gives the next leader the whole commit wait to connect.
func (s *Signer) Quiet(idle time.Duration) bool {
	now := time.Now().UnixNano()
	for _, c := range s.chains {
		if now-c.lastAt.Load() < idle.Nanoseconds() && int8(c.lastStep.Load()) != fsm.StepPrecommit {
			return false
		}
	}
	return true
}

// New validates cfg and returns a Signer.
func New(cfg Config) (*Signer, error) {
	if cfg.Reserver == nil || cfg.State == nil {
		return nil, errors.New("signer: a reserver and a state reader are required")
	}
	if cfg.SignTimeout == 0 {
		cfg.SignTimeout = 3 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Observer == nil {
		cfg.Observer = noObserver{}
	}
	s := &Signer{cfg: cfg, chains: map[string]*chain{}, log: cfg.Logger}
	for id, k := range cfg.Keys {
		if k == nil {
			return nil, fmt.Errorf("signer: chain %s has no key", id)
		}
		if !k.Deterministic() && cfg.Recorder == nil {
			return nil, fmt.Errorf("signer: the key of chain %s does not sign deterministically, and no recorder keeps its released signatures", id)
		}
		s.chains[id] = &chain{id: id, key: k}
	}
	return s, nil
}

// Error codes in RemoteSignerError, so a node operator can tell a
// double-sign refusal from an outage.
const (
	CodeRefused     = 1
	CodeInvalid     = 2
	CodeUnavailable = 3
	CodeKey         = 4
)

type requestError struct {
	code   int32
	reason string
	err    error
}

func (e *requestError) Error() string { return e.err.Error() }

func (e *requestError) Unwrap() error { return e.err }

func invalid(format string, args ...any) error {
	return &requestError{code: CodeInvalid, reason: fsm.ReasonInvalid, err: fmt.Errorf(format, args...)}
}

// Handle answers one privval request arriving on a connection configured
// for connChainID. It never panics on bad input; every error is encoded in
// the response so the connection stays up.
func (s *Signer) Handle(ctx context.Context, connChainID string, req privvalproto.Message) (resp privvalproto.Message) {
	defer func() {
		// A request that makes a library panic must not take the node down
		// (the next leader would meet the same request). An empty answer
		// makes the transport drop the connection; nothing was signed, as
		// signatures are only placed into the reply at the very end.
		if p := recover(); p != nil {
			s.log.Error("panic while handling a privval request; dropping the connection",
				"chain", connChainID, "type", fmt.Sprintf("%T", req.Sum), "panic", fmt.Sprint(p))
			resp = privvalproto.Message{}
		}
	}()
	switch r := req.Sum.(type) {
	case *privvalproto.Message_PingRequest:
		return wrap(&privvalproto.PingResponse{})

	case *privvalproto.Message_PubKeyRequest:
		c, err := s.chainFor(connChainID, r.PubKeyRequest.GetChainId())
		if err == nil {
			pk, perr := cryptoenc.PubKeyToProto(c.key.PubKey())
			if perr == nil {
				return wrap(&privvalproto.PubKeyResponse{PubKey: pk})
			}
			err = &requestError{code: CodeKey, reason: "key", err: fmt.Errorf("encode public key: %w", perr)}
		}
		return wrap(&privvalproto.PubKeyResponse{Error: s.remoteError(connChainID, err)})

	case *privvalproto.Message_SignVoteRequest:
		vote := r.SignVoteRequest.GetVote()
		err := s.signVote(ctx, connChainID, r.SignVoteRequest.GetChainId(), vote)
		if s.dropForRetry(connChainID, err) {
			return privvalproto.Message{}
		}
		if err != nil {
			return wrap(&privvalproto.SignedVoteResponse{Error: s.remoteError(connChainID, err)})
		}
		return wrap(&privvalproto.SignedVoteResponse{Vote: *vote})

	case *privvalproto.Message_SignProposalRequest:
		p := r.SignProposalRequest.GetProposal()
		err := s.signProposal(ctx, connChainID, r.SignProposalRequest.GetChainId(), p)
		if s.dropForRetry(connChainID, err) {
			return privvalproto.Message{}
		}
		if err != nil {
			return wrap(&privvalproto.SignedProposalResponse{Error: s.remoteError(connChainID, err)})
		}
		return wrap(&privvalproto.SignedProposalResponse{Proposal: *p})
	}
	// Not a request a node sends: answer nothing the node could mistake
	// for a signature. The transport drops the connection on an empty reply.
	s.log.Warn("unexpected privval message", "chain", connChainID, "type", fmt.Sprintf("%T", req.Sum))
	return privvalproto.Message{}
}

// dropForRetry reports a request that failed for a reason the validator
// should retry: this node stopped leading while it waited for the commit,
// the reservation or the record of a signature did not commit in time (a
// paused leader, a quorum that answered too late, the request's deadline,
// a full raft queue, a shutdown: cluster.ErrNotCommitted), or the cluster
// holds no watermark for the chain yet. It is answered with
// nothing: the transport drops the connection, and CometBFT's signer
// client retries a connection error (it never retries a
// RemoteSignerError, and a lost vote can stall a chain whose other
// validators cannot outvote it). The retry reaches the new leader, or
// finds the state the operator imported meanwhile. Nothing was released;
// if a reservation commits after all, the retry signs the same bytes, and
// if a recorded signature does, the retry's reservation (ordered after it
// in the raft log) returns that signature rather than a second one.
// errKeyTimedOut: the key backend did not sign within the request's
// deadline (a slow HSM or KMS). Like an uncommitted reservation, it is a
// reason to drop the connection, not a signer error.
var errKeyTimedOut = errors.New("the key did not sign in time")

func (s *Signer) dropForRetry(chainID string, err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, cluster.ErrNotLeader) {
		s.log.Warn("leadership lost during a request: dropping the connection so the validator retries with the new leader",
			"chain", chainID, "err", err)
		s.cfg.Observer.Refused(chainID, "not_leader")
		return true
	}
	if errors.Is(err, cluster.ErrNotCommitted) {
		// Measured in the chaos run with kms-ha holding 40% of the power:
		// a precommit answered with this error was lost for good and the
		// chain halted, its other validators waiting for it forever.
		s.log.Warn("a raft write did not commit in time: dropping the connection so the validator retries",
			"chain", chainID, "err", err)
		s.cfg.Observer.Refused(chainID, "unavailable")
		return true
	}
	if errors.Is(err, errKeyTimedOut) {
		// Nothing was released: the key's answer, if it comes, is dropped.
		s.log.Warn("the key did not sign in time: dropping the connection so the validator retries",
			"chain", chainID, "err", err)
		s.cfg.Observer.Refused(chainID, "key")
		return true
	}
	var re *requestError
	if errors.As(err, &re) && re.reason == fsm.ReasonNoState {
		s.log.Warn("no watermark for the chain yet: dropping the connection so the validator retries "+
			"(it retries for about a minute, then gives up on this vote)", "chain", chainID, "err", err)
		s.cfg.Observer.Refused(chainID, fsm.ReasonNoState)
		return true
	}
	return false
}

func (s *Signer) chainFor(connChainID, reqChainID string) (*chain, error) {
	if reqChainID != connChainID {
		return nil, &requestError{code: CodeInvalid, reason: fsm.ReasonInvalid, err: &ChainMismatchError{
			Requested: reqChainID, Configured: connChainID, Fields: s.cfg.ChainFields[connChainID]}}
	}
	c, ok := s.chains[reqChainID]
	if !ok {
		return nil, invalid("no key configured for chain %q", reqChainID)
	}
	return c, nil
}

func voteStep(t cmtproto.SignedMsgType) (int8, bool) {
	switch t {
	case cmtproto.PrevoteType:
		return fsm.StepPrevote, true
	case cmtproto.PrecommitType:
		return fsm.StepPrecommit, true
	}
	return 0, false
}

func (s *Signer) signVote(ctx context.Context, connChainID, reqChainID string, vote *cmtproto.Vote) error {
	c, err := s.chainFor(connChainID, reqChainID)
	if err != nil {
		return err
	}
	if vote == nil {
		return invalid("sign vote request without a vote")
	}
	step, ok := voteStep(vote.Type)
	if !ok {
		return invalid("vote of unknown type %d", vote.Type)
	}
	hrs := fsm.HRS{Height: vote.Height, Round: vote.Round, Step: step}
	if vote.Height <= 0 || vote.Round < 0 {
		return invalid("vote at invalid position %s", hrs)
	}
	// CometBFT's sign-bytes helpers panic on a malformed BlockID.
	if _, err := types.BlockIDFromProto(&vote.BlockID); err != nil {
		return invalid("vote at %s has an invalid block id: %v", hrs, err)
	}
	nonNilPrecommit := vote.Type == cmtproto.PrecommitType && !types.ProtoBlockIDIsNil(&vote.BlockID)
	if !nonNilPrecommit && len(vote.Extension) > 0 {
		return invalid("vote extension on a %s; extensions are only allowed in non-nil precommits", fsm.StepName(step))
	}
	// A line without extensions, or a v1 node that asks, gets none signed:
	// an HSM does not pay for a second signature the chain never reads.
	withExt := nonNilPrecommit && !voteext.Skipped(ctx)
	signBytes := types.VoteSignBytes(c.id, vote)

	return s.reserveAndSign(ctx, c, hrs, signBytes, func(d fsm.Decision, sig []byte) error {
		if d.Outcome == fsm.AllowStored {
			vote.Timestamp = d.Timestamp
		}
		// Defence in depth: the bytes we signed must be the bytes of the
		// vote we return, or the node would hold a signature over
		// something else.
		if !bytes.Equal(types.VoteSignBytes(c.id, vote), d.SignBytes) {
			return &requestError{code: CodeRefused, reason: fsm.ReasonConflict,
				err: fmt.Errorf("stored sign bytes at %s do not match the vote", hrs)}
		}
		vote.Signature = sig
		if withExt {
			extSig, err := c.key.Sign(ctx, types.VoteExtensionSignBytes(c.id, vote))
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return fmt.Errorf("%w: sign vote extension: %w", errKeyTimedOut, err)
			}
			if err != nil {
				return &requestError{code: CodeKey, reason: "key", err: fmt.Errorf("sign vote extension: %w", err)}
			}
			vote.ExtensionSignature = extSig
		}
		return nil
	})
}

func (s *Signer) signProposal(ctx context.Context, connChainID, reqChainID string, p *cmtproto.Proposal) error {
	c, err := s.chainFor(connChainID, reqChainID)
	if err != nil {
		return err
	}
	if p == nil {
		return invalid("sign proposal request without a proposal")
	}
	hrs := fsm.HRS{Height: p.Height, Round: p.Round, Step: fsm.StepPropose}
	if p.Type != cmtproto.ProposalType || p.Height <= 0 || p.Round < 0 {
		return invalid("proposal of type %d at invalid position %s", p.Type, hrs)
	}
	if p.PolRound < -1 || p.PolRound >= p.Round && p.PolRound != -1 {
		return invalid("proposal at %s has an invalid POL round %d", hrs, p.PolRound)
	}
	if bid, err := types.BlockIDFromProto(&p.BlockID); err != nil || !bid.IsComplete() {
		return invalid("proposal at %s has an invalid block id", hrs)
	}
	signBytes := types.ProposalSignBytes(c.id, p)
	return s.reserveAndSign(ctx, c, hrs, signBytes, func(d fsm.Decision, sig []byte) error {
		if d.Outcome == fsm.AllowStored {
			p.Timestamp = d.Timestamp
		}
		if !bytes.Equal(types.ProposalSignBytes(c.id, p), d.SignBytes) {
			return &requestError{code: CodeRefused, reason: fsm.ReasonConflict,
				err: fmt.Errorf("stored sign bytes at %s do not match the proposal", hrs)}
		}
		p.Signature = sig
		return nil
	})
}

// reserveAndSign is the sign path: lock the chain, pre-check locally,
// commit the reservation, and sign only what the FSM allowed.
func (s *Signer) reserveAndSign(ctx context.Context, c *chain, hrs fsm.HRS, signBytes []byte,
	finish func(fsm.Decision, []byte) error,
) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.SignTimeout)
	defer cancel()
	start := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()

	d, prev, err := s.reserve(ctx, c, hrs, signBytes)
	if err != nil {
		return err
	}
	sig, err := s.signOnce(ctx, c, hrs, d)
	if err != nil {
		return err
	}
	if err := finish(d, sig); err != nil {
		return err
	}
	step := fsm.StepName(hrs.Step)
	prevotes, precommits := missedVotes(prev, hrs)
	s.cfg.Observer.Missed(c.id, fsm.StepName(fsm.StepPrevote), prevotes)
	s.cfg.Observer.Missed(c.id, fsm.StepName(fsm.StepPrecommit), precommits)
	s.cfg.Observer.ObserveSign(c.id, step, time.Since(start))
	s.cfg.Observer.Signed(c.id, step, hrs.Height, hrs.Round)
	c.lastStep.Store(int32(hrs.Step))
	c.lastAt.Store(time.Now().UnixNano())
	sum := sha256.Sum256(d.SignBytes)
	s.log.Info("signed", "chain", c.id,
		"height", hrs.Height, "round", hrs.Round, "step", hrs.Step,
		"outcome", d.Outcome.String(), "sign_bytes_sha256", hex.EncodeToString(sum[:]))
	if s.cfg.OnRelease != nil {
		s.cfg.OnRelease(Release{NodeID: s.cfg.NodeID, ChainID: c.id, HRS: hrs,
			SignBytes: d.SignBytes, Signature: sig, Outcome: d.Outcome})
	}
	return nil
}

// signOnce returns the one signature the cluster releases over the
// allowed bytes: the one already recorded at the watermark if there is
// one; else a new one, which for a key that is not deterministic is first
// recorded through raft, so that a later leader answers a repeated request
// with these signature bytes and never with a second, different signature.
func (s *Signer) signOnce(ctx context.Context, c *chain, hrs fsm.HRS, d fsm.Decision) ([]byte, error) {
	if len(d.Signature) > 0 {
		if !c.key.PubKey().VerifySignature(d.SignBytes, d.Signature) {
			return nil, &requestError{code: CodeKey, reason: "key", err: fmt.Errorf(
				"the signature recorded at %s does not verify against this node's key; refusing to sign again", hrs)}
		}
		return d.Signature, nil
	}
	keyStart := time.Now()
	sig, err := c.key.Sign(ctx, d.SignBytes)
	s.cfg.Observer.ObserveKeySign(c.id, s.cfg.Backends[c.id], time.Since(keyStart))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
			return nil, fmt.Errorf("%w: sign %s: %w", errKeyTimedOut, hrs, err)
		}
		return nil, &requestError{code: CodeKey, reason: "key", err: fmt.Errorf("sign %s: %w", hrs, err)}
	}
	if c.key.Deterministic() {
		return sig, nil
	}
	rec, err := s.cfg.Recorder.RecordSignature(ctx, fsm.RecordSignature{ChainID: c.id, HRS: hrs, SignBytes: d.SignBytes, Signature: sig})
	if err != nil {
		return nil, &requestError{code: CodeUnavailable, reason: "unavailable", err: fmt.Errorf("record the signature at %s: %w", hrs, err)}
	}
	if !rec.Recorded {
		return nil, &requestError{code: CodeRefused, reason: fsm.ReasonRegression, err: &fsm.RefusalError{Reason: fsm.ReasonRegression, Detail: rec.Detail}}
	}
	return rec.Signature, nil
}

// reserve pre-checks hrs against the local replica and commits the
// reservation. A chain with no watermark yet is held for most of the
// request's time in case the operator imports one meanwhile (then the
// request is signed as if nothing happened), and otherwise refused with
// ReasonNoState, which Handle answers by dropping the connection. It
// returns the allowed decision and the watermark before it.
func (s *Signer) reserve(ctx context.Context, c *chain, hrs fsm.HRS, signBytes []byte) (fsm.Decision, fsm.Watermark, error) {
	for held := false; ; held = true {
		// A chain with no local watermark is not refused here: this
		// replica may lag; the FSM refuses on every replica if the
		// cluster has none.
		cur, _ := s.cfg.State.Watermark(c.id)
		if d := fsm.Decide(cur, hrs, signBytes); d.Outcome == fsm.Refuse {
			return d, cur, &requestError{code: CodeRefused, reason: d.Reason, err: d.Err()}
		}
		reserveStart := time.Now()
		d, err := s.cfg.Reserver.Reserve(ctx, c.id, hrs, signBytes)
		s.cfg.Observer.ObserveReserve(c.id, time.Since(reserveStart))
		if err != nil {
			return d, cur, &requestError{code: CodeUnavailable, reason: "unavailable", err: err}
		}
		if d.Outcome != fsm.Refuse {
			return d, cur, nil
		}
		if d.Reason != fsm.ReasonNoState || held || !s.awaitState(ctx, c.id) {
			return d, cur, &requestError{code: CodeRefused, reason: d.Reason, err: d.Err()}
		}
	}
}

// awaitState waits until the local replica holds a watermark for chainID,
// leaving a third of the sign timeout to reserve and sign.
func (s *Signer) awaitState(ctx context.Context, chainID string) bool {
	dl, ok := ctx.Deadline()
	if !ok {
		dl = time.Now().Add(s.cfg.SignTimeout)
	}
	until := dl.Add(-s.cfg.SignTimeout / 3)
	for {
		if _, ok := s.cfg.State.Watermark(chainID); ok {
			return true
		}
		if time.Now().After(until) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// missedVotes counts the prevotes and precommits the validator skipped
// between the chain's watermark prev and a request at hrs: every height in
// between, and the rest of the watermark's own height. A chain that
// starts (no watermark, or the empty one) has missed nothing.
func missedVotes(prev fsm.Watermark, hrs fsm.HRS) (prevotes, precommits int64) {
	if prev.Height <= 0 || hrs.Height <= prev.Height {
		return 0, 0
	}
	gap := hrs.Height - prev.Height - 1
	prevotes, precommits = gap, gap
	if prev.Step < fsm.StepPrevote {
		prevotes++
	}
	if prev.Step < fsm.StepPrecommit {
		precommits++
	}
	return prevotes, precommits
}

func (s *Signer) remoteError(chainID string, err error) *privvalproto.RemoteSignerError {
	var re *requestError
	if !errors.As(err, &re) {
		re = &requestError{code: CodeInvalid, reason: fsm.ReasonInvalid, err: err}
	}
	var mismatch *ChainMismatchError
	if errors.As(err, &mismatch) {
		// Every request on this connection meets it, and CometBFT exits on
		// the first: the operator has to fix kms.yaml (or the validator).
		s.log.Error(mismatch.Hint(), "chain", chainID, "validator_chain_id", mismatch.Requested)
	} else {
		s.log.Warn("refused to sign", "chain", chainID, "reason", re.reason, "err", re.err)
	}
	s.cfg.Observer.Refused(chainID, re.reason)
	return &privvalproto.RemoteSignerError{Code: re.code, Description: "kms-ha: " + re.err.Error()}
}
