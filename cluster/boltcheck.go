package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/bbolt"
)

// ErrCorrupt marks a raft.db that cannot be trusted. bbolt reads its file
// through a memory map and trusts every page pointer it finds: a truncated
// file faults with SIGBUS and a damaged page panics, both as a Go stack
// trace that tells an operator nothing. checkBoltFile finds those cases
// first and turns them into this error, which says what to do.
var ErrCorrupt = errors.New("the file is damaged")

// corruptError names the damage and the way out. The caller prefixes the
// path ("cluster: open PATH: ..."), so the message itself does not repeat it.
type corruptError struct {
	dataDir string
	why     string
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("%v (%s): move the data dir %s away and admit this node again with `kms-ha join`; "+
		"the other members send it their state", ErrCorrupt, e.why, e.dataDir)
}

func (e *corruptError) Is(target error) bool { return target == ErrCorrupt }

// bbolt's on-disk layout (go.etcd.io/bbolt/internal/common): a 16-byte page
// header, then on pages 0 and 1 the meta, whose checksum is FNV-64a over
// the 56 bytes before it.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	boltPageHeader   = 16
	boltMetaSumStart = 56
	boltNoFreelist   = ^uint64(0)
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64
	txid     uint64
}

// parseBoltMeta reads the meta of a page starting at buf[0]; ok is false
// when the magic, version or checksum do not match.
func parseBoltMeta(buf []byte) (boltMeta, bool) {
	if len(buf) < boltPageHeader+boltMetaSumStart+8 {
		return boltMeta{}, false
	}
	m := buf[boltPageHeader:]
	le := binary.LittleEndian
	h := fnv.New64a()
	h.Write(m[:boltMetaSumStart])
	if le.Uint32(m[0:]) != boltMagic || le.Uint32(m[4:]) != boltVersion || le.Uint64(m[boltMetaSumStart:]) != h.Sum64() {
		return boltMeta{}, false
	}
	return boltMeta{
		pageSize: le.Uint32(m[8:]),
		root:     le.Uint64(m[16:]),
		freelist: le.Uint64(m[32:]),
		pgid:     le.Uint64(m[40:]),
		txid:     le.Uint64(m[48:]),
	}, true
}

// checkBoltHeader reads the two meta pages with plain reads (no mmap) and
// checks that the file holds every page the newest valid meta counts. One
// bad meta page alone is no damage: bbolt writes them in turn and falls
// back to the other after a torn write, as it is designed to.
func checkBoltHeader(f *os.File) error {
	metas, err := readBoltMetas(f)
	if err != nil {
		return err
	}
	if len(metas) == 0 {
		return errors.New("neither of its two header pages is valid")
	}
	m := metas[0]
	if len(metas) == 2 && metas[1].txid > m.txid {
		m = metas[1]
	}
	if m.pageSize < 1024 || m.pageSize&(m.pageSize-1) != 0 {
		return fmt.Errorf("its header names an impossible page size %d", m.pageSize)
	}
	if m.root >= m.pgid || (m.freelist != boltNoFreelist && m.freelist >= m.pgid) {
		return fmt.Errorf("its header points past its own end (page %d or %d of %d)", m.root, m.freelist, m.pgid)
	}
	// The size is read after the header: a running node only ever grows
	// the file, so it never holds fewer bytes than a meta read before.
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("stat: %w", err)
	}
	if want := m.pgid * uint64(m.pageSize); uint64(info.Size()) < want {
		return fmt.Errorf("truncated: %d bytes where its header counts %d", info.Size(), want)
	}
	return nil
}

// readBoltMetas returns the valid metas among pages 0 and 1.
func readBoltMetas(f *os.File) ([]boltMeta, error) {
	read := func(off int64) (boltMeta, bool, error) {
		buf := make([]byte, 4096)
		if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return boltMeta{}, false, fmt.Errorf("read the header: %w", err)
		}
		m, ok := parseBoltMeta(buf)
		return m, ok, nil
	}
	var metas []boltMeta
	m, ok, err := read(0)
	if err != nil {
		return nil, err
	}
	if ok {
		metas = append(metas, m)
	}
	// The second meta sits one page in; without the first meta the page
	// size is unknown, so try every size bbolt allows, as bbolt does.
	for ps := int64(1024); ps <= 16<<20; ps *= 2 {
		if ok && int64(metas[0].pageSize) != ps {
			continue
		}
		m1, ok1, err := read(ps)
		if err != nil {
			return nil, err
		}
		if ok1 && int64(m1.pageSize) == ps {
			return append(metas, m1), nil
		}
	}
	return metas, nil
}

