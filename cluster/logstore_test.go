package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/metadb"

	"github.com/kms-ha/kms-ha/fsm"
)

// boltDir writes a data dir as an earlier version left it: raft.db with a
// log (entries 1 to 40), a term, a vote, the join mark, the
// node id and the join peers.
func boltDir(t *testing.T) Config {
	t.Helper()
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet, LogStore: LogStoreBolt}
	c.setDefaults()
	if err := MarkJoined(c, time.Second, []string{"n2", "n3"}); err != nil {
		t.Fatal(err)
	}
	st, err := openStores(&c)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var logs []*raft.Log
	for i := uint64(1); i <= 40; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 6 + i/20, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i))})
	}
	if err := st.db.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]uint64{"CurrentTerm": 8, "LastVoteTerm": 8} {
		if err := st.db.SetUint64([]byte(k), v); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.db.Set([]byte("LastVoteCand"), []byte("n2")); err != nil {
		t.Fatal(err)
	}
	return c
}

// wantMigrated opens wal/ with raft-wal itself and checks it holds what
// boltDir wrote, and that nothing of the migration is left.
func wantMigrated(t *testing.T, c Config) {
	t.Helper()
	for _, gone := range []string{boltFileName, preWALName, walTmpName} {
		if exists(filepath.Join(c.DataDir, gone)) {
			t.Errorf("%s is still there after the migration", gone)
		}
	}
	// raft-wal's own Open, not ours; its meta file closed by hand too, in
	// case a failed Open left it open.
	meta := &metadb.BoltMetaDB{}
	w, err := wal.Open(filepath.Join(c.DataDir, walDirName), wal.WithMetaStore(meta))
	if err != nil {
		t.Fatal(err)
	}
	defer meta.Close()
	defer w.Close()
	first, _ := w.FirstIndex()
	last, _ := w.LastIndex()
	if first != 1 || last != 40 {
		t.Fatalf("WAL holds entries %d to %d, want 1 to 40", first, last)
	}
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := w.GetLog(i, &l); err != nil || string(l.Data) != fmt.Sprintf("entry %d", i) || l.Term != 6+i/20 {
			t.Fatalf("entry %d: %v term %d %q", i, err, l.Term, l.Data)
		}
	}
	for k, want := range map[string]uint64{"CurrentTerm": 8, "LastVoteTerm": 8, string(keyJoined): 1} {
		if got, err := w.GetUint64([]byte(k)); err != nil || got != want {
			t.Errorf("%s = %d (%v), want %d", k, got, err, want)
		}
	}
	for k, want := range map[string]string{"LastVoteCand": "n2", string(keyNodeID): "n1", string(keyJoinPeers): "n2\nn3"} {
		if got, err := w.Get([]byte(k)); err != nil || string(got) != want {
			t.Errorf("%s = %q (%v), want %q", k, got, err, want)
		}
	}
}

func TestMigrateBoltToWAL(t *testing.T) {
	c := boltDir(t)
	c.LogStore = LogStoreWAL
	var logged strings.Builder
	c.Logger = slog.New(slog.NewTextHandler(&logged, nil))
	s, err := ReadState(c, time.Second)
	if err != nil || !s.HasRaftState || !s.Joined {
		t.Fatalf("after the migration: %+v %v", s, err)
	}
	wantMigrated(t, c)
	if !strings.Contains(logged.String(), "level=INFO msg=\"raft log store migrated from raft.db to the WAL\"") ||
		!strings.Contains(logged.String(), "entries=40 first_index=1 last_index=40") {
		t.Errorf("the migration's log: %s", logged.String())
	}
	// A second open finds the WAL and leaves it as it is.
	if _, err := ReadState(c, time.Second); err != nil {
		t.Fatal(err)
	}
	wantMigrated(t, c)
}

