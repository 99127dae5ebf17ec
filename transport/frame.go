package transport

import (
	"errors"
	"fmt"
	"io"

	"github.com/cometbft/cometbft/libs/protoio"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	"github.com/cosmos/gogoproto/proto"
)

// errMalformed marks a frame that was read completely or partly but cannot be
// a valid request (bad length prefix, too large, undecodable, not a request).
// The connection is dropped because the stream can no longer be trusted to
// be in sync.
var errMalformed = errors.New("malformed frame")

// requestReader reads privval requests as a node sends them: a varint length
// prefix, at most maxSize bytes of protobuf, and a message that is a request.
// Everything a validator connection reads goes through it, and
// FuzzReadRequest feeds it arbitrary bytes.
type requestReader struct {
	rr *recordingReader
	r  protoio.ReadCloser
}

func newRequestReader(r io.Reader, maxSize int) *requestReader {
	rr := &recordingReader{r: r}
	return &requestReader{rr: rr, r: protoio.NewDelimitedReader(rr, maxSize)}
}

// readRequest returns the next request. An error wrapping errMalformed means
// the bytes cannot be a request; any other error is the underlying reader's
// (EOF, timeout, closed connection).
func (q *requestReader) readRequest() (privvalproto.Message, error) {
	var req privvalproto.Message
	if err := q.readFrame(&req); err != nil {
		return privvalproto.Message{}, err
	}
	if err := checkRequest(req); err != nil {
		return privvalproto.Message{}, fmt.Errorf("transport: read request: %w: %w", errMalformed, err)
	}
	return req, nil
}

// readFrame decodes the next frame into m, whatever line's message type m
// is. An error wrapping errMalformed means the bytes cannot be a message;
// any other error is the underlying reader's.
func (q *requestReader) readFrame(m proto.Message) error {
	q.rr.err = nil
	if _, err := q.r.ReadMsg(m); err != nil {
		if q.rr.err != nil {
			return fmt.Errorf("transport: read request: %w", err)
		}
		// The reader itself did not fail, so the error came from length
		// validation or decoding.
		return fmt.Errorf("transport: read request: %w: %w", errMalformed, err)
	}
	return nil
}

// checkRequest accepts the four requests a node sends. Anything else (an
// empty frame, a response, a message of a newer format that decoded into
// nothing) means the peer speaks something else: answering it could only
// confuse it, so the connection is dropped. The contents of a request are
// the signer's to judge: it answers a bad one with a RemoteSignerError.
func checkRequest(m privvalproto.Message) error {
	switch m.Sum.(type) {
	case *privvalproto.Message_PubKeyRequest, *privvalproto.Message_SignVoteRequest,
		*privvalproto.Message_SignProposalRequest, *privvalproto.Message_PingRequest:
		return nil
	case nil:
		return errors.New("empty message: no request")
	}
	return fmt.Errorf("%T is not a request a node sends", m.Sum)
}

// recordingReader remembers the last error of the underlying reader so that
// I/O failures (EOF, timeout, closed) can be told apart from malformed frames.
type recordingReader struct {
	r   io.Reader
	err error
}

func (rr *recordingReader) Read(p []byte) (int, error) {
	n, err := rr.r.Read(p)
	if err != nil {
		rr.err = err
	}
	return n, err
}
