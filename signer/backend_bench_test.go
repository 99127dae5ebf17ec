package signer_test

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	"github.com/cometbft/cometbft/crypto/secp256k1"
	"github.com/cometbft/cometbft/crypto/secp256k1eth"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	cmttypes "github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/awskms/kmstest"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
	"github.com/kms-ha/kms-ha/signer"
)

// benchBackend is one key backend under benchmark.
type benchBackend struct {
	name string
	key  keys.Signer
}

// openBenchBackends opens one Ed25519 key per backend: a file key, a key
// generated inside SoftHSM2 and used through keys/pkcs11, and a key of the
// local AWS KMS endpoint (kmstest) used through keys/awskms and the real
// AWS SDK (SigV4, HTTP on loopback).
func openBenchBackends(b *testing.B) []benchBackend {
	b.Helper()
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	out := []benchBackend{{name: "file", key: file.New(ed25519.GenPrivKey())}}

	const label, pin = "kms-ha-bench", "bench-pin-1234"
	module, _ := pkcs11test.NewToken(b, label, pin)
	pkcs11test.GenerateEd25519(b, module, label, pin, "bench", nil)
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Module: module, TokenLabel: label, KeyLabel: "bench", Pin: pin, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = hsm.Close() })
	out = append(out, benchBackend{name: "pkcs11-softhsm", key: hsm})

	// Static credentials and a region from the environment, every other
	// AWS configuration source shut, so nothing can leave for a real AWS
	// endpoint (as in keys/awskms's own tests).
	kmstest.IsolateEnv(b)
	srv := kmstest.New(b)
	id, _ := srv.AddEd25519Key("alias/bench")
	kms, err := awskms.Open(ctx, awskms.Config{KeyID: id, Endpoint: srv.URL, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = kms.Close() })
	out = append(out, benchBackend{name: "awskms-local", key: kms})
	return append(out, openKeyTypeBackends(b, module, label, pin, srv)...)
}

// openKeyTypeBackends adds the other consensus key types: each on the file
// backend, secp256k1 on SoftHSM2 and on the local KMS, ML-DSA-65 on the
// local KMS. The non-deterministic ones (ECDSA on a token or KMS, ML-DSA
// on KMS) also pay the second Raft commit that records their signature.
func openKeyTypeBackends(b *testing.B, module, label, pin string, srv *kmstest.Server) []benchBackend {
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	ml, err := mldsa65.GenPrivKey()
	if err != nil {
		b.Fatal(err)
	}
	out := []benchBackend{
		{name: "file-secp256k1", key: file.New(secp256k1.GenPrivKey())},
		{name: "file-secp256k1eth", key: file.New(secp256k1eth.GenPrivKey())},
		{name: "file-mldsa65", key: file.New(ml)},
	}
	pkcs11test.GenerateSecp256k1Consensus(b, module, label, pin, "bench-secp", nil)
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Module: module, TokenLabel: label, KeyLabel: "bench-secp", Pin: pin,
		Algorithm: keys.Secp256k1, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = hsm.Close() })
	out = append(out, benchBackend{name: "pkcs11-softhsm-secp256k1", key: hsm})
	secpID, _ := srv.AddSecp256k1ConsensusKey("alias/bench-secp")
	mlID, _ := srv.AddMLDSA65Key("alias/bench-mldsa")
	for _, k := range []struct{ name, id, algo string }{
		{"awskms-local-secp256k1", secpID, keys.Secp256k1}, {"awskms-local-mldsa65", mlID, keys.MLDSA65},
	} {
		kk, err := awskms.Open(ctx, awskms.Config{KeyID: k.id, Endpoint: srv.URL, Algorithm: k.algo, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = kk.Close() })
		out = append(out, benchBackend{name: k.name, key: kk})
	}
	return out
}

// reserveTimes records the Raft commit (Reserve) of every request of the
// full sign path, per chain.
type reserveTimes struct {
	mu sync.Mutex
	d  map[string][]time.Duration
}

