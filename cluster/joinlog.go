package cluster

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// A normal join goes: `kms-ha join` has the leader admit the node as a
// non-voter while the node waits with its raft port closed; the node
// starts raft once it reads its admission (see awaitAdmission in package
// node). In between, the leader's replication to it meets a refused
// connection, and raft logs each attempt at ERROR ("failed to appendEntries
// to", "failed to heartbeat to"): 2 to 4 lines on every join, that an
// operator learns to ignore. joinLog tells that case apart: a non-voter the
// leader has never reached gets one INFO line saying what the leader waits
// for, the retries go to DEBUG, and a WARN repeats now and then if it never
// starts. Once the member has answered once, or as soon as it is a voter,
// raft's errors about it are logged as raft logs them.
type joinLog struct {
	raft atomic.Pointer[raft.Raft]

	mu      sync.Mutex
	reached map[raft.ServerAddress]bool
	waiting map[raft.ServerAddress]*waitNote
}

type waitNote struct{ first, last time.Time }

// joinWaitWarn is how long a non-voter may stay unreached before the
// leader warns that it does not run, and how often it warns again.
const joinWaitWarn = time.Minute

func newJoinLog() *joinLog {
	return &joinLog{reached: map[raft.ServerAddress]bool{}, waiting: map[raft.ServerAddress]*waitNote{}}
}

// reach records an RPC the member at addr answered.
func (j *joinLog) reach(addr raft.ServerAddress) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if !j.reached[addr] {
		j.reached[addr] = true
		delete(j.waiting, addr)
	}
}

// forget is called when a node is admitted at addr: a new incarnation
// (a member re-added after losing its data) waits to start like any other.
func (j *joinLog) forget(addr raft.ServerAddress) {
	j.mu.Lock()
	defer j.mu.Unlock()
	delete(j.reached, addr)
	delete(j.waiting, addr)
}

type joinLevel int

const (
	asRaftLogs joinLevel = iota // not a waiting non-voter: log as raft does
	joinFirst                   // first failure: one INFO line
	joinQuiet                   // retries: DEBUG
	joinLong                    // unreached for joinWaitWarn: WARN
)

// level says how loud a replication error about addr should be, at now.
func (j *joinLog) level(addr raft.ServerAddress, now time.Time) joinLevel {
	r := j.raft.Load()
	if r == nil || !isNonvoter(r, addr) {
		return asRaftLogs
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.reached[addr] {
		return asRaftLogs
	}
	w := j.waiting[addr]
	switch {
	case w == nil:
		j.waiting[addr] = &waitNote{first: now, last: now}
		return joinFirst
	case now.Sub(w.last) >= joinWaitWarn:
		w.last = now
		return joinLong
	}
	return joinQuiet
}

// isNonvoter reads raft's latest configuration, which GetConfiguration
// answers without a round trip through raft's loop, so it is safe from
// raft's own goroutines.
func isNonvoter(r *raft.Raft, addr raft.ServerAddress) bool {
	cf := r.GetConfiguration()
	if cf.Error() != nil {
		return false
	}
	for _, s := range cf.Configuration().Servers {
		if s.Address == addr {
			return s.Suffrage == raft.Nonvoter
		}
	}
	return false
}

// peerAddr finds the peer's address in the arguments of raft's replication
// log calls: "peer" is a raft.Server or a raft.ServerAddress there.
func peerAddr(args []any) (raft.ServerAddress, bool) {
	for i := 0; i+1 < len(args); i += 2 {
		if k, _ := args[i].(string); k != "peer" {
			continue
		}
		switch v := args[i+1].(type) {
		case raft.Server:
			return v.Address, true
		case raft.ServerAddress:
			return v, true
		}
	}
	return "", false
}

// raftLogger is raft's logger, with its errors about a waiting non-voter
// rated by joinLog.
type raftLogger struct {
	hclog.Logger
	j *joinLog
}

func (l raftLogger) Error(msg string, args ...any) {
	addr, ok := peerAddr(args)
	if !ok {
		l.Logger.Error(msg, args...)
		return
	}
	switch l.j.level(addr, time.Now()) {
	case joinFirst:
		l.Logger.Info("admitted member is not running raft yet; the leader replicates to it once it starts "+
			"(a node that `kms-ha join` admitted starts raft within a second)", "peer", addr, "error", errArg(args))
	case joinQuiet:
		l.Logger.Debug(msg, args...)
	case joinLong:
		l.Logger.Warn("admitted member has not answered since it was admitted; is kms-ha running there?", "peer", addr,
			"error", errArg(args))
	default:
		l.Logger.Error(msg, args...)
	}
}

func (l raftLogger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Error {
		l.Error(msg, args...)
		return
	}
	l.Logger.Log(level, msg, args...)
}

func (l raftLogger) With(args ...any) hclog.Logger { return raftLogger{l.Logger.With(args...), l.j} }
func (l raftLogger) Named(name string) hclog.Logger {
	return raftLogger{l.Logger.Named(name), l.j}
}

func (l raftLogger) ResetNamed(name string) hclog.Logger {
	return raftLogger{l.Logger.ResetNamed(name), l.j}
}

func errArg(args []any) any {
	for i := 0; i+1 < len(args); i += 2 {
		if k, _ := args[i].(string); k == "error" {
			return args[i+1]
		}
	}
	return nil
}
