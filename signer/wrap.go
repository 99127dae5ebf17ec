package signer

import (
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
)

// wrap puts a response into the privval envelope.
func wrap(m any) privvalproto.Message {
	switch m := m.(type) {
	case *privvalproto.PingResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_PingResponse{PingResponse: m}}
	case *privvalproto.PubKeyResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_PubKeyResponse{PubKeyResponse: m}}
	case *privvalproto.SignedVoteResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_SignedVoteResponse{SignedVoteResponse: m}}
	case *privvalproto.SignedProposalResponse:
		return privvalproto.Message{Sum: &privvalproto.Message_SignedProposalResponse{SignedProposalResponse: m}}
	}
	panic("signer: wrap: unexpected response type")
}
