package transport

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	pv1 "github.com/cometbft/cometbft/api/cometbft/privval/v1"
	typesv1 "github.com/cometbft/cometbft/api/cometbft/types/v1"
	"github.com/cometbft/cometbft/libs/protoio"
)

// v1Node is the node side of a CometBFT v1.0 privval connection, speaking
// cometbft.privval.v1 frames with the api module's own types (CometBFT
// v1.0.1 itself cannot be imported next to v0.40).
type v1Node struct {
	t    *testing.T
	conn net.Conn
	r    protoio.ReadCloser
	w    protoio.WriteCloser
}

func startV1Node(t *testing.T, h Handler) *v1Node {
	t.Helper()
	path := socketPath(t)
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	v := Validator{ChainID: testChainID, Addr: "unix://" + path, Reconnect: true, Protocol: ProtocolV1}
	done := startRun(t, ctx, v, h, Options{})
	t.Cleanup(func() { cancel(); _ = waitRun(t, done, 3*time.Second) })
	_ = ln.(*net.UnixListener).SetDeadline(time.Now().Add(3 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &v1Node{t: t, conn: conn, r: protoio.NewDelimitedReader(conn, 1<<20), w: protoio.NewDelimitedWriter(conn)}
}

func (n *v1Node) ask(req *pv1.Message) *pv1.Message {
	n.t.Helper()
	_ = n.conn.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := n.w.WriteMsg(req); err != nil {
		n.t.Fatalf("write: %v", err)
	}
	resp := new(pv1.Message)
	if _, err := n.r.ReadMsg(resp); err != nil {
		n.t.Fatalf("read: %v", err)
	}
	return resp
}

func v1BlockID() typesv1.BlockID {
	h := bytes.Repeat([]byte{7}, 32)
	return typesv1.BlockID{Hash: h, PartSetHeader: typesv1.PartSetHeader{Total: 2, Hash: h}}
}

// A v1.0 node gets its public key as pub_key_type and pub_key_bytes (what
// cryptoenc.PubKeyFromTypeAndBytes reads), its votes signed with
// skip_extension_signing honoured, and pings answered.
func TestV1PubKeyVoteAndPing(t *testing.T) {
	h := &skipRecorder{fakeHandler: newFakeHandler()}
	n := startV1Node(t, h)

	pk := n.ask(&pv1.Message{Sum: &pv1.Message_PubKeyRequest{PubKeyRequest: &pv1.PubKeyRequest{ChainId: testChainID}}}).GetPubKeyResponse()
	if pk == nil || pk.Error != nil {
		t.Fatalf("pub key response: %+v", pk)
	}
	if pk.PubKeyType != "ed25519" || !bytes.Equal(pk.PubKeyBytes, h.key.PubKey().Bytes()) {
		t.Fatalf("pub key %q %x, want ed25519 %x", pk.PubKeyType, pk.PubKeyBytes, h.key.PubKey().Bytes())
	}

	for _, skip := range []bool{true, false} {
		vote := &typesv1.Vote{Type: typesv1.PrecommitType, Height: 9, Round: 1, BlockID: v1BlockID(),
			Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), ValidatorAddress: h.key.PubKey().Address(),
			ValidatorIndex: 3, Extension: []byte("ext")}
		resp := n.ask(&pv1.Message{Sum: &pv1.Message_SignVoteRequest{SignVoteRequest: &pv1.SignVoteRequest{
			Vote: vote, ChainId: testChainID, SkipExtensionSigning: skip}}}).GetSignedVoteResponse()
		if resp == nil || resp.Error != nil {
			t.Fatalf("signed vote response: %+v", resp)
		}
		got := resp.Vote
		if !h.key.PubKey().VerifySignature(v1VoteSignBytes(t, testChainID, &got), got.Signature) {
			t.Fatal("the v1 vote's signature does not verify over v1's canonical sign bytes")
		}
		got.Signature = nil
		if !sameWire(t, &got, vote) {
			t.Fatalf("vote changed on the way: got %+v, want %+v", got, *vote)
		}
	}
	if got := h.recorded(); len(got) != 2 || !got[0] || got[1] {
		t.Fatalf("extension skipped per vote = %v, want [true false]", got)
	}

	if n.ask(&pv1.Message{Sum: &pv1.Message_PingRequest{PingRequest: &pv1.PingRequest{}}}).GetPingResponse() == nil {
		t.Fatal("no ping response")
	}
}

// SignBytes is refused with a RemoteSignerError that says why; the handler
// (and so the key) never sees it, and the connection stays up.
func TestV1SignBytesRefused(t *testing.T) {
	h := newFakeHandler()
	n := startV1Node(t, h)
	resp := n.ask(&pv1.Message{Sum: &pv1.Message_SignBytesRequest{SignBytesRequest: &pv1.SignBytesRequest{Value: []byte("anything")}}}).GetSignBytesResponse()
	if resp == nil || resp.Error == nil || len(resp.Signature) != 0 {
		t.Fatalf("sign bytes response: %+v", resp)
	}
	if resp.Error.Code != codeRefused || !strings.Contains(resp.Error.Description, "SignBytes refused: kms-ha signs only votes and proposals") {
		t.Fatalf("refusal %d %q", resp.Error.Code, resp.Error.Description)
	}
	if h.votes.Load()+h.proposals.Load()+h.pubKeys.Load()+h.pings.Load() != 0 {
		t.Fatal("the handler saw the SignBytes request")
	}
	if n.ask(&pv1.Message{Sum: &pv1.Message_PingRequest{PingRequest: &pv1.PingRequest{}}}).GetPingResponse() == nil {
		t.Fatal("connection did not survive the refusal")
	}
}

// A proposal refused by the signer reaches the v1 node as a refusal with
// the signer's code and reason.
func TestV1ProposalRefusalCarriesReason(t *testing.T) {
	n := startV1Node(t, newFakeHandler())
	p := &typesv1.Proposal{Type: typesv1.ProposalType, Height: 4, Round: 0, PolRound: -1, BlockID: v1BlockID(), Timestamp: time.Now().UTC()}
	resp := n.ask(&pv1.Message{Sum: &pv1.Message_SignProposalRequest{SignProposalRequest: &pv1.SignProposalRequest{
		Proposal: p, ChainId: testChainID}}}).GetSignedProposalResponse()
	if resp == nil || resp.Error == nil || resp.Error.Code != 7 || resp.Error.Description != "refused by test" {
		t.Fatalf("proposal response: %+v", resp)
	}
}
