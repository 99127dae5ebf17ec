package signer_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"strings"
	"testing"
	"time"

	circl "github.com/cloudflare/circl/sign/mldsa/mldsa65"
	"github.com/cometbft/cometbft/crypto"
	"github.com/cometbft/cometbft/crypto/mldsa65"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/awskms"
	"github.com/kms-ha/kms-ha/keys/awskms/kmstest"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/keys/pkcs11"
	"github.com/kms-ha/kms-ha/keys/pkcs11/pkcs11test"
	"github.com/kms-ha/kms-ha/signer"
)

// hedgedKey is an ML-DSA-65 key signing in FIPS 204's hedged (randomized)
// mode, as an HSM or KMS may: every signature over the same bytes differs,
// and each verifies with CometBFT's own verifier.
type hedgedKey struct {
	sk  *circl.PrivateKey
	pub mldsa65.PubKey
}

func newHedgedKey(t testing.TB) *hedgedKey {
	t.Helper()
	pk, sk, err := circl.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := mldsa65.NewPubKeyFromBytes(pk.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return &hedgedKey{sk: sk, pub: pub}
}

func (k *hedgedKey) PubKey() crypto.PubKey { return k.pub }
func (k *hedgedKey) Sign(_ context.Context, msg []byte) ([]byte, error) {
	sig := make([]byte, circl.SignatureSize)
	return sig, circl.SignTo(k.sk, msg, nil, true, sig)
}
func (k *hedgedKey) Deterministic() bool { return false }
func (k *hedgedKey) Close() error        { return nil }

func waitLeader(t *testing.T, nodes []*cluster.Node) *cluster.Node {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, nd := range nodes {
			if nd.IsLeader() && nd.Raft().Barrier(time.Second).Error() == nil {
				return nd
			}
		}
	}
	t.Fatal("no leader")
	return nil
}

