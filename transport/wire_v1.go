package transport

import (
	"errors"
	"fmt"

	pv1 "github.com/cometbft/cometbft/api/cometbft/privval/v1"
	cryptoenc "github.com/cometbft/cometbft/crypto/encoding"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cosmos/gogoproto/proto"
)

// codeRefused is the RemoteSignerError code of a refusal (signer.CodeRefused).
const codeRefused = 1

// signBytesRefusal is what a v1 SignBytes request gets. The request names
// arbitrary bytes: signing them with a consensus key would let anyone who
// can reach the node's privval connection obtain a signature over a vote or
// a proposal (their sign bytes are just bytes) outside the watermark. No
// v1.0 node code path sends it during consensus.
const signBytesRefusal = "kms-ha: SignBytes refused: kms-ha signs only votes and proposals, " +
	"through the cluster's double-sign watermark; signing arbitrary bytes with a consensus key " +
	"could produce a vote or proposal signature that bypasses it"

// v1Codec is the cometbft.privval.v1 format of CometBFT v1.0. Its votes and
// proposals have the field numbers of v0.38's, so they convert through
// their wire encoding; what differs is the public key answer
// (pub_key_type and pub_key_bytes instead of a PublicKey),
// skip_extension_signing, and the SignBytes request.
type v1Codec struct {
	r *requestReader
}

func (c v1Codec) read() (inbound, error) {
	var m pv1.Message
	if err := c.r.readFrame(&m); err != nil {
		return inbound{}, err
	}
	in, err := fromV1(m)
	if err != nil {
		return inbound{}, fmt.Errorf("transport: read request: %w: %w", errMalformed, err)
	}
	return in, nil
}

// fromV1 maps a v1 request onto the Handler's form; anything that is not a
// request a node sends is an error (the connection is dropped).
func fromV1(m pv1.Message) (inbound, error) {
	switch r := m.Sum.(type) {
	case *pv1.Message_PingRequest:
		return inbound{msg: wrapRequest(&privvalproto.PingRequest{})}, nil
	case *pv1.Message_PubKeyRequest:
		return inbound{msg: wrapRequest(&privvalproto.PubKeyRequest{ChainId: r.PubKeyRequest.GetChainId()})}, nil
	case *pv1.Message_SignVoteRequest:
		req := &privvalproto.SignVoteRequest{ChainId: r.SignVoteRequest.GetChainId()}
		if v := r.SignVoteRequest.GetVote(); v != nil {
			req.Vote = new(cmtproto.Vote)
			if err := convertWire(req.Vote, v); err != nil {
				return inbound{}, fmt.Errorf("vote: %w", err)
			}
		}
		return inbound{msg: wrapRequest(req), skipExtension: r.SignVoteRequest.GetSkipExtensionSigning()}, nil
	case *pv1.Message_SignProposalRequest:
		req := &privvalproto.SignProposalRequest{ChainId: r.SignProposalRequest.GetChainId()}
		if p := r.SignProposalRequest.GetProposal(); p != nil {
			req.Proposal = new(cmtproto.Proposal)
			if err := convertWire(req.Proposal, p); err != nil {
				return inbound{}, fmt.Errorf("proposal: %w", err)
			}
		}
		return inbound{msg: wrapRequest(req)}, nil
	case *pv1.Message_SignBytesRequest:
		return inbound{replyTo: "SignBytes", reply: wrapV1(&pv1.SignBytesResponse{
			Error: &pv1.RemoteSignerError{Code: codeRefused, Description: signBytesRefusal},
		})}, nil
	case nil:
		return inbound{}, errors.New("empty message: no request")
	}
	return inbound{}, fmt.Errorf("%T is not a request a node sends", m.Sum)
}

func (v1Codec) encode(resp privvalproto.Message) (proto.Message, error) {
	return toV1(resp)
}

