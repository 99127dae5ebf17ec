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
