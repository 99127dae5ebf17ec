package stateimport

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"

	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"

	"github.com/kms-ha/kms-ha/fsm"
)

// fields reads typed values out of a decoded JSON object and turns every
// problem into an *Error naming the format and the field.
type fields struct {
	format string
	obj    map[string]json.RawMessage
}

func (f fields) errf(field, format string, args ...any) error {
	return &Error{Format: f.format, Field: field, Err: fmt.Errorf(format, args...)}
}

// int reads a required integer in [lo, hi]. Both a quoted decimal and a bare
// JSON number are accepted: the programs disagree (and changed over time)
// on which to write, and the value is the same either way.
func (f fields) int(name string, lo, hi int64) (int64, error) {
	raw, ok := f.obj[name]
	if !ok {
		return 0, f.errf(name, "missing")
	}
	raw = bytes.TrimSpace(raw)
	var text string
	switch {
	case len(raw) == 0 || string(raw) == "null":
		return 0, f.errf(name, "is null, want an integer")
	case raw[0] == '"':
		if err := json.Unmarshal(raw, &text); err != nil {
			return 0, f.errf(name, "invalid string: %v", err)
		}
	default:
		text = string(raw)
	}
	if !isDecimal(text) {
		return 0, f.errf(name, "%s is not a whole number", truncate(string(raw)))
	}
	v, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return 0, f.errf(name, "%s is out of range", truncate(text))
	}
	if v < lo {
		if v < 0 {
			return 0, f.errf(name, "negative value %d", v)
		}
		return 0, f.errf(name, "%d is below %d", v, lo)
	}
	if v > hi {
		return 0, f.errf(name, "%d is above the maximum %d", v, hi)
	}
	return v, nil
}

// str reads an optional string; absent, null and "" all mean no value,
// matching Go's omitempty and Rust's Option on the writing side.
func (f fields) str(name string) (string, bool, error) {
	raw, ok := f.obj[name]
	if !ok {
		return "", false, nil
	}
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" {
		return "", false, nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false, f.errf(name, "want a string, got %s", truncate(string(raw)))
	}
	return s, s != "", nil
}

// isDecimal accepts an optional minus sign and digits only: strconv alone
// would also take "+5" and "0x5"-like forms no writer produces.
func isDecimal(s string) bool {
	if len(s) > 0 && s[0] == '-' {
		s = s[1:]
	}
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	const limit = 40
	if len(s) > limit {
		return strconv.Quote(s[:limit]) + "..."
	}
	return s
}

// hrs reads height, round and a raw step bounded by maxStep.
func (f fields) hrs(maxStep int64) (h int64, r int32, step int64, err error) {
	if h, err = f.int("height", 0, math.MaxInt64); err != nil {
		return
	}
	// CometBFT rounds are int32; horcrux and tmkms store wider types but
	// never anything a CometBFT node could have sent them.
	r64, err := f.int("round", 0, math.MaxInt32)
	if err != nil {
		return
	}
	if step, err = f.int("step", 0, maxStep); err != nil {
		return
	}
	return h, int32(r64), step, nil
}

// position checks the converted position is one a signer can be at. A
// state at height 0 is a fresh file; anything else at height 0, or a step
// 0 above it, is a file no signer writes and is refused rather than
// guessed at.
func (f fields) position(h int64, r int32, step int8) error {
	if h == 0 {
		if r != 0 || step != fsm.StepNone {
			return f.errf("height", "height 0 is a fresh state and must have round 0 and step 0, got round %d step %d", r, step)
		}
		return nil
	}
	if step == fsm.StepNone {
		return f.errf("step", "step 0 (nothing signed) is only valid with height 0, got height %d", h)
	}
	return nil
}

// signature checks an optional base64 signature. It is not imported (the
// cluster re-signs the stored bytes, and Ed25519 is deterministic) but a
// malformed one marks a damaged file.
func (f fields) signature() error {
	s, ok, err := f.str("signature")
	if err != nil || !ok {
		return err
	}
	if _, err := base64.StdEncoding.DecodeString(s); err != nil {
		return f.errf("signature", "not base64: %v", err)
	}
	return nil
}