// checkBoltFile checks a bolt file (raft.db, or the WAL's wal-meta.db)
// before raft-boltdb or raft-wal opens it; dataDir is what to move away if
// it is damaged. It reads the header first, then every bucket, key and
// value through bbolt with faults turned into panics and recovered, then
// bbolt's own consistency check (which catches a damaged free list
// before a later write would overwrite live pages). An absent or empty
// file is a new node's and passes. The header is read before any lock, which is safe on a running node's file (bbolt
// rewrites one meta page at a time and only grows the file); bbolt then
// takes a shared lock for the rest, so a running node's file is reported
// as bbolt.ErrTimeout, never walked mid-write.
func checkBoltFile(path, dataDir string, lockWait time.Duration) (err error) {
	damaged := func(why string) error {
		return &corruptError{dataDir: dataDir, why: oneLine(why)}
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	info, err := f.Stat()
	if err != nil || info.Size() == 0 {
		f.Close()
		return err
	}
	err = checkBoltHeader(f)
	f.Close()
	if err != nil {
		return damaged(err.Error())
	}
	// A fault inside the mmap (SIGBUS past the end of the file, SIGSEGV
	// through a wild page pointer) would kill the process; on this
	// goroutine it becomes a panic instead.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = damaged("reading it failed: " + fmt.Sprint(r))
		}
	}()
	// The free list is loaded by the consistency check below, after the
	// walk: a raft.db written without freelist sync (see boltOptions) has
	// its list rebuilt by a traversal on a goroutine of bbolt's own, where
	// a wild page pointer would crash the process instead of reaching the
	// recover above. The walk meets every such pointer first, here.
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: lockWait})
	if err != nil {
		return openError(err, damaged)
	}
	defer db.Close()
	if err := db.View(walkBolt); err != nil {
		return damaged(err.Error())
	}
	if err := db.View(checkBoltTx); err != nil {
		return damaged(err.Error())
	}
	return nil
}

// openError tells a file bbolt finds damaged from a system that will not
// let bbolt read it (the lock held, a permission, no memory for the map):
// none of those is damage, and moving the data dir away would cure none.
func openError(err error, damaged func(string) error) error {
	var pathErr *fs.PathError
	var errno syscall.Errno
	if errors.Is(err, bbolt.ErrTimeout) || errors.As(err, &pathErr) || errors.As(err, &errno) {
		return err
	}
	return damaged(err.Error())
}

// walkSink keeps the compiler from dropping the reads walkBolt makes.
var walkSink atomic.Uint32

// walkBolt reads the last byte of every key and value, so that every page
// and overflow page raft could later read is touched here first, on the
// goroutine that recovers a fault.
func walkBolt(tx *bbolt.Tx) error {
	var sum byte
	var walk func(b *bbolt.Bucket) error
	walk = func(b *bbolt.Bucket) error {
		return b.ForEach(func(k, v []byte) error {
			if len(k) > 0 {
				sum ^= k[len(k)-1]
			}
			if v == nil {
				if child := b.Bucket(k); child != nil {
					return walk(child)
				}
				return nil
			}
			if len(v) > 0 {
				sum ^= v[len(v)-1]
			}
			return nil
		})
	}
	err := tx.ForEach(func(_ []byte, b *bbolt.Bucket) error { return walk(b) })
	walkSink.Add(uint32(sum)) // atomic: nodes of one process (tests) open stores concurrently
	return err
}

// checkBoltTx runs bbolt's consistency check and returns its first finding.
func checkBoltTx(tx *bbolt.Tx) error {
	var first error
	for err := range tx.Check() {
		if first == nil {
			first = err
		}
	}
	return first
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
