package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM holds every chain's watermark and public key and the members' API
// addresses and levels. It implements raft.FSM; reads are safe from any
// goroutine.
type FSM struct {
	mu      sync.RWMutex
	chains  map[string]Watermark
	keys    map[string]ChainKey
	members map[string]MemberInfo
	// maxLevel is the highest level any applied entry needed: a member
	// whose binary is below it would misapply the log, so it may not join.
	maxLevel int
}

// MemberInfo is what a member registered about itself.
type MemberInfo struct {
	APIAddr string `json:"api_addr"`
	Level   int    `json:"level,omitempty"`
}

// ChainKey is the public key recorded for a chain.
type ChainKey struct {
	PubKey  []byte `json:"pub_key"`
	KeyType string `json:"key_type"`
}

// New returns an empty state machine.
func New() *FSM {
	return &FSM{chains: map[string]Watermark{}, keys: map[string]ChainKey{}, members: map[string]MemberInfo{}}
}

// ReasonNoState refuses a chain the cluster holds no watermark for: signing
// from an empty watermark could repeat what another signer already signed.
const ReasonNoState = "no_state"

// StateRefusal decides whether a reservation for chainID is refused
// because the cluster holds no watermark for it, and returns the refusal.
// It is the one place of that rule: the FSM applies it to version 2
// reservations, the leader before writing a version 1 one (which would
// sign the chain from zero), the node when it warns at leadership.
func (f *FSM) StateRefusal(chainID string) (Decision, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	_, has := f.chains[chainID]
	return stateRefusal(chainID, has)
}

func stateRefusal(chainID string, has bool) (Decision, bool) {
	if has {
		return Decision{}, false
	}
	return Decision{Outcome: Refuse, Reason: ReasonNoState, Detail: fmt.Sprintf(
		"the cluster holds no watermark for chain %s: import the validator's last state with `kms-ha state import`, "+
			"or, for a validator that never signed, start a node with --allow-fresh-state %s", chainID, chainID)}, true
}

// ImportResult is the result of applying a CmdImport.
type ImportResult struct {
	// Applied is false when the import would not raise the watermark.
	Applied bool
	// Previous is the watermark before the import (Had false: none).
	Previous Watermark
	Had      bool
	// Current is the watermark after the import.
	Current Watermark
}

// KeyResult is the result of applying a CmdSetChainKey.
type KeyResult struct {
	// Recorded is the key the cluster holds for the chain after the entry;
	// it differs from the entry's key when another key was recorded first.
	Recorded ChainKey
	Matches  bool
}

// RecordResult is the result of applying a CmdRecordSignature.
type RecordResult struct {
	// Recorded is false when the chain's watermark is no longer the
	// entry's position and bytes: the signature must not be released.
	Recorded bool
	// Signature is the signature the cluster holds for the watermark: the
	// entry's, or the one recorded before it (the first one wins, and is
	// the one to release).
	Signature []byte
	// Detail explains a refusal to an operator.
	Detail string
}

// Apply applies one committed entry through its type's row of the commands
// table. For CmdReserve it returns a Decision, for CmdImport an
// ImportResult, for CmdSetChainKey a KeyResult, for CmdSetMember struct{};
// for an entry it cannot decode it returns an error and changes nothing.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	c, v, body, err := decode(l.Data)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.maxLevel = max(f.maxLevel, c.level(v))
	return c.apply(f, body)
}

func (f *FSM) applyReserve(r Reserve) Decision {
	cur, ok := f.chains[r.ChainID]
	if r.NeedState {
		if d, refused := stateRefusal(r.ChainID, ok); refused {
			return d
		}
	}
	d := Decide(cur, r.HRS, r.SignBytes)
	if d.Outcome == Allow {
		f.chains[r.ChainID] = d.Watermark
	}
	return d
}

