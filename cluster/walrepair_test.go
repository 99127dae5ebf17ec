package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
)

// syncBuffer collects a logger's output from raft-wal's goroutines too.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// smallWALDir is a WAL data dir whose segments fill after a dozen
// entries of repairData.
func smallWALDir(t *testing.T) (Config, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1",
		Logger: slog.New(slog.NewTextHandler(logs, nil)), walSegmentSize: 4096}
	c.setDefaults()
	return c, logs
}

func repairData(term, i uint64) []byte {
	return []byte(fmt.Sprintf("term %d entry %d %s", term, i, strings.Repeat("x", 300)))
}

// appendOpen opens the stores, deletes from..last if asked and appends
// from..to in term, one entry per append, then closes.
func appendOpen(t *testing.T, c *Config, del bool, from, to, term uint64) {
	t.Helper()
	st, err := openStores(c)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer st.Close()
	if last, _ := st.db.LastIndex(); del && last >= from {
		if err := st.db.DeleteRange(from, last); err != nil {
			t.Fatalf("delete %d..%d: %v", from, last, err)
		}
	}
	for i := from; i <= to; i++ {
		l := &raft.Log{Index: i, Term: term, Type: raft.LogCommand, Data: repairData(term, i)}
		if err := st.db.StoreLogs([]*raft.Log{l}); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
}

// walFiles is the wal dir's meta file content and its segment files.
type walFiles struct {
	meta []byte
	segs map[string]bool
}

func saveWAL(t *testing.T, dir string) walFiles {
	t.Helper()
	meta, err := os.ReadFile(filepath.Join(dir, metadb.FileName))
	if err != nil {
		t.Fatal(err)
	}
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := walFiles{meta: meta, segs: map[string]bool{}}
	for _, e := range es {
		if filepath.Ext(e.Name()) == ".wal" {
			f.segs[e.Name()] = true
		}
	}
	return f
}

// crashBack makes dir look as if the machine stopped before the meta
// commit that followed the state saved in before: the meta file as it
// was, and no segment file created since.
func crashBack(t *testing.T, dir string, before walFiles) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, metadb.FileName), before.meta, 0o600); err != nil {
		t.Fatal(err)
	}
	for n := range saveWAL(t, dir).segs {
		if !before.segs[n] {
			if err := os.Remove(filepath.Join(dir, n)); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// tailSealedOnDisk says whether the segment wal-meta.db calls the
// unsealed tail is a sealed file: raft-wal's own reading of the files.
func tailSealedOnDisk(t *testing.T, dir string) bool {
	t.Helper()
	return tailIndexStart(t, dir) > 0
}

// tailIndexStart is where the index block of the file of wal-meta.db's
// unsealed tail starts, 0 if that file is not sealed.
func tailIndexStart(t *testing.T, dir string) uint64 {
	t.Helper()
	meta := &metadb.BoltMetaDB{}
	defer meta.Close()
	ps, err := meta.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	tail := ps.Segments[len(ps.Segments)-1]
	if !tail.SealTime.IsZero() {
		return 0
	}
	sw, err := segment.NewFiler(dir, fs.New()).RecoverTail(tail)
	if err != nil {
		t.Fatal(err)
	}
	defer sw.Close()
	_, indexStart, err := sw.Sealed()
	if err != nil {
		t.Fatal(err)
	}
	return indexStart
}

// wantLog reopens the stores and checks they hold exactly entries 1 to
// last, entry i written in term(i).
func wantLog(t *testing.T, c *Config, last uint64, term func(i uint64) uint64) {
	t.Helper()
	st, err := openStores(c)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer st.Close()
	first, _ := st.db.FirstIndex()
	got, _ := st.db.LastIndex()
	if first != 1 || got != last {
		t.Fatalf("the log holds entries %d to %d, want 1 to %d", first, got, last)
	}
	for i := uint64(1); i <= last; i++ {
		var l raft.Log
		if err := st.db.GetLog(i, &l); err != nil || l.Term != term(i) || !bytes.Equal(l.Data, repairData(term(i), i)) {
			t.Fatalf("entry %d: term %d, %v", i, l.Term, err)
		}
	}
}

// sealWithoutRotation appends until a segment fills, and leaves the
// data dir as a crash after that append and before raft-wal's rotation
// would. It returns the last entry written.
func sealWithoutRotation(t *testing.T, c *Config) uint64 {
	t.Helper()
	dir := filepath.Join(c.DataDir, walDirName)
	appendOpen(t, c, false, 1, 1, 1)
	sealedAt := uint64(0)
	for i := uint64(2); i < 100 && sealedAt == 0; i++ {
		before := saveWAL(t, dir)
		appendOpen(t, c, false, i, i, 1)
		if len(saveWAL(t, dir).segs) > len(before.segs) {
			// The rotation ran before the close: undo its commit.
			crashBack(t, dir, before)
		}
		if tailSealedOnDisk(t, dir) {
			sealedAt = i
		}
	}
	if sealedAt == 0 {
		t.Fatal("no segment filled")
	}
	return sealedAt
}

// A crash after the append that filled a segment (and wrote its index)
// but before raft-wal recorded the seal and the next segment: the node
// appends again after the restart, and keeps every entry.
func TestWALCrashBeforeSegmentRotationIsRepaired(t *testing.T) {
	c, logs := smallWALDir(t)
	sealedAt := sealWithoutRotation(t, &c)
	// The restart, and the next entries (past one more rotation).
	appendOpen(t, &c, false, sealedAt+1, sealedAt+30, 2)
	if !strings.Contains(logs.String(), "level=WARN msg=\"raft log: finished a segment rotation") ||
		!strings.Contains(logs.String(), fmt.Sprintf("sealed_last_index=%d new_segment_id=", sealedAt)) {
		t.Errorf("no warning of the repair in the log:\n%s", logs.String())
	}
	wantLog(t, &c, sealedAt+30, func(i uint64) uint64 {
		if i > sealedAt {
			return 2
		}
		return 1
	})
}

// A crash inside a DeleteRange of the log's tail, after raft-wal sealed
// the tail segment and before it recorded that: the entries are all
// there after the restart (the DeleteRange never returned), the node can
// append after them (a leader holding the same entries 4 and 5), and
// truncate and append again (a leader that does not).
func TestWALCrashInTailTruncationIsRepaired(t *testing.T) {
	c, _ := smallWALDir(t)
	dir := filepath.Join(c.DataDir, walDirName)
	appendOpen(t, &c, false, 1, 5, 1)
	before := saveWAL(t, dir)
	appendOpen(t, &c, true, 4, 3, 0) // DeleteRange(4, 5) only
	crashBack(t, dir, before)
	if !tailSealedOnDisk(t, dir) {
		t.Fatal("the interrupted truncation left no sealed tail")
	}
	wantLog(t, &c, 5, func(uint64) uint64 { return 1 })
	appendOpen(t, &c, false, 6, 8, 1)
	wantLog(t, &c, 8, func(uint64) uint64 { return 1 })
	appendOpen(t, &c, true, 4, 40, 2)
	wantLog(t, &c, 40, func(i uint64) uint64 {
		if i >= 4 {
			return 2
		}
		return 1
	})
}

// A seal whose write a crash tore (the index block not as written, so
// the last commit's checksum fails): the file's index cannot be trusted,
// and the repair refuses rather than record it.
func TestWALTornSealIsRefused(t *testing.T) {
	c, _ := smallWALDir(t)
	dir := filepath.Join(c.DataDir, walDirName)
	sealWithoutRotation(t, &c)
	meta := &metadb.BoltMetaDB{}
	ps, err := meta.Load(dir)
	meta.Close()
	if err != nil {
		t.Fatal(err)
	}
	tail := ps.Segments[len(ps.Segments)-1]
	f, err := os.OpenFile(filepath.Join(dir, segment.FileName(tail)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteAt(bytes.Repeat([]byte{0x5a}, 16), int64(tailIndexStart(t, dir)))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	before := saveWAL(t, dir)
	_, err = openStores(&c)
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "through the index block") ||
		!strings.Contains(err.Error(), "kms-ha join") {
		t.Fatalf("open with a torn seal: %v", err)
	}
	if after := saveWAL(t, dir); !bytes.Equal(after.meta, before.meta) {
		t.Error("the refused repair changed wal-meta.db")
	}
}

// TestWALTornSealingAppendIsRepaired: the append that fills a segment was
// torn, its index frame on disk and its commit frame not. raft-wal's
// recovery drops that append (it never returned) but still takes the
// segment for sealed; the repair records the seal at the entry before it,
// and the node appends in a new term from there and reads every entry back.
func TestWALTornSealingAppendIsRepaired(t *testing.T) {
	c, logs := smallWALDir(t)
	dir := filepath.Join(c.DataDir, walDirName)
	sealedAt := sealWithoutRotation(t, &c)
	meta := &metadb.BoltMetaDB{}
	ps, err := meta.Load(dir)
	meta.Close()
	if err != nil {
		t.Fatal(err)
	}
	tail := ps.Segments[len(ps.Segments)-1]
	is := tailIndexStart(t, dir)
	// The commit frame follows the index frame: an 8-byte header, 4 bytes
	// per entry, padded to 8.
	n := int(sealedAt - tail.BaseIndex + 1)
	commitOff := int64(is) - 8 + int64(8+n*4+((8-(n*4)%8)%8))
	f, err := os.OpenFile(filepath.Join(dir, segment.FileName(tail)), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(make([]byte, 8), commitOff); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st, err := openStores(&c)
	if err != nil {
		t.Fatalf("the node does not start after a torn sealing append: %v", err)
	}
	last, err := st.db.LastIndex()
	st.Close()
	if err != nil || last != sealedAt-1 {
		t.Fatalf("last index after the repair = %d, %v; want %d (the torn append dropped)", last, err, sealedAt-1)
	}
	if !strings.Contains(logs.String(), "finished a segment rotation") {
		t.Errorf("no WARN about the repair in the log:\n%s", logs.String())
	}
	appendOpen(t, &c, false, last+1, last+20, 2)
	wantLog(t, &c, last+20, func(i uint64) uint64 {
		if i > last {
			return 2
		}
		return 1
	})
}