func leaderSigner(t *testing.T, leader *cluster.Node, k keys.Signer) *signer.Signer {
	t.Helper()
	s, err := signer.New(signer.Config{NodeID: leader.ID(), Reserver: leader, Recorder: leader, State: leader.FSM(),
		Keys: map[string]keys.Signer{chainID: k}, SignTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// nonDeterministicKeys are the keys whose signatures are not deterministic,
// on every backend that has them: a hedged ML-DSA-65 test key, an ECDSA
// key generated on SoftHSM2 (secp256k1eth), and ML-DSA-65 and secp256k1
// keys of the local AWS KMS endpoint through the real AWS SDK.
func nonDeterministicKeys(t *testing.T) map[string]keys.Signer {
	t.Helper()
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	const label, pin = "kms-ha-nondet", "nondet-pin-1234"
	module, _ := pkcs11test.NewToken(t, label, pin)
	pkcs11test.GenerateSecp256k1Consensus(t, module, label, pin, "v", nil)
	hsm, err := pkcs11.Open(ctx, pkcs11.Config{Module: module, TokenLabel: label, KeyLabel: "v", Pin: pin,
		Algorithm: keys.Secp256k1Eth, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hsm.Close() })
	kmstest.IsolateEnv(t)
	srv := kmstest.New(t)
	mlID, _ := srv.AddMLDSA65Key("alias/ml")
	secpID, _ := srv.AddSecp256k1ConsensusKey("alias/secp")
	out := map[string]keys.Signer{"hedged-mldsa65": newHedgedKey(t), "pkcs11-secp256k1eth": hsm}
	for name, c := range map[string]awskms.Config{
		"awskms-mldsa65":   {KeyID: mlID, Algorithm: keys.MLDSA65},
		"awskms-secp256k1": {KeyID: secpID, Algorithm: keys.Secp256k1},
	} {
		c.Endpoint, c.Logger = srv.URL, quiet
		k, err := awskms.Open(ctx, c)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k.Close() })
		out[name] = k
	}
	return out
}

// A key whose signatures are not deterministic signs a prevote; the leader
// dies; the new leader, asked again for the same vote and for the same vote
// with only a later timestamp (what a validator sends after a failover),
// answers with the identical signature bytes the first leader released:
// never a second signature for one vote. For every backend that has such
// keys.
func TestNonDeterministicKeyResignAfterFailover(t *testing.T) {
	for name, k := range nonDeterministicKeys(t) {
		t.Run(name, func(t *testing.T) {
			a, _ := k.Sign(context.Background(), []byte("m"))
			b, _ := k.Sign(context.Background(), []byte("m"))
			if bytes.Equal(a, b) || k.Deterministic() {
				t.Fatal("the test key must sign non-deterministically, and say so")
			}
			resignAfterFailover(t, k)
		})
	}
}

func resignAfterFailover(t *testing.T, k keys.Signer) {
	nodes, first, _, stop := startRaft(t, 3, chainID)
	defer stop()

	vote := func(at time.Time) *cmtproto.Vote {
		return &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 7, BlockID: bid(3), Timestamp: at}
	}
	got, rerr := signedVote(t, leaderSigner(t, first, k).Handle(context.Background(), chainID, voteReq(chainID, vote(ts))))
	if rerr != nil {
		t.Fatalf("first leader refused: %v", rerr)
	}
	released := got.Signature
	if !k.PubKey().VerifySignature(types.VoteSignBytes(chainID, &got), released) {
		t.Fatal("released signature does not verify")
	}

	if err := first.Shutdown(); err != nil {
		t.Fatal(err)
	}
	var rest []*cluster.Node
	for _, nd := range nodes {
		if nd != first {
			rest = append(rest, nd)
		}
	}
	second := waitLeader(t, rest)
	s2 := leaderSigner(t, second, k)
	for name, v := range map[string]*cmtproto.Vote{"same vote": vote(ts), "later timestamp": vote(ts.Add(time.Second))} {
		again, rerr := signedVote(t, s2.Handle(context.Background(), chainID, voteReq(chainID, v)))
		if rerr != nil {
			t.Fatalf("%s: new leader refused: %v", name, rerr)
		}
		if !bytes.Equal(again.Signature, released) || !again.Timestamp.Equal(ts) {
			t.Fatalf("%s: new leader answered another signature (or timestamp %v): a second signature for one vote", name, again.Timestamp)
		}
	}
	// The next position gets a fresh signature, recorded in turn.
	next := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 7, BlockID: bid(3), Timestamp: ts}
	pc, rerr := signedVote(t, s2.Handle(context.Background(), chainID, voteReq(chainID, next)))
	if rerr != nil || !k.PubKey().VerifySignature(types.VoteSignBytes(chainID, &pc), pc.Signature) {
		t.Fatalf("precommit: %v", rerr)
	}
	if w, _ := second.FSM().Watermark(chainID); !bytes.Equal(w.Signature, pc.Signature) {
		t.Fatal("the precommit's signature is not the one recorded in the replicated state")
	}
}

// A deterministic key needs no record: its re-sign re-creates the same
// signature, and the replicated state holds none (no second commit).
func TestDeterministicKeyRecordsNothing(t *testing.T) {
	ml, err := mldsa65.GenPrivKey()
	if err != nil {
		t.Fatal(err)
	}
	k := file.New(ml)
	_, leader, _, stop := startRaft(t, 1, chainID)
	defer stop()
	s := leaderSigner(t, leader, k)
	v := &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: 3, BlockID: bid(3), Timestamp: ts}
	a, _ := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, v)))
	b, _ := signedVote(t, s.Handle(context.Background(), chainID, voteReq(chainID, v)))
	if len(a.Signature) == 0 || !bytes.Equal(a.Signature, b.Signature) {
		t.Fatal("a deterministic key re-creates the same signature")
	}
	if w, _ := leader.FSM().Watermark(chainID); w.Signature != nil {
		t.Fatal("a deterministic key's signature was recorded")
	}
}

// Without a recorder there is nowhere to keep released signatures: a key
// that is not deterministic is refused at start rather than risk a second
// signature after a failover.
func TestNonDeterministicKeyNeedsRecorder(t *testing.T) {
	f := freshFSM(t, chainID)
	_, err := signer.New(signer.Config{Reserver: &fakeReserver{state: f}, State: f,
		Keys: map[string]keys.Signer{chainID: newHedgedKey(t)}})
	if err == nil || !strings.Contains(err.Error(), "does not sign deterministically") {
		t.Fatalf("got %v", err)
	}
}