// applySetMember records a member, or forgets it when APIAddr is empty.
// There is nothing to report: its result is struct{}{}.
func (f *FSM) applySetMember(m SetMember) struct{} {
	if m.APIAddr == "" {
		delete(f.members, m.ID)
	} else {
		f.members[m.ID] = MemberInfo{APIAddr: m.APIAddr, Level: m.Level}
	}
	return struct{}{}
}

func (f *FSM) applyImport(im Import) ImportResult {
	cur, had := f.chains[im.ChainID]
	res := ImportResult{Previous: cur, Had: had, Current: cur}
	if im.HRS.Height < 0 || im.HRS.Round < 0 || im.HRS.Step < StepNone || im.HRS.Step > StepPrecommit {
		return res
	}
	if !had || im.HRS.Compare(cur.HRS) > 0 {
		next := Watermark{HRS: im.HRS, SignBytes: bytes.Clone(im.SignBytes)}
		f.chains[im.ChainID] = next
		res.Applied, res.Current = true, next
	}
	return res
}

func (f *FSM) applySetChainKey(k SetChainKey) KeyResult {
	cur, ok := f.keys[k.ChainID]
	if !ok {
		cur = ChainKey{PubKey: bytes.Clone(k.PubKey), KeyType: k.KeyType}
		f.keys[k.ChainID] = cur
	}
	return KeyResult{Recorded: cur, Matches: bytes.Equal(cur.PubKey, k.PubKey) && cur.KeyType == k.KeyType}
}

func (f *FSM) applyRecordSignature(r RecordSignature) RecordResult {
	cur, ok := f.chains[r.ChainID]
	if !ok || cur.HRS != r.HRS || !bytes.Equal(cur.SignBytes, r.SignBytes) {
		return RecordResult{Detail: fmt.Sprintf("the watermark of chain %s moved on from %s before its signature was recorded", r.ChainID, r.HRS)}
	}
	if len(cur.Signature) == 0 {
		cur.Signature = bytes.Clone(r.Signature)
		f.chains[r.ChainID] = cur
	}
	return RecordResult{Recorded: true, Signature: bytes.Clone(cur.Signature)}
}

// MaxLevel is the highest level an applied entry needed.
func (f *FSM) MaxLevel() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.maxLevel
}

// Watermark returns a chain's watermark and whether it has one.
func (f *FSM) Watermark(chainID string) (Watermark, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	w, ok := f.chains[chainID]
	return w, ok
}

// Watermarks returns a copy of every chain's watermark.
func (f *FSM) Watermarks() map[string]Watermark {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.chains)
}

// ChainKey returns the public key recorded for a chain.
func (f *FSM) ChainKey(chainID string) (ChainKey, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	k, ok := f.keys[chainID]
	return k, ok
}

// ChainKeys returns a copy of every recorded chain key.
func (f *FSM) ChainKeys() map[string]ChainKey {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.keys)
}

// MemberAPIAddr returns the API address a member registered.
func (f *FSM) MemberAPIAddr(id string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.members[id].APIAddr
}

// Member returns what a member registered and whether it did.
func (f *FSM) Member(id string) (MemberInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	m, ok := f.members[id]
	return m, ok
}

// Members returns every registered member.
func (f *FSM) Members() map[string]MemberInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.members)
}

// snapshotVersion is bumped when the snapshot layout changes; Restore
// refuses versions it does not know rather than guess. Version 1 (members
// as plain API addresses, no keys) is still read.
const snapshotVersion = 2

// State is the whole replicated state, as snapshots and backups hold it.
type State struct {
	Version  int                   `json:"version"`
	Chains   map[string]Watermark  `json:"chains"`
	Keys     map[string]ChainKey   `json:"keys,omitempty"`
	Members  map[string]MemberInfo `json:"members"`
	MaxLevel int                   `json:"max_level,omitempty"`
}

type snapshotV1 struct {
	Version int                  `json:"version"`
	Chains  map[string]Watermark `json:"chains"`
	Members map[string]string    `json:"members"`
}

