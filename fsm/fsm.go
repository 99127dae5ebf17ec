package fsm

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"sync"

	"github.com/hashicorp/raft"
)

// FSM holds every chain's watermark and the members' API addresses. It
// implements raft.FSM; reads are safe from any goroutine.
type FSM struct {
	mu      sync.RWMutex
	chains  map[string]Watermark
	members map[string]string // node id -> API address
}

// New returns an empty state machine.
func New() *FSM {
	return &FSM{chains: map[string]Watermark{}, members: map[string]string{}}
}

// Apply applies one committed entry. For CmdReserve it returns a Decision;
// for an entry it cannot decode it returns an error and changes nothing.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return nil
	}
	t, body, err := Decode(l.Data)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch t {
	case CmdReserve:
		r := body.(Reserve)
		d := Decide(f.chains[r.ChainID], r.HRS, r.SignBytes)
		if d.Outcome == Allow {
			f.chains[r.ChainID] = d.Watermark
		}
		return d
	case CmdSetMember:
		m := body.(SetMember)
		if m.APIAddr == "" {
			delete(f.members, m.ID)
		} else {
			f.members[m.ID] = m.APIAddr
		}
	}
	return nil
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

// MemberAPIAddr returns the API address a member registered.
func (f *FSM) MemberAPIAddr(id string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.members[id]
}

// Members returns every registered member's API address.
func (f *FSM) Members() map[string]string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return maps.Clone(f.members)
}

// snapshotVersion is bumped when the snapshot layout changes; Restore
// refuses versions it does not know rather than guess.
const snapshotVersion = 1

type snapshotData struct {
	Version int                  `json:"version"`
	Chains  map[string]Watermark `json:"chains"`
	Members map[string]string    `json:"members"`
}

// Snapshot captures the state; Persist may run concurrently with Apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &snapshot{data: snapshotData{
		Version: snapshotVersion,
		Chains:  maps.Clone(f.chains),
		Members: maps.Clone(f.members),
	}}, nil
}

// Restore replaces the state with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var d snapshotData
	if err := json.NewDecoder(rc).Decode(&d); err != nil {
		return fmt.Errorf("fsm: restore: %w", err)
	}
	if d.Version != snapshotVersion {
		return fmt.Errorf("fsm: restore: snapshot version %d is not supported by this binary (want %d)", d.Version, snapshotVersion)
	}
	if d.Chains == nil {
		d.Chains = map[string]Watermark{}
	}
	if d.Members == nil {
		d.Members = map[string]string{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chains, f.members = d.Chains, d.Members
	return nil
}

type snapshot struct{ data snapshotData }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	// encoding/json sorts map keys, so equal states give equal snapshots.
	if err := json.NewEncoder(sink).Encode(s.data); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("fsm: persist snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
