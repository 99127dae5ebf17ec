package fsm

import (
	"encoding/json"
	"errors"
	"fmt"
)

// CommandType identifies a log entry's kind. Values are never reused.
type CommandType uint8

const (
	// CmdReserve reserves a chain's next height/round/step.
	CmdReserve CommandType = 1
	// CmdSetMember records a member's API address, so that any node can
	// forward writes to the leader and show operators where members listen.
	CmdSetMember CommandType = 2
	// CmdImport raises a chain's watermark to an operator's state (an
	// imported priv_validator_state.json, a backup, or the empty state of
	// a new chain); it never lowers one.
	CmdImport CommandType = 3
	// CmdSetChainKey records the public key a chain is signed with, so that
	// a node whose backend holds another key never leads.
	CmdSetChainKey CommandType = 4
)

// Level is the command set this binary understands: 0 for types 1 and 2 at
// version 1 (the first release); 1 adds CmdImport, CmdSetChainKey and
// CmdReserve version 2. Members record their level; a leader writes an
// entry only when every member's level covers it, because a member that
// refuses an entry the others applied diverges from them.
const Level = 1

// levelOf is the level a command type needs at its newest version.
var levelOf = map[CommandType]int{
	CmdReserve:     1, // version 2; version 1 needs level 0
	CmdSetMember:   0,
	CmdImport:      1,
	CmdSetChainKey: 1,
}

// RequiredLevel returns the member level a command type needs.
func RequiredLevel(t CommandType) int { return levelOf[t] }

// entryLevel is the level an entry of type t at version v needs.
func entryLevel(t CommandType, v uint8) int {
	if t == CmdReserve && v == 1 {
		return 0
	}
	return levelOf[t]
}

// The newest version this FSM understands, per type; every older version
// is still read, with its own meaning, because raft replays old entries
// after an upgrade. A leader only writes a version every member
// understands; an entry of an unknown type or version is refused without
// touching state, so an old binary can never misread it.
var supported = map[CommandType]uint8{
	CmdReserve:     2,
	CmdSetMember:   1,
	CmdImport:      1,
	CmdSetChainKey: 1,
}

// ErrUnknownCommand is returned (as the apply result) for an entry this
// binary does not understand.
var ErrUnknownCommand = errors.New("fsm: unknown command type or version")

// Reserve is the body of CmdReserve. Version 1 (the first release) treats
// a chain without a watermark as being at zero; version 2 refuses it, so a
// chain is signed for only once its state was imported or started fresh.
// The meaning is the entry's, not the binary's: a replayed version 1 entry
// applies exactly as it did when it was first applied.
type Reserve struct {
	ChainID   string `json:"chain_id"`
	HRS       HRS    `json:"hrs"`
	SignBytes []byte `json:"sign_bytes"`
	// NeedState is true for version 2; it is carried by the version byte,
	// not the body.
	NeedState bool `json:"-"`
}

// SetMember is the body of CmdSetMember. Level was added with level 1;
// an entry without it records level 0.
type SetMember struct {
	ID      string `json:"id"`
	APIAddr string `json:"api_addr"`
	Level   int    `json:"level,omitempty"`
}

// Import is the body of CmdImport.
type Import struct {
	ChainID string `json:"chain_id"`
	HRS     HRS    `json:"hrs"`
	// SignBytes may be empty: the position is then taken, and a request at
	// exactly that position is refused because it cannot be compared.
	SignBytes []byte `json:"sign_bytes,omitempty"`
	// Source says where the state came from, for the operator's record.
	Source string `json:"source,omitempty"`
}

// SetChainKey is the body of CmdSetChainKey.
type SetChainKey struct {
	ChainID string `json:"chain_id"`
	// PubKey is the raw public key; KeyType is CometBFT's type name.
	PubKey  []byte `json:"pub_key"`
	KeyType string `json:"key_type"`
}

// Encode frames a command: one byte of type, one of version, then the body.
func Encode(t CommandType, body any) ([]byte, error) {
	v, ok := supported[t]
	if !ok {
		return nil, fmt.Errorf("fsm: encode: %w: type %d", ErrUnknownCommand, t)
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("fsm: encode type %d: %w", t, err)
	}
	return append([]byte{byte(t), v}, b...), nil
}

// EncodeReserve is Encode for the hot path's one command, at version 2
// when r.NeedState, else at version 1.
func EncodeReserve(r Reserve) ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("fsm: encode reserve: %w", err)
	}
	v := uint8(1)
	if r.NeedState {
		v = 2
	}
	return append([]byte{byte(CmdReserve), v}, b...), nil
}

// Decode parses an entry into its type and body. It never panics on
// arbitrary input. Versions other than a type's newest are read only for
// CmdReserve (1 and 2); every other type has a single version so far.
func Decode(data []byte) (CommandType, any, error) {
	if len(data) < 2 {
		return 0, nil, fmt.Errorf("fsm: decode: entry of %d bytes is too short", len(data))
	}
	t, v := CommandType(data[0]), data[1]
	if newest, ok := supported[t]; !ok || v == 0 || v > newest {
		return t, nil, fmt.Errorf("fsm: decode type %d version %d: %w", t, v, ErrUnknownCommand)
	}
	var body any
	switch t {
	case CmdReserve:
		var r Reserve
		if err := json.Unmarshal(data[2:], &r); err != nil {
			return t, nil, fmt.Errorf("fsm: decode reserve: %w", err)
		}
		if r.ChainID == "" {
			return t, nil, errors.New("fsm: decode reserve: empty chain id")
		}
		r.NeedState = v >= 2
		body = r
	case CmdSetMember:
		var m SetMember
		if err := json.Unmarshal(data[2:], &m); err != nil {
			return t, nil, fmt.Errorf("fsm: decode set-member: %w", err)
		}
		if m.ID == "" {
			return t, nil, errors.New("fsm: decode set-member: empty id")
		}
		body = m
	case CmdImport:
		var im Import
		if err := json.Unmarshal(data[2:], &im); err != nil {
			return t, nil, fmt.Errorf("fsm: decode import: %w", err)
		}
		if im.ChainID == "" {
			return t, nil, errors.New("fsm: decode import: empty chain id")
		}
		body = im
	case CmdSetChainKey:
		var k SetChainKey
		if err := json.Unmarshal(data[2:], &k); err != nil {
			return t, nil, fmt.Errorf("fsm: decode set-chain-key: %w", err)
		}
		if k.ChainID == "" || len(k.PubKey) == 0 {
			return t, nil, errors.New("fsm: decode set-chain-key: empty chain id or key")
		}
		body = k
	}
	return t, body, nil
}
