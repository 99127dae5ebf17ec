// Package fsm is the replicated state machine of kms-ha: for each chain, the
// last height/round/step the cluster agreed to sign and the bytes it agreed
// to sign there. It is pure and deterministic: every replica applying the
// same log reaches the same decisions, which is what makes a failover safe.
package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/cometbft/cometbft/libs/protoio"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"
	"github.com/cosmos/gogoproto/proto"
)

// Steps, ordered as CometBFT's FilePV orders them within a round.
const (
	StepNone      int8 = 0
	StepPropose   int8 = 1
	StepPrevote   int8 = 2
	StepPrecommit int8 = 3
)

// StepName names a step for logs and errors.
func StepName(s int8) string {
	switch s {
	case StepPropose:
		return "proposal"
	case StepPrevote:
		return "prevote"
	case StepPrecommit:
		return "precommit"
	default:
		return fmt.Sprintf("step(%d)", s)
	}
}

// HRS is a height/round/step position in consensus.
type HRS struct {
	Height int64 `json:"height"`
	Round  int32 `json:"round"`
	Step   int8  `json:"step"`
}

func (h HRS) String() string {
	return fmt.Sprintf("%d/%d/%s", h.Height, h.Round, StepName(h.Step))
}

// Compare orders two positions: -1 if h is before o, 0 if equal, 1 if after.
func (h HRS) Compare(o HRS) int {
	switch {
	case h.Height != o.Height:
		return cmp(h.Height, o.Height)
	case h.Round != o.Round:
		return cmp(int64(h.Round), int64(o.Round))
	default:
		return cmp(int64(h.Step), int64(o.Step))
	}
}

func cmp(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// Watermark is what the cluster last agreed to sign for one chain.
type Watermark struct {
	HRS
	// SignBytes are the exact bytes reserved at HRS. A repeated request at
	// the same HRS is answered by signing these again (Ed25519 is
	// deterministic), never by signing something new.
	SignBytes []byte `json:"sign_bytes,omitempty"`
	// Signature is the signature released over SignBytes, recorded only
	// for keys whose signatures are not deterministic (CmdRecordSignature):
	// a repeated request is answered with it, never with a second one.
	Signature []byte `json:"signature,omitempty"`
}

// Outcome is the FSM's verdict on a reservation.
type Outcome uint8

const (
	// Refuse: nothing may be signed.
	Refuse Outcome = iota
	// Allow: sign the requested bytes; the watermark now points at them.
	Allow
	// AllowStored: the request differs from the stored one only in its
	// timestamp; sign the stored bytes and answer with the stored timestamp.
	AllowStored
)

func (o Outcome) String() string {
	switch o {
	case Allow:
		return "allow"
	case AllowStored:
		return "allow_stored"
	default:
		return "refuse"
	}
}

// Refusal reasons, stable strings for metrics and operators.
const (
	ReasonRegression = "regression"
	ReasonConflict   = "conflict"
	ReasonInvalid    = "invalid"
)

// Decision is the result of applying a reservation.
type Decision struct {
	Outcome Outcome
	// Reason is set when Outcome is Refuse.
	Reason string
	// Detail explains a refusal to an operator.
	Detail string
	// SignBytes is what may be signed (set unless refused).
	SignBytes []byte
	// Timestamp is the stored message's timestamp for AllowStored.
	Timestamp time.Time
	// Signature is the signature already released at the watermark, when
	// one was recorded: a request at the same position is answered with
	// it (Allow of the same bytes, or AllowStored).
	Signature []byte
	// Watermark is the chain's watermark after the decision.
	Watermark Watermark
}

// Err returns the refusal as an error, or nil when signing is allowed.
func (d Decision) Err() error {
	if d.Outcome != Refuse {
		return nil
	}
	return &RefusalError{Reason: d.Reason, Detail: d.Detail}
}

// RefusalError is a double-sign refusal.
type RefusalError struct {
	Reason string
	Detail string
}

func (e *RefusalError) Error() string {
	return fmt.Sprintf("refused to sign (%s): %s", e.Reason, e.Detail)
}

// Decide applies FilePV's double-sign rules to a request at hrs with
// signBytes against the current watermark cur. It is the single place the
// rules live: the FSM uses it to apply, the signer to pre-check.
func Decide(cur Watermark, hrs HRS, signBytes []byte) Decision {
	refuse := func(reason, format string, args ...any) Decision {
		return Decision{Outcome: Refuse, Reason: reason, Detail: fmt.Sprintf(format, args...), Watermark: cur}
	}
	if hrs.Height <= 0 || hrs.Round < 0 || hrs.Step < StepPropose || hrs.Step > StepPrecommit {
		return refuse(ReasonInvalid, "invalid position %s", hrs)
	}
	if len(signBytes) == 0 {
		return refuse(ReasonInvalid, "empty sign bytes at %s", hrs)
	}
	switch c := hrs.Compare(cur.HRS); {
	case c > 0:
		next := Watermark{HRS: hrs, SignBytes: bytes.Clone(signBytes)}
		return Decision{Outcome: Allow, SignBytes: next.SignBytes, Watermark: next}
	case c < 0:
		return refuse(ReasonRegression, "%s is below the watermark %s", hrs, cur.HRS)
	}
	if len(cur.SignBytes) == 0 {
		// A watermark imported without bytes: the position is taken but we
		// cannot tell whether this request matches what was signed there.
		return refuse(ReasonConflict, "%s was signed before but its sign bytes are unknown", hrs)
	}
	if bytes.Equal(cur.SignBytes, signBytes) {
		return Decision{Outcome: Allow, SignBytes: cur.SignBytes, Signature: cur.Signature, Watermark: cur}
	}
	ts, ok, err := onlyTimestampDiffers(hrs.Step, cur.SignBytes, signBytes)
	if err != nil {
		return refuse(ReasonConflict, "%s: %v", hrs, err)
	}
	if !ok {
		return refuse(ReasonConflict, "conflicting data at %s: a different message was already signed there", hrs)
	}
	return Decision{Outcome: AllowStored, SignBytes: cur.SignBytes, Timestamp: ts, Signature: cur.Signature, Watermark: cur}
}

// onlyTimestampDiffers reports whether two canonical sign-byte encodings of
// the same step differ only in their timestamp, and returns the stored
// timestamp. Unlike CometBFT's FilePV helper it never panics on bytes it
// cannot decode: undecodable bytes are a conflict, so nothing is signed.
func onlyTimestampDiffers(step int8, stored, requested []byte) (time.Time, bool, error) {
	var a, b proto.Message
	var tsA, tsB *time.Time
	if step == StepPropose {
		pa, pb := &cmtproto.CanonicalProposal{}, &cmtproto.CanonicalProposal{}
		a, b, tsA, tsB = pa, pb, &pa.Timestamp, &pb.Timestamp
	} else {
		va, vb := &cmtproto.CanonicalVote{}, &cmtproto.CanonicalVote{}
		a, b, tsA, tsB = va, vb, &va.Timestamp, &vb.Timestamp
	}
	if err := protoio.UnmarshalDelimited(stored, a); err != nil {
		return time.Time{}, false, fmt.Errorf("stored sign bytes do not decode: %w", err)
	}
	if err := protoio.UnmarshalDelimited(requested, b); err != nil {
		return time.Time{}, false, errors.New("requested sign bytes do not decode as a canonical message")
	}
	storedTS := *tsA
	*tsA, *tsB = time.Time{}, time.Time{}
	return storedTS, proto.Equal(a, b), nil
}
