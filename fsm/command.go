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
	// CmdRecordSignature records the signature released at a chain's
	// watermark, for keys whose signatures are not deterministic: a new
	// leader answers a repeated request with it instead of a new one.
	CmdRecordSignature CommandType = 5
)

// Level is the command set this binary understands: 0 for types 1 and 2 at
// version 1 (the first release); 1 adds CmdImport, CmdSetChainKey and
// CmdReserve version 2; 2 adds CmdRecordSignature. Members record their level; a leader writes an
// entry only when every member's level covers it, because a member that
// refuses an entry the others applied diverges from them. It is the
// highest level in the commands table (a test checks it), kept a constant
// because members send it to each other.
const Level = 2

// command is everything the FSM knows about one entry type: one row of
// the commands table.
type command struct {
	name string
	// levels[v-1] is the member level an entry at version v needs, so the
	// type's newest version is len(levels). Every older version is still
	// read, with its own meaning, because raft replays old entries after
	// an upgrade. A leader only writes a version every member understands;
	// an entry of an unknown type or version is refused without touching
	// state, so an old binary can never misread it.
	levels []int
	// decode parses and checks the body of an entry at version v.
	decode func(v uint8, body []byte) (any, error)
	// apply applies a decoded body under the FSM's write lock and returns
	// the entry's result.
	apply func(f *FSM, body any) any
}

func (c *command) newest() uint8 { return uint8(len(c.levels)) }

// level is the member level an entry at version v (known to be read) needs.
func (c *command) level(v uint8) int { return c.levels[v-1] }

// spec describes a command with its body type T and result type R; define
// turns it into a table row.
type spec[T, R any] struct {
	name   string
	levels []int
	// check refuses a body that decoded but is not valid, and fills what
	// the version carries rather than the body.
	check func(v uint8, body *T) error
	apply func(f *FSM, body T) R
}

func define[T, R any](s spec[T, R]) *command {
	return &command{
		name:   s.name,
		levels: s.levels,
		decode: func(v uint8, data []byte) (any, error) {
			var body T
			if err := json.Unmarshal(data, &body); err != nil {
				return nil, fmt.Errorf("fsm: decode %s: %w", s.name, err)
			}
			if err := s.check(v, &body); err != nil {
				return nil, fmt.Errorf("fsm: decode %s: %w", s.name, err)
			}
			return body, nil
		},
		apply: func(f *FSM, body any) any { return s.apply(f, body.(T)) },
	}
}

// commands is the command table, indexed by type: the one place that says
// what each type's versions need, how it is read and how it applies.
var commands = [...]*command{
	CmdReserve: define(spec[Reserve, Decision]{
		name: "reserve",
		// Version 1 needs level 0 (the first release); version 2 refuses a
		// chain without a watermark and needs level 1.
		levels: []int{0, 1},
		check: func(v uint8, r *Reserve) error {
			if r.ChainID == "" {
				return errors.New("empty chain id")
			}
			r.NeedState = v >= 2
			return nil
		},
		apply: (*FSM).applyReserve,
	}),
	CmdSetMember: define(spec[SetMember, struct{}]{
		name:   "set-member",
		levels: []int{0},
		check: func(_ uint8, m *SetMember) error {
			if m.ID == "" {
				return errors.New("empty id")
			}
			return nil
		},
		apply: (*FSM).applySetMember,
	}),
	CmdImport: define(spec[Import, ImportResult]{
		name:   "import",
		levels: []int{1},
		check: func(_ uint8, im *Import) error {
			if im.ChainID == "" {
				return errors.New("empty chain id")
			}
			return nil
		},
		apply: (*FSM).applyImport,
	}),
	CmdSetChainKey: define(spec[SetChainKey, KeyResult]{
		name:   "set-chain-key",
		levels: []int{1},
		check: func(_ uint8, k *SetChainKey) error {
			if k.ChainID == "" || len(k.PubKey) == 0 {
				return errors.New("empty chain id or key")
			}
			return nil
		},
		apply: (*FSM).applySetChainKey,
	}),
	CmdRecordSignature: define(spec[RecordSignature, RecordResult]{
		name:   "record-signature",
		levels: []int{2},
		check: func(_ uint8, r *RecordSignature) error {
			if r.ChainID == "" || len(r.SignBytes) == 0 || len(r.Signature) == 0 {
				return errors.New("empty chain id, sign bytes or signature")
			}
			return nil
		},
		apply: (*FSM).applyRecordSignature,
	}),
}

// lookup returns the table row of a type, nil for a type this binary does
// not know.
func lookup(t CommandType) *command {
	if int(t) < len(commands) {
		return commands[t]
	}
	return nil
}

// RequiredLevel returns the member level a command type needs at its
// newest version.
func RequiredLevel(t CommandType) int {
	if c := lookup(t); c != nil {
		return c.level(c.newest())
	}
	return 0
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

// RecordSignature is the body of CmdRecordSignature: the signature over
// SignBytes at HRS that the leader is about to release.
type RecordSignature struct {
	ChainID   string `json:"chain_id"`
	HRS       HRS    `json:"hrs"`
	SignBytes []byte `json:"sign_bytes"`
	Signature []byte `json:"signature"`
}

// Encode frames a command at its type's newest version: one byte of type,
// one of version, then the body.
func Encode(t CommandType, body any) ([]byte, error) {
	c := lookup(t)
	if c == nil {
		return nil, fmt.Errorf("fsm: encode: %w: type %d", ErrUnknownCommand, t)
	}
	return encode(t, c.newest(), body)
}

// EncodeReserve is Encode for the hot path's one command, at version 2
// when r.NeedState, else at version 1.
func EncodeReserve(r Reserve) ([]byte, error) {
	v := uint8(1)
	if r.NeedState {
		v = 2
	}
	return encode(CmdReserve, v, r)
}

func encode(t CommandType, v uint8, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("fsm: encode type %d: %w", t, err)
	}
	return append([]byte{byte(t), v}, b...), nil
}

// Decode parses an entry into its type and body. It never panics on
// arbitrary input.
func Decode(data []byte) (CommandType, any, error) {
	_, _, body, err := decode(data)
	if len(data) < 2 {
		return 0, nil, err
	}
	return CommandType(data[0]), body, err
}

// decode parses an entry into the row of its type, its version and body.
func decode(data []byte) (*command, uint8, any, error) {
	if len(data) < 2 {
		return nil, 0, nil, fmt.Errorf("fsm: decode: entry of %d bytes is too short", len(data))
	}
	t, v := CommandType(data[0]), data[1]
	c := lookup(t)
	if c == nil || v == 0 || v > c.newest() {
		return nil, v, nil, fmt.Errorf("fsm: decode type %d version %d: %w", t, v, ErrUnknownCommand)
	}
	body, err := c.decode(v, data[2:])
	if err != nil {
		return nil, v, nil, err
	}
	return c, v, body, nil
}
