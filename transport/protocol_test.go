package transport

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cometbft/cometbft/types"

	"github.com/kms-ha/kms-ha/internal/voteext"
)

// skipRecorder is a fakeHandler that records, per vote, whether the
// transport asked the signer not to sign its extension.
type skipRecorder struct {
	*fakeHandler
	mu    sync.Mutex
	skips []bool
}

func (s *skipRecorder) Handle(ctx context.Context, chainID string, req privvalproto.Message) privvalproto.Message {
	if _, ok := req.Sum.(*privvalproto.Message_SignVoteRequest); ok {
		s.mu.Lock()
		s.skips = append(s.skips, voteext.Skipped(ctx))
		s.mu.Unlock()
	}
	return s.fakeHandler.Handle(ctx, chainID, req)
}

func (s *skipRecorder) recorded() []bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]bool(nil), s.skips...)
}

// A v0.34 or v0.37 node speaks the v0.38 frames without extensions: its
// precommits reach the signer marked "do not sign the extension"; a v0.38
// node's (the default) do not, and get the extension signed as FilePV does.
func TestOlderLinesSkipExtensions(t *testing.T) {
	for _, tc := range []struct {
		protocol Protocol
		wantSkip bool
	}{
		{ProtocolV034, true},
		{ProtocolV037, true},
		{ProtocolV038, false},
		{"", false},
	} {
		t.Run(string(tc.protocol), func(t *testing.T) {
			path := socketPath(t)
			node := startUnixNode(t, path)
			h := &skipRecorder{fakeHandler: newFakeHandler()}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			v := Validator{ChainID: testChainID, Addr: "unix://" + path, Reconnect: true, Protocol: tc.protocol}
			done := startRun(t, ctx, v, h, Options{})
			vote := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 3, BlockID: testBlockID(), Timestamp: time.Now()}
			if err := node.client.SignVote(testChainID, vote); err != nil {
				t.Fatalf("sign vote: %v", err)
			}
			if !h.key.PubKey().VerifySignature(types.VoteSignBytes(testChainID, vote), vote.Signature) {
				t.Fatal("vote signature does not verify")
			}
			if got := h.recorded(); len(got) != 1 || got[0] != tc.wantSkip {
				t.Fatalf("extension skipped = %v, want [%v]", got, tc.wantSkip)
			}
			cancel()
			_ = waitRun(t, done, 3*time.Second)
		})
	}
}

func testBlockID() cmtproto.BlockID {
	h := []byte(strings.Repeat("h", 32))
	return cmtproto.BlockID{Hash: h, PartSetHeader: cmtproto.PartSetHeader{Total: 1, Hash: h}}
}

// A bad protocol, or noise:// with a line that has no noise listener, fails
// Run at once instead of redialling forever.
func TestRunRejectsBadProtocol(t *testing.T) {
	key := ed25519.GenPrivKey()
	pid, err := PeerID(ed25519.GenPrivKey())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		v    Validator
		want string
	}{
		{Validator{ChainID: testChainID, Addr: "unix:///tmp/x.sock", Protocol: "v0.36"}, `unknown protocol "v0.36"`},
		{Validator{ChainID: testChainID, Addr: "noise://" + pid + "@127.0.0.1:1", Identity: key, Protocol: ProtocolV1},
			"only CometBFT v0.40 nodes have noise:// privval listeners"},
	} {
		err := Run(context.Background(), tc.v, newFakeHandler(), Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %s: got %v, want %q", tc.v.Addr, tc.v.Protocol, err, tc.want)
		}
	}
}
