package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

// The signature released at a watermark is kept: the first recorded wins,
// a repeated request's decision carries it, a record for a position the
// watermark left is refused, and a snapshot that would drop it is refused.
func TestRecordedSignatureIsKeptAndReturned(t *testing.T) {
	f := New()
	applyCmd(t, f, CmdImport, Import{ChainID: "c"})
	at := HRS{Height: 5, Step: StepPrevote}
	sb := []byte{0x10, 0x01, 0x02}
	if d := applyCmd(t, f, CmdReserve, Reserve{ChainID: "c", HRS: at, SignBytes: sb}).(Decision); d.Outcome != Allow || d.Signature != nil {
		t.Fatalf("reserve: %+v", d)
	}
	first := applyCmd(t, f, CmdRecordSignature, RecordSignature{ChainID: "c", HRS: at, SignBytes: sb, Signature: []byte("sig-1")}).(RecordResult)
	second := applyCmd(t, f, CmdRecordSignature, RecordSignature{ChainID: "c", HRS: at, SignBytes: sb, Signature: []byte("sig-2")}).(RecordResult)
	if !first.Recorded || !second.Recorded || string(first.Signature) != "sig-1" || string(second.Signature) != "sig-1" {
		t.Fatalf("first %+v, second %+v: the first recorded signature must win", first, second)
	}
	if d := applyCmd(t, f, CmdReserve, Reserve{ChainID: "c", HRS: at, SignBytes: sb}).(Decision); d.Outcome != Allow || string(d.Signature) != "sig-1" {
		t.Fatalf("repeat: %+v, want Allow with the recorded signature", d)
	}

	// A snapshot that forgets the signature is refused.
	st := f.State()
	w := st.Chains["c"]
	w.Signature = nil
	st.Chains["c"] = w
	data, _ := json.Marshal(st)
	if err := f.Restore(io.NopCloser(bytes.NewReader(data))); !errors.Is(err, ErrWouldLower) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("restore without the signature: %v", err)
	}

	next := HRS{Height: 5, Step: StepPrecommit}
	applyCmd(t, f, CmdReserve, Reserve{ChainID: "c", HRS: next, SignBytes: []byte{0x20}})
	late := applyCmd(t, f, CmdRecordSignature, RecordSignature{ChainID: "c", HRS: at, SignBytes: sb, Signature: []byte("sig-3")}).(RecordResult)
	if late.Recorded || late.Signature != nil || !strings.Contains(late.Detail, "moved on") {
		t.Fatalf("late record: %+v, want refused", late)
	}
	if w, _ := f.Watermark("c"); w.Signature != nil {
		t.Fatal("a new watermark starts without a signature")
	}
}

// The cluster's key check covers the type: one secp256k1 key used as
// secp256k1 on one node and as secp256k1eth on another has the same 33
// bytes, but signs other messages; the second registration does not match.
func TestChainKeyTypeIsPartOfTheKey(t *testing.T) {
	f := New()
	pub := bytes.Repeat([]byte{0x02}, 33)
	first := applyCmd(t, f, CmdSetChainKey, SetChainKey{ChainID: "c", PubKey: pub, KeyType: "secp256k1"}).(KeyResult)
	other := applyCmd(t, f, CmdSetChainKey, SetChainKey{ChainID: "c", PubKey: pub, KeyType: "secp256k1eth"}).(KeyResult)
	if !first.Matches || other.Matches || other.Recorded.KeyType != "secp256k1" {
		t.Fatalf("first %+v, other %+v: the same bytes under another type must not match", first, other)
	}
	ml := bytes.Repeat([]byte{7}, 1952)
	if r := applyCmd(t, f, CmdSetChainKey, SetChainKey{ChainID: "pq", PubKey: ml, KeyType: "ml_dsa_65"}).(KeyResult); !r.Matches || len(r.Recorded.PubKey) != 1952 {
		t.Fatalf("ML-DSA-65 key: %+v", r.Recorded.KeyType)
	}
}