// A migration whose first run never reached a step, resumed by the next
// start.
func TestMigrationResumesAfterACrash(t *testing.T) {
	rename := func(t *testing.T, c Config, from, to string) {
		if err := os.Rename(filepath.Join(c.DataDir, from), filepath.Join(c.DataDir, to)); err != nil {
			t.Fatal(err)
		}
	}
	copied := func(t *testing.T, c Config) {
		_, bs, err := copyToWAL(&c, filepath.Join(c.DataDir, boltFileName), filepath.Join(c.DataDir, walTmpName), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		bs.Close() // the crash: the process and its lock are gone
	}
	for _, tc := range []struct {
		name  string
		crash func(t *testing.T, c Config)
	}{
		{"during a", func(t *testing.T, c Config) {
			// A partial wal.tmp: a segment file with nothing valid in it.
			os.MkdirAll(filepath.Join(c.DataDir, walTmpName), 0o700)
			os.WriteFile(filepath.Join(c.DataDir, walTmpName, "00000000000000000001-0000000000000001.wal"), []byte("partial"), 0o600)
		}},
		{"after a", copied},
		{"after b", func(t *testing.T, c Config) { copied(t, c); rename(t, c, boltFileName, preWALName) }},
		{"after b, partial copy", func(t *testing.T, c Config) {
			rename(t, c, boltFileName, preWALName)
			os.MkdirAll(filepath.Join(c.DataDir, walTmpName), 0o700)
		}},
		{"after c", func(t *testing.T, c Config) {
			copied(t, c)
			rename(t, c, boltFileName, preWALName)
			rename(t, c, walTmpName, walDirName)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := boltDir(t)
			c.LogStore = LogStoreWAL
			tc.crash(t, c)
			s, err := ReadState(c, time.Second)
			if err != nil || !s.HasRaftState || !s.Joined {
				t.Fatalf("after resuming: %+v %v", s, err)
			}
			wantMigrated(t, c)
		})
	}
}

func TestConflictingStoresAreRefused(t *testing.T) {
	// Back to bolt after the WAL: refused with the way out.
	c := boltDir(t)
	c.LogStore = LogStoreWAL
	if _, err := ReadState(c, time.Second); err != nil {
		t.Fatal(err)
	}
	c.LogStore = LogStoreBolt
	_, err := ReadState(c, time.Second)
	if !errors.Is(err, ErrStoreConflict) || !strings.Contains(err.Error(), "kms-ha join") {
		t.Fatalf("bolt on a WAL data dir: %v", err)
	}
	if exists(filepath.Join(c.DataDir, boltFileName)) {
		t.Fatal("the refused bolt open created raft.db")
	}
	// A raft.db with raft state next to the WAL (an earlier kms-ha ran
	// after the upgrade): two histories, refused; the only way out is a
	// new admission.
	c.LogStore = LogStoreWAL
	boltPath := filepath.Join(c.DataDir, boltFileName)
	writeBolt := func(term uint64) {
		t.Helper()
		bs, err := openBoltStore(boltPath, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer bs.Close()
		if term > 0 {
			if err := bs.SetUint64(keyCurrentTerm, term); err != nil {
				t.Fatal(err)
			}
		}
	}
	writeBolt(9)
	_, err = ReadState(c, time.Second)
	if !errors.Is(err, ErrStoreConflict) || !strings.Contains(err.Error(), "term 9") ||
		!strings.Contains(err.Error(), "`kms-ha join`") || strings.Contains(err.Error(), "move raft.db") {
		t.Fatalf("raft.db next to wal/: %v", err)
	}
	if _, err := Open(c, fsm.New()); !errors.Is(err, ErrStoreConflict) || !exists(boltPath) {
		t.Fatalf("open with raft.db next to wal/: %v", err)
	}
	// The empty raft.db an earlier kms-ha creates when it only looked at
	// the data dir: removed, and the node starts on its WAL.
	os.Remove(boltPath)
	writeBolt(0)
	var logs syncBuffer
	c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s, err := ReadState(c, time.Second)
	if err != nil || !s.HasRaftState || !s.Joined || exists(boltPath) {
		t.Fatalf("empty raft.db next to wal/: %+v %v", s, err)
	}
	if !strings.Contains(logs.String(), "level=WARN msg=\"removed an empty raft.db beside the WAL") {
		t.Errorf("no warning of the removal:\n%s", logs.String())
	}
	// raft.db and raft.db.pre-wal, no WAL: which one is current is unknown.
	c2 := boltDir(t)
	c2.LogStore = LogStoreWAL
	os.Rename(filepath.Join(c2.DataDir, boltFileName), filepath.Join(c2.DataDir, preWALName))
	os.WriteFile(filepath.Join(c2.DataDir, boltFileName), nil, 0o600)
	if _, err := ReadState(c2, time.Second); !errors.Is(err, ErrStoreConflict) {
		t.Fatalf("raft.db next to raft.db.pre-wal: %v", err)
	}
	// bolt after a move stopped between steps b and c: refused, rather
	// than an empty raft.db beside the renamed one.
	c2.LogStore = LogStoreBolt
	os.Remove(filepath.Join(c2.DataDir, boltFileName))
	if _, err := ReadState(c2, time.Second); !errors.Is(err, ErrStoreConflict) || exists(filepath.Join(c2.DataDir, boltFileName)) {
		t.Fatalf("bolt beside raft.db.pre-wal: %v", err)
	}
	// The same with a raft.db there too: refused all the same.
	os.WriteFile(filepath.Join(c2.DataDir, boltFileName), nil, 0o600)
	if _, err := ReadState(c2, time.Second); !errors.Is(err, ErrStoreConflict) || !strings.Contains(err.Error(), preWALName) ||
		!strings.Contains(err.Error(), "`kms-ha join`") {
		t.Fatalf("bolt with raft.db beside raft.db.pre-wal: %v", err)
	}
	// An unknown store.
	c2.LogStore = "badger"
	if _, err := ReadState(c2, time.Second); err == nil || !strings.Contains(err.Error(), `unknown log store "badger"`) {
		t.Fatalf("unknown store: %v", err)
	}
}

func TestDataDirLockRefusesASecondOpen(t *testing.T) {
	for _, store := range []string{LogStoreWAL, LogStoreBolt} {
		t.Run(store, func(t *testing.T) {
			c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet, LogStore: store}
			c.setDefaults()
			st, err := openStores(&c)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if _, err := ReadState(c, 200*time.Millisecond); !errors.Is(err, ErrLocked) {
				t.Fatalf("ReadState on a held dir: %v", err)
			}
			if d := time.Since(start); d < 200*time.Millisecond || d > 2*time.Second {
				t.Errorf("gave up after %v; want the lock wait of 200ms", d)
			}
			c.lockTimeout = 100 * time.Millisecond
			_, err = Open(c, fsm.New())
			if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "is kms-ha already running with this --home?") {
				t.Fatalf("Open on a held dir: %v", err)
			}
			st.Close()
			if _, err := ReadState(c, time.Second); err != nil {
				t.Fatalf("after the holder closed: %v", err)
			}
		})
	}
}

