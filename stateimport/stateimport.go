// Package stateimport reads the double-sign state an operator brings from
// the signer kms-ha replaces, so that the cluster's watermark starts at or
// above everything that signer ever signed.
//
// Three formats are understood, each written by a different program with
// its own encoding and, for tmkms, its own step numbering:
//
//   - CometBFT's FilePV priv_validator_state.json:
//     {"height":"123","round":0,"step":3,"signature":"<base64>","signbytes":"<HEX>"}
//     height is a quoted int64 (CometBFT's amino-style JSON), round and step
//     are plain numbers, steps are 1 proposal, 2 prevote, 3 precommit, and a
//     fresh node's file is {"height":"0","round":0,"step":0}.
//   - tmkms's per-chain consensus state file:
//     {"height":"123","round":"0","step":2,"block_id":null|{...}}
//     height and round are quoted (tmkms >= 0.6; 0.5 wrote numbers), there
//     are no sign bytes, and steps are numbered differently (see tmkmsStep).
//   - horcrux's sign state file:
//     {"height":"123","round":"0","step":3,"nonce_public":...,"signature":"<base64>","signbytes":...}
//     CometBFT's step numbering; height and round are quoted int64s;
//     signbytes were hex in older releases and base64 since horcrux v3.
//
// Parsing is strict about the fields that decide safety (height, round,
// step, sign bytes) and ignores the rest, so that a newer release of those
// programs adding a field does not block a migration.
package stateimport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/kms-ha/kms-ha/fsm"
)

// Formats accepted by ParseFormat.
const (
	FormatAuto     = "auto"
	FormatCometBFT = "cometbft"
	FormatTmkms    = "tmkms"
	FormatHorcrux  = "horcrux"
)

// MaxFileSize bounds ParseFile: real state files are a few hundred bytes,
// so anything larger is the wrong file and is refused before being read
// into memory.
const MaxFileSize = 1 << 20

// State is a signer's last signed position, converted to kms-ha's (and
// CometBFT FilePV's) step numbering.
type State struct {
	Height int64
	Round  int32
	// Step is 1 proposal, 2 prevote, 3 precommit, or 0 for a fresh state
	// (height 0) that has never signed.
	Step int8
	// SignBytes are the canonical bytes signed at this position, or nil
	// when the file does not carry them (tmkms never does). Without them
	// the position itself is taken: a request there is refused.
	SignBytes []byte
	// Format is the format the state was read as.
	Format string
}

// Fresh reports whether the state has never signed anything.
func (s State) Fresh() bool { return s.Height == 0 }

// HRS is the position in the FSM's terms.
func (s State) HRS() fsm.HRS { return fsm.HRS{Height: s.Height, Round: s.Round, Step: s.Step} }

func (s State) String() string {
	if s.Fresh() {
		return s.Format + " state: fresh (never signed)"
	}
	bytesNote := "without sign bytes"
	if s.SignBytes != nil {
		bytesNote = "with sign bytes"
	}
	return fmt.Sprintf("%s state: %s, %s", s.Format, s.HRS(), bytesNote)
}