func parseCometBFT(f fields) (State, error) {
	h, r, step, err := f.hrs(int64(fsm.StepPrecommit))
	if err != nil {
		return State{}, err
	}
	s := State{Height: h, Round: r, Step: int8(step)}
	if err := f.position(s.Height, s.Round, s.Step); err != nil {
		return State{}, err
	}
	if err := f.signature(); err != nil {
		return State{}, err
	}
	text, ok, err := f.str("signbytes")
	if err != nil || !ok {
		return s, err
	}
	// FilePV encodes sign bytes as upper-case hex (cmtbytes.HexBytes);
	// its own decoder also takes lower case.
	b, err := hex.DecodeString(text)
	if err != nil {
		return State{}, f.errf("signbytes", "not hex: %v", err)
	}
	if err := checkSignBytes(b, s); err != nil {
		return State{}, f.errf("signbytes", "%v", err)
	}
	s.SignBytes = b
	return s, nil
}

func parseHorcrux(f fields) (State, error) {
	h, r, step, err := f.hrs(int64(fsm.StepPrecommit))
	if err != nil {
		return State{}, err
	}
	s := State{Height: h, Round: r, Step: int8(step)}
	if err := f.position(s.Height, s.Round, s.Step); err != nil {
		return State{}, err
	}
	if err := f.signature(); err != nil {
		return State{}, err
	}
	text, ok, err := f.str("signbytes")
	if err != nil || !ok {
		return s, err
	}
	b, err := decodeEitherEncoding(text, s)
	if err != nil {
		return State{}, f.errf("signbytes", "%v", err)
	}
	s.SignBytes = b
	return s, nil
}

// decodeEitherEncoding decodes horcrux sign bytes, which older releases
// wrote as hex (cmtbytes.HexBytes) and v3 writes as base64 ([]byte). A hex
// string can also be valid base64, so the encoding is chosen by which
// decoding yields a canonical message for the file's own position.
func decodeEitherEncoding(text string, s State) ([]byte, error) {
	var (
		found   [][]byte
		hexErr  error
		b64Err  error
		checked bool
	)
	if b, err := hex.DecodeString(text); err == nil {
		checked = true
		if hexErr = checkSignBytes(b, s); hexErr == nil {
			found = append(found, b)
		}
	} else {
		hexErr = fmt.Errorf("not hex: %v", err)
	}
	if b, err := base64.StdEncoding.DecodeString(text); err == nil {
		checked = true
		if b64Err = checkSignBytes(b, s); b64Err == nil {
			found = append(found, b)
		}
	} else {
		b64Err = fmt.Errorf("not base64: %v", err)
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 2:
		return nil, errors.New("decodes to a valid message as both hex and base64; cannot tell which was signed")
	case !checked:
		return nil, errors.New("neither hex nor base64")
	default:
		return nil, fmt.Errorf("as hex: %v; as base64: %v", hexErr, b64Err)
	}
}

// checkSignBytes verifies that b is the canonical message a signer at s
// would have signed: a length-delimited CanonicalProposal or CanonicalVote
// of the right type at the same height and round. Bytes that do not match
// their own position would make every later comparison at that position
// meaningless, so the file is refused instead.
func checkSignBytes(b []byte, s State) error {
	if s.Step == fsm.StepNone {
		return errors.New("sign bytes present in a state that never signed")
	}
	n, k := binary.Uvarint(b)
	if k <= 0 {
		return errors.New("no length prefix: not a canonical sign message")
	}
	body := b[k:]
	if n != uint64(len(body)) {
		return fmt.Errorf("length prefix says %d bytes but %d follow: not a canonical sign message", n, len(body))
	}
	var (
		typ         cmtproto.SignedMsgType
		height      int64
		round       int64
		want        cmtproto.SignedMsgType
		description string
	)
	switch s.Step {
	case fsm.StepPropose:
		var p cmtproto.CanonicalProposal
		if err := p.Unmarshal(body); err != nil {
			return fmt.Errorf("do not decode as a canonical proposal: %v", err)
		}
		typ, height, round, want, description = p.Type, p.Height, p.Round, cmtproto.ProposalType, "proposal"
	case fsm.StepPrevote, fsm.StepPrecommit:
		var v cmtproto.CanonicalVote
		if err := v.Unmarshal(body); err != nil {
			return fmt.Errorf("do not decode as a canonical vote: %v", err)
		}
		want, description = cmtproto.PrevoteType, "prevote"
		if s.Step == fsm.StepPrecommit {
			want, description = cmtproto.PrecommitType, "precommit"
		}
		typ, height, round = v.Type, v.Height, v.Round
	default:
		return fmt.Errorf("unexpected step %d", s.Step)
	}
	if typ != want {
		return fmt.Errorf("are a %s message, but the file's step is %s", typeName(typ), description)
	}
	if height != s.Height || round != int64(s.Round) {
		return fmt.Errorf("are for %d/%d, but the file says %d/%d", height, round, s.Height, s.Round)
	}
	return nil
}