// A damaged wal-meta.db is an error that names the file and the way out,
// not a panic inside raft-wal.
func TestDamagedWALMetaIsAnError(t *testing.T) {
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet}
	if err := MarkJoined(c, time.Second, nil); err != nil {
		t.Fatal(err)
	}
	meta := filepath.Join(c.DataDir, walDirName, metadb.FileName)
	f, err := os.OpenFile(meta, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Garbage over both header pages.
	f.WriteAt([]byte(strings.Repeat("x", 2*pageSize)), 0)
	f.Close()
	_, err = ReadState(c, time.Second)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), meta) ||
		!strings.Contains(err.Error(), "move the data dir "+c.DataDir+" away") {
		t.Fatalf("got %v", err)
	}
}

// A cluster with a node on bolt, one on the WAL from the start and one
// migrated from bolt while the others run: writes commit and apply on all
// three, before and after a leader change.
func TestMixedLogStoresCluster(t *testing.T) {
	ms := startThree(t, func(c *Config) {
		if c.NodeID != "b" {
			c.LogStore = LogStoreBolt
		}
	})
	a, c := ms[0], ms[2]
	ctx := context.Background()
	seed(t, a.node, []string{"a", "b", "c"}, "ch")
	reserve := func(l *memNode, h int64) {
		t.Helper()
		d, err := l.node.Reserve(ctx, "ch", fsm.HRS{Height: h, Step: fsm.StepPrevote}, []byte("A"))
		if err != nil || d.Outcome != fsm.Allow {
			t.Fatalf("reserve H%d on %s: %v %v", h, l.cfg.NodeID, d.Outcome, err)
		}
	}
	for h := int64(1); h <= 5; h++ {
		reserve(a, h)
	}
	// c upgrades: stop, switch to the WAL, start (migrating raft.db).
	c.live.Store(nil)
	if err := c.node.Shutdown(); err != nil {
		t.Fatal(err)
	}
	c.cfg.LogStore = LogStoreWAL
	startMem(t, c)
	link(ms...)
	if exists(filepath.Join(c.cfg.DataDir, boltFileName)) || !exists(filepath.Join(c.cfg.DataDir, walDirName)) {
		t.Fatal("c did not move to the WAL")
	}
	reserve(a, 6)
	waitHeight := func(m *memNode, h int64) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if w, _ := m.node.FSM().Watermark("ch"); w.Height >= h {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s did not apply H%d", m.cfg.NodeID, h)
			}
		}
	}
	for _, m := range ms {
		waitHeight(m, 6)
	}
	// The bolt leader hands over; the new leader (on the WAL) refuses a
	// conflict and commits on.
	if err := a.node.TransferLeadership(); err != nil {
		t.Fatal(err)
	}
	nl := leaderOf(t, ms)
	if nl == a {
		t.Fatal("leadership did not move")
	}
	if d, err := nl.node.Reserve(ctx, "ch", fsm.HRS{Height: 6, Step: fsm.StepPrevote}, []byte("B")); err == nil && d.Outcome != fsm.Refuse {
		t.Fatalf("DOUBLE SIGN: new leader %s allowed a conflicting H6", nl.cfg.NodeID)
	}
	reserve(nl, 7)
	for _, m := range ms {
		waitHeight(m, 7)
	}
}