// Error is a state file that cannot be imported. It names the format the
// file was read as and, when one field is at fault, that field.
type Error struct {
	// Format is FormatCometBFT, FormatTmkms, FormatHorcrux, or empty when
	// the format could not be determined.
	Format string
	// Field is the JSON field at fault, empty for the file as a whole.
	Field string
	Err   error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(describe(e.Format))
	if e.Field != "" {
		fmt.Fprintf(&b, ": field %q", e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Err.Error())
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

func describe(format string) string {
	switch format {
	case FormatCometBFT:
		return "CometBFT priv_validator_state.json"
	case FormatTmkms:
		return "tmkms consensus state file"
	case FormatHorcrux:
		return "horcrux sign state file"
	default:
		return "signer state file"
	}
}

// Parse reads a state file of any supported format, detecting which.
func Parse(data []byte) (State, error) {
	return ParseFormat(data, FormatAuto)
}

// ParseFile reads and parses the state file at path. format is as for
// ParseFormat.
func ParseFile(path, format string) (State, error) {
	f, err := os.Open(path)
	if err != nil {
		return State{}, fmt.Errorf("read state file: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return State{}, fmt.Errorf("read state file %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		return State{}, fmt.Errorf("state file %s is larger than %d bytes: not a signer state file", path, MaxFileSize)
	}
	s, err := ParseFormat(data, format)
	if err != nil {
		return State{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// ParseFormat parses data as format: FormatAuto (or "") to detect it, or
// one of FormatCometBFT, FormatTmkms, FormatHorcrux to insist on it: the
// file is then read by that program's rules, and refused if it carries a
// field that program never writes.
func ParseFormat(data []byte, format string) (State, error) {
	format = strings.ToLower(strings.TrimSpace(format))
	switch format {
	case "", FormatAuto, FormatCometBFT, FormatTmkms, FormatHorcrux:
	default:
		return State{}, fmt.Errorf("unknown state file format %q (want %s, %s, %s or %s)",
			format, FormatAuto, FormatCometBFT, FormatTmkms, FormatHorcrux)
	}
	known := format
	if known == FormatAuto {
		known = ""
	}

	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil || obj == nil {
		if err == nil {
			err = errors.New("is null")
		}
		return State{}, &Error{Format: known, Err: fmt.Errorf("not a JSON object: %w", err)}
	}
	if known == "" {
		var err error
		if known, err = detect(obj); err != nil {
			return State{}, err
		}
	} else if field := foreignField(obj, known); field != "" {
		// An explicit format is the operator's word, but reading a FilePV
		// file with tmkms's step numbering would lower its watermark, so a
		// field the named program never writes stops the import.
		return State{}, &Error{Format: known, Field: field, Err: fmt.Errorf("a %s never has this field; is the format right?", describe(known))}
	}
	f := fields{format: known, obj: obj}

	var s State
	var err error
	switch known {
	case FormatCometBFT:
		s, err = parseCometBFT(f)
	case FormatTmkms:
		s, err = parseTmkms(f)
	case FormatHorcrux:
		s, err = parseHorcrux(f)
	}
	if err != nil {
		return State{}, err
	}
	s.Format = known
	return s, nil
}

// horcruxOnly are fields only horcrux writes; they are written even when
// empty (no omitempty), so a horcrux file normally has one of them.
var horcruxOnly = []string{"nonce_public", "ephemeral_public", "vote_ext_signature", "FilePath"}

// foreignField returns a field present in obj that format never writes.
func foreignField(obj map[string]json.RawMessage, format string) string {
	var foreign []string
	switch format {
	case FormatTmkms:
		foreign = append([]string{"signbytes", "signature"}, horcruxOnly...)
	case FormatCometBFT:
		foreign = append([]string{"block_id"}, horcruxOnly...)
	case FormatHorcrux:
		foreign = []string{"block_id"}
	}
	for _, k := range foreign {
		if _, ok := obj[k]; ok {
			return k
		}
	}
	return ""
}

func detect(obj map[string]json.RawMessage) (string, error) {
	_, hasHeight := obj["height"]
	_, hasRound := obj["round"]
	_, hasStep := obj["step"]
	if !hasHeight && !hasRound && !hasStep {
		if _, ok := obj["priv_key"]; ok {
			return "", &Error{Err: errors.New("this is a key file (priv_validator_key.json), not a state file; import priv_validator_state.json")}
		}
		return "", &Error{Err: errors.New("no height, round or step field: not a CometBFT, tmkms or horcrux state file")}
	}
	horcrux := ""
	for _, k := range horcruxOnly {
		if _, ok := obj[k]; ok {
			horcrux = k
			break
		}
	}
	_, hasBlockID := obj["block_id"]
	_, hasSignBytes := obj["signbytes"]
	_, hasSignature := obj["signature"]
	switch {
	case hasBlockID && (horcrux != "" || hasSignBytes || hasSignature):
		// No signer writes both; guessing wrong would misread tmkms's step
		// numbering, so the file is refused rather than guessed at.
		return "", &Error{Err: errors.New("has tmkms's block_id together with CometBFT/horcrux fields (signbytes, signature, nonce_public, ...): no known signer writes both")}
	case hasBlockID:
		// tmkms always writes block_id (null when absent); nothing else does.
		return FormatTmkms, nil
	case horcrux != "":
		return FormatHorcrux, nil
	case isJSONString(obj["round"]):
		// FilePV writes round as a number (int32); horcrux writes an int64,
		// which CometBFT's JSON quotes. The steps are numbered alike, so
		// the distinction only changes how signbytes are decoded.
		return FormatHorcrux, nil
	default:
		return FormatCometBFT, nil
	}
}

func isJSONString(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) > 0 && raw[0] == '"'
}
