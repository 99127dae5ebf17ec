package cluster

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"go.etcd.io/bbolt"
)

// damagedDataDir writes a data dir whose raft.db holds enough log entries
// to span many pages, so that cutting the file leaves pages the header
// still counts.
func damagedDataDir(t *testing.T) (Config, string) {
	t.Helper()
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet, LogStore: LogStoreBolt}
	c.setDefaults()
	st, err := openStores(&c)
	if err != nil {
		t.Fatal(err)
	}
	var logs []*raft.Log
	for i := uint64(1); i <= 500; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: bytes.Repeat([]byte{byte(i)}, 200)})
	}
	if err := st.db.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if err := st.db.SetUint64(keyCurrentTerm, 1); err != nil {
		t.Fatal(err)
	}
	st.Close()
	return c, filepath.Join(c.DataDir, "raft.db")
}

// bbolt's pages are the OS page size.
var pageSize = os.Getpagesize()

// wantDamaged checks what an operator reads: one line naming the file and
// the way out.
func wantDamaged(t *testing.T, err error, path, why string) {
	t.Helper()
	if err == nil {
		t.Fatal("a damaged raft.db opened without an error")
	}
	msg := err.Error()
	t.Log(msg)
	if !errors.Is(err, ErrCorrupt) || strings.Contains(msg, "\n") || !strings.Contains(msg, path) ||
		!strings.Contains(msg, "move the data dir "+filepath.Dir(path)+" away") ||
		!strings.Contains(msg, "kms-ha join") || !strings.Contains(msg, why) {
		t.Fatalf("got %q; want one line naming %s, %q and the fix", msg, path, why)
	}
}

func TestTruncatedRaftDBIsAnError(t *testing.T) {
	c, path := damagedDataDir(t)
	if err := os.Truncate(path, 20000); err != nil {
		t.Fatal(err)
	}
	_, err := ReadState(c, time.Second)
	wantDamaged(t, err, path, "truncated: 20000 bytes")
	_, err = Open(c, nil)
	wantDamaged(t, err, path, "truncated")
}

// bbolt keeps two meta pages and falls back to the older one after a torn
// write: one bad meta page is its crash recovery at work, both are damage.
func TestCorruptMetaPages(t *testing.T) {
	c, path := damagedDataDir(t)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	garbage := bytes.Repeat([]byte{0x5a}, 64)
	if _, err := f.WriteAt(garbage, boltPageHeader); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadState(c, time.Second); err != nil {
		t.Fatalf("one torn meta page: %v", err)
	}
	// Opening it wrote a fresh meta page, so damage both now.
	for _, off := range []int64{boltPageHeader, int64(pageSize) + boltPageHeader} {
		if _, err := f.WriteAt(garbage, off); err != nil {
			t.Fatal(err)
		}
	}
	_, err = ReadState(c, time.Second)
	wantDamaged(t, err, path, "neither of its two header pages is valid")
}

// A damaged page inside the file: a branch page whose child pointer leads
// just past the end of the file (inside bbolt's mapping, which is rounded
// up: SIGBUS) or far past the mapping (a bounds panic). The check recovers
// both on its own goroutine.
func TestWildPagePointerIsAnError(t *testing.T) {
	for name, child := range map[string]func(size int) uint64{
		"past the end of the file": func(size int) uint64 { return uint64(size / pageSize) },
		"past the mapping":         func(int) uint64 { return 1 << 40 },
	} {
		t.Run(name, func(t *testing.T) {
			c, path := damagedDataDir(t)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			// bbolt grows the file ahead of its header's page count; drop
			// some of that unused tail so that the mapping (a power of two)
			// reaches past the end of the file.
			data = data[:len(data)-8*pageSize]
			hit := false
			for off := 2 * pageSize; off+pageSize <= len(data); off += pageSize {
				const branchPage = 0x01
				if binary.LittleEndian.Uint16(data[off+8:]) == branchPage {
					// The first branch element's child page id.
					binary.LittleEndian.PutUint64(data[off+boltPageHeader+8:], child(len(data)))
					hit = true
				}
			}
			if !hit {
				t.Fatal("no branch page to damage: write more entries")
			}
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			_, err = ReadState(c, time.Second)
			wantDamaged(t, err, path, "")
		})
	}
}

func TestGarbagePageIsAnError(t *testing.T) {
	c, path := damagedDataDir(t)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Every page after the metas becomes noise of the same size.
	info, _ := f.Stat()
	noise := bytes.Repeat([]byte{0xa7, 0x13, 0xff, 0x02}, (int(info.Size())-2*pageSize)/4)
	if _, err := f.WriteAt(noise, int64(2*pageSize)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, err = ReadState(c, time.Second)
	wantDamaged(t, err, path, "")
}

func TestHealthyRaftDBStillOpens(t *testing.T) {
	c, _ := damagedDataDir(t)
	start := time.Now()
	s, err := ReadState(c, time.Second)
	if err != nil || !s.HasRaftState {
		t.Fatalf("state %+v, err %v", s, err)
	}
	t.Logf("open with the check took %v", time.Since(start))
}

// What the system refuses (a permission, the lock, memory for the map) is
// not damage: moving the data dir away would not cure it, so the error
// must not say so.
func TestSystemErrorsAreNotDamage(t *testing.T) {
	damaged := func(why string) error { return &corruptError{dataDir: "/d", why: why} }
	for _, err := range []error{
		&fs.PathError{Op: "open", Path: "/d/raft.db", Err: syscall.EACCES},
		fmt.Errorf("mmap: %w", syscall.ENOMEM),
		bbolt.ErrTimeout,
	} {
		if got := openError(err, damaged); errors.Is(got, ErrCorrupt) {
			t.Errorf("%v reported as %v", err, got)
		}
	}
	if got := openError(errors.New("file size too small 100"), damaged); !errors.Is(got, ErrCorrupt) {
		t.Errorf("bbolt's own finding reported as %v", got)
	}
}
