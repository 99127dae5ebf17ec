package transport

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/cometbft/cometbft/libs/protoio"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
)

// fuzzMaxFrame keeps the fuzzer's frames small; the limit logic is the same
// at any size.
const fuzzMaxFrame = 4096

// frame is one privval frame as a node writes it.
func frame(t testing.TB, m privvalproto.Message) []byte {
	t.Helper()
	var b bytes.Buffer
	if _, err := protoio.NewDelimitedWriter(&b).WriteMsg(&m); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func seedFrames(t testing.TB) [][]byte {
	vote := &cmtproto.Vote{Type: cmtproto.PrecommitType, Height: 10, Round: 1, Timestamp: time.Unix(1700000000, 0).UTC(),
		ValidatorAddress: bytes.Repeat([]byte{1}, 20), Extension: []byte("ext")}
	ping := frame(t, privvalproto.Message{Sum: &privvalproto.Message_PingRequest{PingRequest: &privvalproto.PingRequest{}}})
	voteReq := frame(t, privvalproto.Message{Sum: &privvalproto.Message_SignVoteRequest{
		SignVoteRequest: &privvalproto.SignVoteRequest{Vote: vote, ChainId: testChainID}}})
	return [][]byte{
		ping,
		frame(t, privvalproto.Message{Sum: &privvalproto.Message_PubKeyRequest{PubKeyRequest: &privvalproto.PubKeyRequest{ChainId: testChainID}}}),
		voteReq,
		frame(t, privvalproto.Message{Sum: &privvalproto.Message_SignProposalRequest{SignProposalRequest: &privvalproto.SignProposalRequest{
			Proposal: &cmtproto.Proposal{Type: cmtproto.ProposalType, Height: 10, PolRound: -1}, ChainId: testChainID}}}),
		// A response where a request belongs.
		frame(t, privvalproto.Message{Sum: &privvalproto.Message_PingResponse{PingResponse: &privvalproto.PingResponse{}}}),
		// A request without its body.
		frame(t, privvalproto.Message{Sum: &privvalproto.Message_SignVoteRequest{SignVoteRequest: &privvalproto.SignVoteRequest{}}}),
		append(append([]byte{}, ping...), voteReq...), // two frames back to back
		voteReq[:len(voteReq)/2],                      // truncated
		{0x00},                                        // empty message
		{0xff, 0xff, 0xff, 0xff, 0x0f},                // length far above the limit
		bytes.Repeat([]byte{0xff}, 11),                // varint overflow
		{0x05, 0x0a, 0x03, 0xff, 0xff, 0xff},          // bad field inside
	}
}

// FuzzReadRequest feeds arbitrary bytes to the reader every validator
// connection uses (length prefix, protobuf decode, request check). It must
// never panic or allocate past the frame limit, must tell a malformed frame
// from the end of the stream, and must return only requests a node sends.
func FuzzReadRequest(f *testing.F) {
	for _, s := range seedFrames(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := newRequestReader(bytes.NewReader(data), fuzzMaxFrame)
		for i := 0; ; i++ {
			req, err := r.readRequest()
			if err != nil {
				// A frame the stream ended inside is the reader's error (a
				// closed connection); everything else is malformed.
				fromReader := r.rr.err != nil
				if errors.Is(err, errMalformed) == fromReader {
					t.Fatalf("frame %d: error %v: malformed=%v but reader failed=%v", i, err, !fromReader, fromReader)
				}
				if fromReader && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("frame %d: error %v from a reader that can only end", i, err)
				}
				return
			}
			if err := checkRequest(req); err != nil {
				t.Fatalf("frame %d: returned a message that is not a request: %v", i, err)
			}
			if _, err := req.Marshal(); err != nil {
				t.Fatalf("frame %d: accepted request does not re-encode: %v", i, err)
			}
		}
	})
}

// TestReadRequestSeeds pins what the seeds mean, so the corpus stays
// meaningful: four requests pass, the rest are refused as malformed or
// end the stream.
func TestReadRequestSeeds(t *testing.T) {
	seeds := seedFrames(t)
	want := []string{"ok", "ok", "ok", "ok", "malformed", "ok", "ok ok", "eof", "malformed", "malformed", "malformed", "malformed"}
	for i, s := range seeds {
		r := newRequestReader(bytes.NewReader(s), fuzzMaxFrame)
		var got []string
		for {
			_, err := r.readRequest()
			if err == nil {
				got = append(got, "ok")
				continue
			}
			if errors.Is(err, errMalformed) {
				got = append(got, "malformed")
			} else if len(got) == 0 {
				got = append(got, "eof")
			}
			break
		}
		if g := join(got); g != want[i] {
			t.Errorf("seed %d: %s, want %s", i, g, want[i])
		}
	}
}

func join(s []string) string {
	var b bytes.Buffer
	for i, x := range s {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(x)
	}
	return b.String()
}