// toV1 maps the Handler's answer onto the v1 format.
func toV1(resp privvalproto.Message) (proto.Message, error) {
	switch r := resp.Sum.(type) {
	case *privvalproto.Message_PingResponse:
		return wrapV1(&pv1.PingResponse{}), nil
	case *privvalproto.Message_PubKeyResponse:
		return wrapV1(pubKeyResponseV1(r.PubKeyResponse)), nil
	case *privvalproto.Message_SignedVoteResponse:
		out := &pv1.SignedVoteResponse{Error: remoteErrorV1(r.SignedVoteResponse.Error)}
		if err := convertWire(&out.Vote, &r.SignedVoteResponse.Vote); err != nil {
			return nil, fmt.Errorf("transport: encode v1 vote: %w", err)
		}
		return wrapV1(out), nil
	case *privvalproto.Message_SignedProposalResponse:
		out := &pv1.SignedProposalResponse{Error: remoteErrorV1(r.SignedProposalResponse.Error)}
		if err := convertWire(&out.Proposal, &r.SignedProposalResponse.Proposal); err != nil {
			return nil, fmt.Errorf("transport: encode v1 proposal: %w", err)
		}
		return wrapV1(out), nil
	}
	return nil, fmt.Errorf("transport: no v1 form for the answer %T", resp.Sum)
}

// pubKeyResponseV1 carries the key as v1 does: its type name ("ed25519",
// "secp256k1") and raw bytes, as cryptoenc.PubKeyFromTypeAndBytes reads them.
func pubKeyResponseV1(r *privvalproto.PubKeyResponse) *pv1.PubKeyResponse {
	if r.Error != nil {
		return &pv1.PubKeyResponse{Error: remoteErrorV1(r.Error)}
	}
	pk, err := cryptoenc.PubKeyFromProto(r.PubKey)
	if err != nil {
		return &pv1.PubKeyResponse{Error: &pv1.RemoteSignerError{
			Code: codeRefused, Description: "kms-ha: encode public key for v1: " + err.Error()}}
	}
	return &pv1.PubKeyResponse{PubKeyType: pk.Type(), PubKeyBytes: pk.Bytes()}
}

func remoteErrorV1(e *privvalproto.RemoteSignerError) *pv1.RemoteSignerError {
	if e == nil {
		return nil
	}
	return &pv1.RemoteSignerError{Code: e.Code, Description: e.Description}
}

// wireMsg is a gogoproto message with generated (de)serialisation.
type wireMsg interface {
	Marshal() ([]byte, error)
	Unmarshal([]byte) error
}

// convertWire copies src into dst, two messages of different lines with the
// same field numbers, through their wire encoding.
func convertWire(dst, src wireMsg) error {
	b, err := src.Marshal()
	if err != nil {
		return err
	}
	return dst.Unmarshal(b)
}

func wrapRequest(m proto.Message) privvalproto.Message {
	switch m := m.(type) {
	case *privvalproto.PingRequest:
		return privvalproto.Message{Sum: &privvalproto.Message_PingRequest{PingRequest: m}}
	case *privvalproto.PubKeyRequest:
		return privvalproto.Message{Sum: &privvalproto.Message_PubKeyRequest{PubKeyRequest: m}}
	case *privvalproto.SignVoteRequest:
		return privvalproto.Message{Sum: &privvalproto.Message_SignVoteRequest{SignVoteRequest: m}}
	case *privvalproto.SignProposalRequest:
		return privvalproto.Message{Sum: &privvalproto.Message_SignProposalRequest{SignProposalRequest: m}}
	}
	panic(fmt.Sprintf("transport: wrapRequest: unexpected %T", m))
}

func wrapV1(m proto.Message) *pv1.Message {
	switch m := m.(type) {
	case *pv1.PingResponse:
		return &pv1.Message{Sum: &pv1.Message_PingResponse{PingResponse: m}}
	case *pv1.PubKeyResponse:
		return &pv1.Message{Sum: &pv1.Message_PubKeyResponse{PubKeyResponse: m}}
	case *pv1.SignedVoteResponse:
		return &pv1.Message{Sum: &pv1.Message_SignedVoteResponse{SignedVoteResponse: m}}
	case *pv1.SignedProposalResponse:
		return &pv1.Message{Sum: &pv1.Message_SignedProposalResponse{SignedProposalResponse: m}}
	case *pv1.SignBytesResponse:
		return &pv1.Message{Sum: &pv1.Message_SignBytesResponse{SignBytesResponse: m}}
	}
	panic(fmt.Sprintf("transport: wrapV1: unexpected %T", m))
}