// raft-boltdb keeps a follower's old entries after it installs a snapshot
// far ahead of them, leaving a gap raft-wal cannot hold: the migration
// keeps the tail after the gap when a snapshot covers the rest, and
// refuses without moving anything when none does.
func TestMigrationSkipsEntriesBeforeAGap(t *testing.T) {
	for _, covered := range []bool{true, false} {
		t.Run(fmt.Sprintf("covered=%v", covered), func(t *testing.T) {
			c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet, LogStore: LogStoreBolt}
			c.setDefaults()
			st, err := openStores(&c)
			if err != nil {
				t.Fatal(err)
			}
			var logs []*raft.Log
			for _, i := range []uint64{1, 2, 3, 4, 5, 50, 51, 52} {
				logs = append(logs, &raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i))})
			}
			if err := st.db.StoreLogs(logs); err != nil {
				t.Fatal(err)
			}
			st.db.SetUint64(keyCurrentTerm, 2)
			st.Close()
			if covered {
				snapDir := filepath.Join(c.DataDir, "snapshots", "2-49-123")
				os.MkdirAll(snapDir, 0o700)
				os.WriteFile(filepath.Join(snapDir, "meta.json"), []byte(`{"Version":1,"ID":"2-49-123","Index":49,"Term":2}`), 0o600)
				os.WriteFile(filepath.Join(snapDir, "state.bin"), nil, 0o600)
			}
			c.LogStore = LogStoreWAL
			s, err := ReadState(c, time.Second)
			if !covered {
				if err == nil || !strings.Contains(err.Error(), "gap before entry 50") ||
					!exists(filepath.Join(c.DataDir, boltFileName)) || exists(filepath.Join(c.DataDir, walDirName)) {
					t.Fatalf("uncovered gap: %+v %v; want a refusal with raft.db untouched", s, err)
				}
				return
			}
			if err != nil || !s.HasRaftState {
				t.Fatalf("%+v %v", s, err)
			}
			st, err = openStores(&c)
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			first, _ := st.db.FirstIndex()
			last, _ := st.db.LastIndex()
			var l raft.Log
			if first != 50 || last != 52 || st.db.GetLog(51, &l) != nil || string(l.Data) != "entry 51" {
				t.Fatalf("WAL holds %d to %d (entry 51 %q)", first, last, l.Data)
			}
		})
	}
}