func typeName(t cmtproto.SignedMsgType) string {
	switch t {
	case cmtproto.ProposalType:
		return "proposal"
	case cmtproto.PrevoteType:
		return "prevote"
	case cmtproto.PrecommitType:
		return "precommit"
	default:
		return fmt.Sprintf("type %d", int32(t))
	}
}

func parseTmkms(f fields) (State, error) {
	h, r, raw, err := f.hrs(math.MaxInt8)
	if err != nil {
		return State{}, err
	}
	step, err := tmkmsStep(h, raw)
	if err != nil {
		return State{}, f.errf("step", "%v", err)
	}
	s := State{Height: h, Round: r, Step: step}
	if err := f.position(s.Height, s.Round, s.Step); err != nil {
		return State{}, err
	}
	if err := f.blockID(); err != nil {
		return State{}, err
	}
	return s, nil
}

// tmkmsStep converts tmkms's step numbering to CometBFT's.
//
// tmkms >= 0.13 (privval.rs, ConsensusMsg::consensus_state) writes 0 for a
// proposal, 1 for a prevote and 2 for a precommit. Releases up to 0.12
// (amino_types) wrote 3 for a proposal and 6 for any vote, borrowing
// Tendermint's RoundStep numbers; neither era writes the other's values,
// so both are read. A 0 at height 0 is the fresh state tmkms creates.
//
// Legacy 6 cannot tell a prevote from a precommit, so it becomes a
// precommit: claiming the higher step can only cost a vote in that one
// round, claiming the lower could let a precommit be signed twice.
func tmkmsStep(height, raw int64) (int8, error) {
	switch raw {
	case 0:
		if height == 0 {
			return fsm.StepNone, nil
		}
		return fsm.StepPropose, nil
	case 1:
		return fsm.StepPrevote, nil
	case 2:
		return fsm.StepPrecommit, nil
	case 3:
		return fsm.StepPropose, nil
	case 6:
		return fsm.StepPrecommit, nil
	}
	return 0, fmt.Errorf("unknown tmkms step %d (want 0 proposal, 1 prevote, 2 precommit; or legacy 3 proposal, 6 vote)", raw)
}

// blockID checks tmkms's block_id loosely: it does not enter the
// watermark, but a field of the wrong shape means this is not the file it
// claims to be. tendermint-rs writes null or {"hash":"HEX","part_set_header":{...}}
// (older files say "parts"); a bare hex string is accepted as well.
func (f fields) blockID() error {
	raw, ok := f.obj["block_id"]
	if !ok {
		return nil
	}
	raw = bytes.TrimSpace(raw)
	if string(raw) == "null" {
		return nil
	}
	if len(raw) > 0 && raw[0] == '"' {
		s, _, err := f.str("block_id")
		if err != nil {
			return err
		}
		if _, err := hex.DecodeString(s); err != nil {
			return f.errf("block_id", "not hex: %v", err)
		}
		return nil
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return f.errf("block_id", "want null, an object or a hex string, got %s", truncate(string(raw)))
	}
	hash, ok, err := (fields{format: f.format, obj: obj}).str("hash")
	if err != nil {
		return f.errf("block_id", "hash: want a hex string")
	}
	if ok {
		if _, err := hex.DecodeString(hash); err != nil {
			return f.errf("block_id", "hash is not hex: %v", err)
		}
	}
	return nil
}
