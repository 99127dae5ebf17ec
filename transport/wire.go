package transport

import (
	"io"

	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	"github.com/cosmos/gogoproto/proto"
)

// inbound is one request read from a node, in the form the Handler takes
// (the v0.38 messages, which every line's votes and proposals map onto).
type inbound struct {
	msg privvalproto.Message
	// skipExtension: the node does not want a vote extension signed (a
	// line without extensions, or v1's skip_extension_signing).
	skipExtension bool
	// reply, when set, is the transport's own answer in the line's wire
	// format, and msg goes to no Handler (v1's SignBytes request); replyTo
	// names the request for the log.
	reply   proto.Message
	replyTo string
}

// codec is the privval wire format of one CometBFT line: it reads requests
// into the Handler's form and encodes the Handler's answers back.
type codec interface {
	read() (inbound, error)
	encode(resp privvalproto.Message) (proto.Message, error)
}

// newCodec returns the codec of protocol p reading frames of at most
// maxSize bytes from r.
func newCodec(p Protocol, r io.Reader, maxSize int) codec {
	rr := newRequestReader(r, maxSize)
	if p == ProtocolV1 {
		return v1Codec{r: rr}
	}
	return v038Codec{r: rr, skipExtension: !p.signsExtensions()}
}

// v038Codec is the tendermint.privval format of v0.34 to v0.40. The older
// lines decode the same frames: their votes lack the extension fields (9
// and 10), which a v0.38 vote leaves empty unless it signs an extension.
type v038Codec struct {
	r             *requestReader
	skipExtension bool
}

func (c v038Codec) read() (inbound, error) {
	m, err := c.r.readRequest()
	return inbound{msg: m, skipExtension: c.skipExtension}, err
}

func (v038Codec) encode(resp privvalproto.Message) (proto.Message, error) {
	return &resp, nil
}
