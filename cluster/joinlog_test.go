package cluster

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// levelLog keeps every record's level and text, as an operator reads them.
type levelLog struct {
	mu    sync.Mutex
	lines []string
	level []slog.Level
}

func (h *levelLog) Enabled(context.Context, slog.Level) bool { return true }
func (h *levelLog) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *levelLog) WithGroup(string) slog.Handler            { return h }
func (h *levelLog) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool { b.WriteString(" " + a.String()); return true })
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lines = append(h.lines, b.String())
	h.level = append(h.level, r.Level)
	return nil
}

// at returns the lines logged at level or above since line from.
func (h *levelLog) at(level slog.Level, from int) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for i := from; i < len(h.lines); i++ {
		if h.level[i] >= level {
			out = append(out, h.lines[i])
		}
	}
	return out
}

func (h *levelLog) len() int { h.mu.Lock(); defer h.mu.Unlock(); return len(h.lines) }

// A normal join: `kms-ha join` has the leader admit the node while the
// node waits with its raft port closed, and the node starts raft only
// once it reads its admission (up to a poll interval later). The leader
// reaches a closed port in between; that is the join going as planned,
// not an error, and the leader's log says nothing at ERROR. Once the
// member has answered, a member that stops answering is an error again.
func TestNormalJoinLogsNoErrorOnTheLeader(t *testing.T) {
	p := newAuthPKI(t)
	dir := t.TempDir()
	log := &levelLog{}
	member := func(id string, l *slog.Logger) *tlsMember {
		return &tlsMember{cfg: Config{NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: freeTCP(t), Logger: l,
			HeartbeatTimeout: 250 * time.Millisecond, ElectionTimeout: 250 * time.Millisecond,
			LeaderLeaseTimeout: 125 * time.Millisecond, ApplyTimeout: time.Second,
			TLS: p.tls(t, p.files(t, id, ""))}}
	}
	A, D := member("A", slog.New(log)), member("D", quiet)
	t.Cleanup(func() { D.stop(); A.stop() })
	if err := Bootstrap(A.cfg, nil); err != nil {
		t.Fatal(err)
	}
	A.start(t)
	waitTrue(t, "A to lead", 5*time.Second, func() bool { return A.node.termReady.Load() })

	// Admitted, not yet running: the leader's replication meets a
	// refused connection for as long as the node waits.
	if err := A.node.admit("D", D.cfg.BindAddr, true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if err := MarkJoined(D.cfg, time.Second, []string{"A"}); err != nil {
		t.Fatal(err)
	}
	D.start(t)
	waitTrue(t, "D to catch up", 5*time.Second, func() bool { return D.node.Stats().LastIndex >= A.node.raft.CommitIndex() })
	if errs := log.at(slog.LevelError, 0); len(errs) > 0 {
		t.Fatalf("a normal join logged %d ERROR lines on the leader:\n%s", len(errs), strings.Join(errs, "\n"))
	}
	if waited := log.at(slog.LevelInfo, 0); !containsAll(waited, "not running raft yet") {
		t.Errorf("the leader's log does not say it waits for the admitted node: %q", waited)
	}

	// D has answered: when it stops answering, the leader says so at ERROR.
	if err := A.node.raft.AddVoter("D", raft.ServerAddress(D.cfg.BindAddr), 0, time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	from := log.len()
	D.stop()
	waitTrue(t, "an ERROR line about the stopped member", 5*time.Second, func() bool {
		return containsAll(log.at(slog.LevelError, from), D.cfg.BindAddr)
	})
}

func containsAll(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}
