package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	cmtlog "github.com/cometbft/cometbft/libs/log"
	"github.com/cometbft/cometbft/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
)

// validator is the node side of one chain's privval connection, as a
// CometBFT node runs it: a SignerListenerEndpoint on loopback (the node's
// priv_validator_laddr) with a SecretConnection, and a SignerClient that
// asks the signer for a proposal at some heights and a prevote and a
// precommit at every height. Heights keep rising across windows, so every
// request is a new one the signer must commit before it answers.
type validator struct {
	chainID string
	addr    string // host:port the signer dials
	client  *privval.SignerClient
	height  int64
}

func newValidator(chainID string) (*validator, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen for the signer of %s: %w", chainID, err)
	}
	ep := privval.NewSignerListenerEndpoint(cmtlog.NewNopLogger(), privval.NewTCPListener(ln, ed25519.GenPrivKey()))
	cl, err := privval.NewSignerClient(ep, chainID)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("start the listener of %s: %w", chainID, err)
	}
	return &validator{chainID: chainID, addr: ln.Addr().String(), client: cl}, nil
}

// connect waits for the signer's connection and asks for the public key,
// as a starting node does.
func (v *validator) connect(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := v.client.WaitForConnection(time.Until(deadline))
		if err == nil {
			if _, err = v.client.GetPubKey(); err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("validator of %s: no signer answered on %s within %s: %w", v.chainID, v.addr, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (v *validator) close() { _ = v.client.Close() }

// sample is one request's outcome.
type sample struct {
	lat time.Duration
	err bool
	// refused: the signer answered with a RemoteSignerError (a refusal);
	// other errors are a dropped or timed-out connection.
	refused bool
}

// loadSpec is how each validator asks during a window.
type loadSpec struct {
	// rate is blocks per second per validator; 0 asks back to back.
	rate float64
	// proposalEvery: a proposal at heights divisible by it (this validator
	// is the proposer there); 1 is a one-validator chain.
	proposalEvery int64
}

// run plays heights until ctx ends and returns every request's sample.
func (v *validator) run(ctx context.Context, spec loadSpec) []sample {
	var out []sample
	var tick *time.Ticker
	if spec.rate > 0 {
		period := time.Duration(float64(time.Second) / spec.rate)
		// Validators of different chains do not tick in step: start each
		// at a random phase of its period.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(rand.N(period)):
		}
		tick = time.NewTicker(period)
		defer tick.Stop()
	}
	for ctx.Err() == nil {
		v.height++
		h := v.height
		if spec.proposalEvery > 0 && h%spec.proposalEvery == 0 {
			out = append(out, v.timed(func() error { return v.client.SignProposal(v.chainID, proposal(h)) }))
		}
		for _, t := range []cmtproto.SignedMsgType{cmtproto.PrevoteType, cmtproto.PrecommitType} {
			out = append(out, v.timed(func() error { return v.client.SignVote(v.chainID, vote(t, h)) }))
		}
		if tick != nil {
			select {
			case <-ctx.Done():
			case <-tick.C:
			}
		}
	}
	return out
}

func (v *validator) timed(fn func() error) sample {
	start := time.Now()
	err := fn()
	var rse *privval.RemoteSignerError
	return sample{lat: time.Since(start), err: err != nil, refused: errors.As(err, &rse)}
}

// blockID is a block id that differs per height, as real ones do.
func blockID(h int64) cmtproto.BlockID {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(h))
	hash := sha256.Sum256(b[:])
	part := sha256.Sum256(hash[:])
	return cmtproto.BlockID{Hash: hash[:], PartSetHeader: cmtproto.PartSetHeader{Total: 1, Hash: part[:]}}
}

var valAddr = make([]byte, 20)

func vote(t cmtproto.SignedMsgType, h int64) *cmtproto.Vote {
	return &cmtproto.Vote{Type: t, Height: h, Round: 0, BlockID: blockID(h), Timestamp: time.Now().UTC(),
		ValidatorAddress: valAddr, ValidatorIndex: 0}
}

func proposal(h int64) *cmtproto.Proposal {
	return &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: h, Round: 0, PolRound: -1,
		BlockID: blockID(h), Timestamp: time.Now().UTC()}
}

// runAll runs every validator for d and returns all samples.
func runAll(vals []*validator, spec loadSpec, d time.Duration) []sample {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var mu sync.Mutex
	var all []sample
	var wg sync.WaitGroup
	for _, v := range vals {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := v.run(ctx, spec)
			mu.Lock()
			all = append(all, s...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return all
}
