package cluster

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"
)

// raft.db is opened without freelist sync since the performance work; a
// file written that way must open, check clean and keep every entry when a
// binary from before opens it (a downgrade), and the other way round (an
// upgrade), with entries deleted in between so the free list is not empty.
func TestBoltFreelistSyncEitherWay(t *testing.T) {
	c := Config{NodeID: "n1", DataDir: filepath.Join(t.TempDir(), "raft"), BindAddr: "127.0.0.1:1", Logger: quiet, LogStore: LogStoreBolt}
	c.setDefaults()
	path := filepath.Join(c.DataDir, "raft.db")
	write := func(from, to uint64) {
		t.Helper()
		var logs []*raft.Log
		for i := from; i <= to; i++ {
			logs = append(logs, &raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i))})
		}
		st, err := openStores(&c)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if err := st.logs.StoreLogs(logs); err != nil {
			t.Fatal(err)
		}
		// Compaction frees pages: the free list has something to lose.
		if err := st.logs.DeleteRange(from, from+(to-from)/4); err != nil {
			t.Fatal(err)
		}
	}
	// The way the first release opened it.
	old := func(from, to uint64) {
		t.Helper()
		bs, err := raftboltdb.New(raftboltdb.Options{Path: path, BoltOptions: &bbolt.Options{}})
		if err != nil {
			t.Fatalf("open as before: %v", err)
		}
		defer bs.Close()
		var l raft.Log
		if err := bs.GetLog(from-1, &l); err != nil || string(l.Data) != fmt.Sprintf("entry %d", from-1) {
			t.Fatalf("entry %d after the switch: %v %q", from-1, err, l.Data)
		}
		for i := from; i <= to; i++ {
			if err := bs.StoreLog(&raft.Log{Index: i, Term: 1, Type: raft.LogCommand, Data: []byte(fmt.Sprintf("entry %d", i))}); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(1, 400)
	if err := checkBoltFile(path, c.DataDir, time.Second); err != nil {
		t.Fatalf("check after a write without freelist sync: %v", err)
	}
	old(401, 800)
	if err := checkBoltFile(path, c.DataDir, time.Second); err != nil {
		t.Fatalf("check after a write with freelist sync: %v", err)
	}
	write(801, 1200)
	if err := checkBoltFile(path, c.DataDir, time.Second); err != nil {
		t.Fatalf("check after switching back: %v", err)
	}
	st, err := openStores(&c)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	last, err := st.logs.LastIndex()
	if err != nil || last != 1200 {
		t.Fatalf("last index %d (%v), want 1200", last, err)
	}
	for _, i := range []uint64{700, 1000, 1200} {
		var l raft.Log
		if err := st.logs.GetLog(i, &l); err != nil || string(l.Data) != fmt.Sprintf("entry %d", i) {
			t.Errorf("entry %d: %v %q", i, err, l.Data)
		}
	}
}