func (r *reserveTimes) ObserveSign(string, string, time.Duration) {}
func (r *reserveTimes) ObserveReserve(chain string, d time.Duration) {
	r.mu.Lock()
	r.d[chain] = append(r.d[chain], d)
	r.mu.Unlock()
}
func (r *reserveTimes) ObserveKeySign(string, string, time.Duration) {}
func (r *reserveTimes) Refused(string, string)                       {}
func (r *reserveTimes) Signed(string, string, int64, int32)          {}
func (r *reserveTimes) Missed(string, string, int64)                 {}

func (r *reserveTimes) take(chain string) []time.Duration {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.d[chain]
	r.d[chain] = nil
	return d
}

// percentiles sorts lat and returns its p50 and p99.
func percentiles(lat []time.Duration) (p50, p99 time.Duration) {
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100]
}

func reportLatency(b *testing.B, prefix string, lat []time.Duration) time.Duration {
	p50, p99 := percentiles(lat)
	b.ReportMetric(float64(p50.Microseconds()), prefix+"p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), prefix+"p99-µs")
	return p50
}

// BenchmarkBackendSignLatency measures, for each key backend, the latency
// of one signature alone (key.Sign over a prevote's sign bytes), and of one
// prevote through the full sign path of the leader of a real 3-node Raft
// cluster (loopback TCP, bolt stores with fsync): validation, the Reserve
// committed by a quorum and applied, then key.Sign. The difference is what
// high availability adds to each backend; the reserve-* metrics are the
// Raft commit measured inside the full path. Run it with a fixed count,
// e.g. -benchtime 1000x, and compare the p50/p99 metrics (ns/op is the
// mean).
func BenchmarkBackendSignLatency(b *testing.B) {
	ctx := context.Background()
	backends := openBenchBackends(b)
	chains := make([]string, len(backends))
	keyByChain := map[string]keys.Signer{}
	for i, be := range backends {
		chains[i] = "bench-" + be.name
		keyByChain[chains[i]] = be.key
	}
	leader, log, stop := benchRaft(b, 3, chains...)
	defer stop()
	obs := &reserveTimes{d: map[string][]time.Duration{}}
	s, err := signer.New(signer.Config{Reserver: leader, Recorder: leader, State: leader.FSM(), Logger: log, Keys: keyByChain, Observer: obs})
	if err != nil {
		b.Fatal(err)
	}
	for i, be := range backends {
		chain := chains[i]
		// Heights go on across the runs the benchmark framework makes of
		// each sub-benchmark: every prevote is a new one the FSM allows.
		height := int64(0)
		prevote := func() *cmtproto.Vote {
			height++
			return &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: height, BlockID: bid(1), Timestamp: ts,
				ValidatorAddress: be.key.PubKey().Address(), ValidatorIndex: 0}
		}
		var keyP50 time.Duration
		b.Run("backend="+be.name, func(b *testing.B) {
			b.Run("path=key", func(b *testing.B) {
				msg := cmttypes.VoteSignBytes(chain, prevote())
				lat := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for range b.N {
					start := time.Now()
					if _, err := be.key.Sign(ctx, msg); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, time.Since(start))
				}
				b.StopTimer()
				keyP50 = reportLatency(b, "", lat)
			})
			b.Run("path=raft3", func(b *testing.B) {
				obs.take(chain)
				lat := make([]time.Duration, 0, b.N)
				b.ResetTimer()
				for range b.N {
					req := voteReq(chain, prevote())
					start := time.Now()
					resp := s.Handle(ctx, chain, req)
					lat = append(lat, time.Since(start))
					sv, ok := resp.Sum.(*privvalproto.Message_SignedVoteResponse)
					if !ok {
						// An empty answer: the leader lost leadership (the
						// machine stalled past an election timeout).
						b.Fatalf("no answer at height %d: the connection would be dropped (leadership lost?)", height)
					}
					r := sv.SignedVoteResponse
					if r.Error != nil {
						b.Fatal(r.Error.Description)
					}
					if len(r.Vote.Signature) == 0 {
						b.Fatal("no signature")
					}
				}
				b.StopTimer()
				p50 := reportLatency(b, "", lat)
				if res := obs.take(chain); len(res) > 0 {
					reportLatency(b, "reserve-", res)
				}
				if keyP50 > 0 {
					b.ReportMetric(float64((p50 - keyP50).Microseconds()), "added-p50-µs")
				}
			})
		})
	}
}