// TestWALTailTruncationSurvivesARestart is what a follower does when a new
// leader overwrites entries it never committed: raft deletes the log's tail
// and appends the leader's entries in their place. The node must start
// again from that log (raft-wal before v0.4.2 left the truncated segment
// without its index, and the next open failed: hashicorp/raft-wal#33).
func TestWALTailTruncationSurvivesARestart(t *testing.T) {
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet}
	c.setDefaults()
	write := func(from, to, term uint64) {
		t.Helper()
		st, err := openStores(&c)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if from <= to {
			last, err := st.db.LastIndex()
			if err != nil {
				t.Fatal(err)
			}
			if last >= from {
				if err := st.db.DeleteRange(from, last); err != nil {
					t.Fatalf("delete the tail %d..%d: %v", from, last, err)
				}
			}
			for i := from; i <= to; i++ {
				l := &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("term %d entry %d", term, i))}
				if err := st.db.StoreLogs([]*raft.Log{l}); err != nil {
					t.Fatalf("append %d: %v", i, err)
				}
			}
		}
	}
	write(1, 30, 2)
	write(25, 26, 3) // a new leader's entries replace 25..30
	write(1, 0, 0)   // a restart with nothing to write
	st, err := openStores(&c)
	if err != nil {
		t.Fatalf("the node does not start after its log's tail was replaced: %v", err)
	}
	defer st.Close()
	last, err := st.db.LastIndex()
	if err != nil || last != 26 {
		t.Fatalf("last index after the restart = %d, %v; want 26", last, err)
	}
	for i, want := range map[uint64]string{1: "term 2 entry 1", 24: "term 2 entry 24", 25: "term 3 entry 25", 26: "term 3 entry 26"} {
		var l raft.Log
		if err := st.db.GetLog(i, &l); err != nil || string(l.Data) != want {
			t.Errorf("entry %d after the restart = %q, %v; want %q", i, l.Data, err, want)
		}
	}
}

// closeProbe records what the data dir looked like when the migration let
// go of raft.db's bbolt lock.
type closeProbe struct {
	dir       string
	bolt, pre bool
	closed    bool
}

func (p *closeProbe) Close() error {
	p.closed = true
	p.bolt = exists(filepath.Join(p.dir, boltFileName))
	p.pre = exists(filepath.Join(p.dir, preWALName))
	return nil
}

// The migration lets go of raft.db's lock only once the file is no longer
// called raft.db: a kms-ha from before the data dir LOCK, waiting on that
// lock, finds no raft.db to open.
func TestMigrationHoldsRaftDBUntilRenamed(t *testing.T) {
	dir := t.TempDir()
	src, pre := filepath.Join(dir, boltFileName), filepath.Join(dir, preWALName)
	if err := os.WriteFile(src, []byte("db"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &closeProbe{dir: dir}
	if err := renameHeld(src, pre, p); err != nil {
		t.Fatal(err)
	}
	if !p.closed || p.bolt || !p.pre {
		t.Fatalf("the store was closed=%v with raft.db there=%v and raft.db.pre-wal there=%v; want closed after the rename",
			p.closed, p.bolt, p.pre)
	}
	// A failed rename still lets go of the store.
	p = &closeProbe{dir: dir}
	if err := renameHeld(filepath.Join(dir, "missing"), pre, p); err == nil || !p.closed {
		t.Fatalf("failed rename: %v, closed=%v", err, p.closed)
	}
}
