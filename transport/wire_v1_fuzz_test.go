package transport

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	pv1 "github.com/cometbft/cometbft/api/cometbft/privval/v1"
	typesv1 "github.com/cometbft/cometbft/api/cometbft/types/v1"
	"github.com/cometbft/cometbft/libs/protoio"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
)

func frameV1(t testing.TB, m *pv1.Message) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := protoio.NewDelimitedWriter(&b).WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func seedFramesV1(t testing.TB) [][]byte {
	vote := &typesv1.Vote{Type: typesv1.PrecommitType, Height: 10, Round: 1, Timestamp: time.Unix(1700000000, 0).UTC(),
		BlockID: v1BlockID(), ValidatorAddress: bytes.Repeat([]byte{1}, 20), Extension: []byte("ext")}
	voteReq := frameV1(t, &pv1.Message{Sum: &pv1.Message_SignVoteRequest{
		SignVoteRequest: &pv1.SignVoteRequest{Vote: vote, ChainId: testChainID, SkipExtensionSigning: true}}})
	return [][]byte{
		frameV1(t, &pv1.Message{Sum: &pv1.Message_PingRequest{PingRequest: &pv1.PingRequest{}}}),
		frameV1(t, &pv1.Message{Sum: &pv1.Message_PubKeyRequest{PubKeyRequest: &pv1.PubKeyRequest{ChainId: testChainID}}}),
		voteReq,
		frameV1(t, &pv1.Message{Sum: &pv1.Message_SignProposalRequest{SignProposalRequest: &pv1.SignProposalRequest{
			Proposal: &typesv1.Proposal{Type: typesv1.ProposalType, Height: 10, PolRound: -1}, ChainId: testChainID}}}),
		frameV1(t, &pv1.Message{Sum: &pv1.Message_SignBytesRequest{SignBytesRequest: &pv1.SignBytesRequest{Value: []byte("x")}}}),
		// A response where a request belongs.
		frameV1(t, &pv1.Message{Sum: &pv1.Message_SignBytesResponse{SignBytesResponse: &pv1.SignBytesResponse{}}}),
		// A request without its body.
		frameV1(t, &pv1.Message{Sum: &pv1.Message_SignVoteRequest{SignVoteRequest: &pv1.SignVoteRequest{}}}),
		voteReq[:len(voteReq)/2], // truncated
		{0x00},                   // empty message
	}
}

// FuzzReadRequestV1 is FuzzReadRequest for the v1 codec: arbitrary bytes
// never panic, a malformed frame is told from the end of the stream, and
// what is read is either the transport's own refusal (SignBytes) or a
// request a node sends, in a form that re-encodes.
func FuzzReadRequestV1(f *testing.F) {
	for _, s := range seedFramesV1(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := newRequestReader(bytes.NewReader(data), fuzzMaxFrame)
		c := v1Codec{r: rr}
		for i := 0; ; i++ {
			in, err := c.read()
			if err != nil {
				fromReader := rr.rr.err != nil
				if errors.Is(err, errMalformed) == fromReader {
					t.Fatalf("frame %d: error %v: malformed=%v but reader failed=%v", i, err, !fromReader, fromReader)
				}
				if fromReader && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("frame %d: error %v from a reader that can only end", i, err)
				}
				return
			}
			if in.reply != nil {
				if in.reply.(*pv1.Message).GetSignBytesResponse().GetError() == nil {
					t.Fatalf("frame %d: the transport's own answer is not a refusal: %v", i, in.reply)
				}
				continue
			}
			if err := checkRequest(in.msg); err != nil {
				t.Fatalf("frame %d: returned a message that is not a request: %v", i, err)
			}
			if _, err := in.msg.Marshal(); err != nil {
				t.Fatalf("frame %d: accepted request does not re-encode: %v", i, err)
			}
		}
	})
}

// TestReadRequestV1Seeds pins what the v1 seeds mean.
func TestReadRequestV1Seeds(t *testing.T) {
	want := []string{"ping", "pubkey", "vote skip", "proposal", "refused", "malformed", "vote", "eof", "malformed"}
	for i, s := range seedFramesV1(t) {
		in, err := v1Codec{r: newRequestReader(bytes.NewReader(s), fuzzMaxFrame)}.read()
		var got string
		switch {
		case errors.Is(err, errMalformed):
			got = "malformed"
		case err != nil:
			got = "eof"
		case in.reply != nil:
			got = "refused"
		default:
			switch in.msg.Sum.(type) {
			case *privvalproto.Message_PingRequest:
				got = "ping"
			case *privvalproto.Message_PubKeyRequest:
				got = "pubkey"
			case *privvalproto.Message_SignVoteRequest:
				got = "vote"
				if in.skipExtension {
					got += " skip"
				}
			case *privvalproto.Message_SignProposalRequest:
				got = "proposal"
			}
		}
		if got != want[i] {
			t.Errorf("seed %d: %s, want %s", i, got, want[i])
		}
	}
}