// State returns a copy of the whole state.
func (f *FSM) State() State {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return State{
		Version:  snapshotVersion,
		Chains:   maps.Clone(f.chains),
		Keys:     maps.Clone(f.keys),
		Members:  maps.Clone(f.members),
		MaxLevel: f.maxLevel,
	}
}

// Snapshot captures the state; Persist may run concurrently with Apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{data: f.State()}, nil
}

// DecodeState parses a snapshot or backup of any version this binary reads.
func DecodeState(data []byte) (State, error) {
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return State{}, fmt.Errorf("fsm: state: %w", err)
	}
	var d State
	switch head.Version {
	case 1:
		var v1 snapshotV1
		if err := json.Unmarshal(data, &v1); err != nil {
			return State{}, fmt.Errorf("fsm: state v1: %w", err)
		}
		d = State{Version: snapshotVersion, Chains: v1.Chains, Members: map[string]MemberInfo{}}
		for id, addr := range v1.Members {
			d.Members[id] = MemberInfo{APIAddr: addr}
		}
	case snapshotVersion:
		if err := json.Unmarshal(data, &d); err != nil {
			return State{}, fmt.Errorf("fsm: state: %w", err)
		}
	default:
		return State{}, fmt.Errorf("fsm: state version %d is not supported by this binary (want 1 or %d)", head.Version, snapshotVersion)
	}
	if d.Chains == nil {
		d.Chains = map[string]Watermark{}
	}
	if d.Keys == nil {
		d.Keys = map[string]ChainKey{}
	}
	if d.Members == nil {
		d.Members = map[string]MemberInfo{}
	}
	return d, nil
}

// ErrWouldLower refuses a snapshot that would lower a watermark or forget
// a chain this replica holds.
var ErrWouldLower = errors.New("the snapshot would lower this replica's watermarks")

// Restore replaces the state with a snapshot's, unless the snapshot would
// lower a watermark this replica holds or forget one of its chains: a
// legitimate snapshot never does (watermarks only rise in log order), so
// such a snapshot comes from a faulty or hostile peer, and installing it
// would let this node sign those heights again. The state is then kept.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	d, err := DecodeState(data)
	if err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := checkNotLower(f.chains, d.Chains); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	f.chains, f.keys, f.members, f.maxLevel = d.Chains, d.Keys, d.Members, d.MaxLevel
	return nil
}

// checkNotLower names every chain of have that next would lower or drop.
func checkNotLower(have, next map[string]Watermark) error {
	var problems []string
	for _, id := range slices.Sorted(maps.Keys(have)) {
		w := have[id]
		n, ok := next[id]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("chain %s (at %s here) is missing from it", id, w.HRS))
		case n.HRS.Compare(w.HRS) < 0:
			problems = append(problems, fmt.Sprintf("chain %s would go from %s down to %s", id, w.HRS, n.HRS))
		case n.HRS == w.HRS && len(n.SignBytes) > 0 && !bytes.Equal(n.SignBytes, w.SignBytes):
			// A watermark's bytes never change at its position, so other
			// bytes there would let a second message be signed at it.
			problems = append(problems, fmt.Sprintf("chain %s at %s would hold other sign bytes than this replica's", id, w.HRS))
		case n.HRS == w.HRS && len(w.Signature) > 0 && !bytes.Equal(n.Signature, w.Signature):
			// Without the released signature a new leader would sign again,
			// and a key that is not deterministic would release a second one.
			problems = append(problems, fmt.Sprintf("chain %s at %s would lose or change the signature released there", id, w.HRS))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s; keeping the current state", ErrWouldLower, strings.Join(problems, "; "))
	}
	return nil
}

type snapshot struct{ data State }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	// encoding/json sorts map keys, so equal states give equal snapshots.
	if err := json.NewEncoder(sink).Encode(s.data); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
