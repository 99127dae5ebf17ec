package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/raft"
	wal "github.com/hashicorp/raft-wal"
	"github.com/hashicorp/raft-wal/fs"
	"github.com/hashicorp/raft-wal/metadb"
	"github.com/hashicorp/raft-wal/segment"
	"github.com/hashicorp/raft-wal/types"
)

// repairSealedTail finishes a segment rotation that a crash interrupted,
// before wal.Open sees the WAL in dir.
//
// raft-wal seals a full segment inside the append that fills it (the
// index block goes out with that append's sync) and only then, in the
// background, records the seal and the next segment in wal-meta.db; a
// tail DeleteRange likewise seals the tail before it commits the meta.
// A crash in between leaves a meta file whose unsealed tail is a sealed
// file, and so does a Close that wins the race with that background
// rotation (raft-wal then skips it, leaving it to recovery). raft-wal
// v0.4.2's Open takes that file as the tail, and every later append fails
// with "segment is sealed": the node can never write again. The repair commits what the rotation would have: the tail
// sealed at its last entry, and an empty next segment, whose file
// wal.Open creates.
//
// Only the meta file changes (after the segment file is synced). Entries
// the tail holds stay; an interrupted DeleteRange never returned, so raft
// still counts them and truncates again when its leader says so. It also
// fires when the sealing append itself was torn (its index frame reached
// the disk, its commit frame did not): raft-wal's recovery then drops that
// append, which never returned either, and the seal is recorded at the
// last entry before it, once every entry up to there reads back the same
// through the index.
func repairSealedTail(c *Config, dir string, segmentSize int) error {
	if !exists(filepath.Join(dir, metadb.FileName)) {
		return nil // a new WAL
	}
	meta := &metadb.BoltMetaDB{}
	defer meta.Close()
	ps, err := meta.Load(dir)
	if err != nil {
		return fmt.Errorf("cluster: check the raft log's tail in %s: %w", dir, err)
	}
	n := len(ps.Segments)
	if n == 0 || !ps.Segments[n-1].SealTime.IsZero() || ps.Segments[n-1].Codec != wal.CodecBinaryV1 {
		// No tail yet, or a state raft-wal itself deals with (or refuses).
		return nil
	}
	tail := ps.Segments[n-1]
	sealed, err := sealedTail(dir, tail)
	if err != nil || sealed == nil {
		return err
	}
	next := types.SegmentInfo{
		ID:         ps.NextSegmentID,
		BaseIndex:  sealed.MaxIndex + 1,
		MinIndex:   sealed.MaxIndex + 1,
		SizeLimit:  uint32(segmentSize),
		Codec:      wal.CodecBinaryV1,
		CreateTime: time.Now(),
	}
	ps.Segments[n-1] = *sealed
	ps.Segments = append(ps.Segments, next)
	ps.NextSegmentID++
	if err := meta.CommitState(ps); err != nil {
		return fmt.Errorf("cluster: finish the raft log's interrupted segment rotation in %s: %w", dir, err)
	}
	c.Logger.Warn("raft log: finished a segment rotation that a crash or shutdown interrupted (the tail segment "+
		"was sealed but not recorded as such); every entry up to the sealed last index read back through the index",
		"wal_dir", dir,
		"sealed_segment_id", sealed.ID, "sealed_first_index", sealed.MinIndex, "sealed_last_index", sealed.MaxIndex,
		"new_segment_id", next.ID, "new_segment_base_index", next.BaseIndex)
	return nil
}

// sealedTail recovers the file of the unsealed tail tail and returns its
// info as a rotation would have recorded it, or nil if the file is not
// sealed (or does not exist yet, which wal.Open handles).
func sealedTail(dir string, tail types.SegmentInfo) (*types.SegmentInfo, error) {
	filer := segment.NewFiler(dir, fs.New())
	sw, err := filer.RecoverTail(tail)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cluster: check the raft log's tail segment %d in %s: %w", tail.ID, dir, err)
	}
	defer sw.Close()
	isSealed, indexStart, err := sw.Sealed()
	if err != nil || !isSealed {
		return nil, err
	}
	last := sw.LastIndex()
	if last == 0 {
		// A seal with no entry before it: the rotation's next segment
		// would start where this one does. raft-wal never seals an empty
		// segment; do not guess.
		return nil, fmt.Errorf("cluster: the raft log's tail segment %d in %s is sealed but holds no entry: %w", tail.ID, dir,
			&corruptError{dataDir: filepath.Dir(dir), why: "a sealed empty WAL segment"})
	}
	if last < tail.MinIndex {
		return nil, fmt.Errorf("cluster: the raft log's tail segment %d in %s ends at index %d, before its first index %d: %w",
			tail.ID, dir, last, tail.MinIndex,
			&corruptError{dataDir: filepath.Dir(dir), why: "a WAL segment that lost entries its meta file records"})
	}
	s := tail
	s.SealTime = time.Now()
	s.MaxIndex = last
	s.IndexStart = indexStart
	if err := checkSealed(filer, sw, s); err != nil {
		return nil, fmt.Errorf("cluster: the raft log's tail segment %d in %s: %w", tail.ID, dir,
			&corruptError{dataDir: filepath.Dir(dir), why: err.Error()})
	}
	// What was just read may be only in the page cache (the process died
	// during the append's own sync), and once the meta file says sealed
	// nothing syncs this file again: new entries go to the next segment.
	if err := syncPath(filepath.Join(dir, segment.FileName(tail))); err != nil {
		return nil, err
	}
	return &s, nil
}

// checkSealed reads every entry of the segment s through its index block,
// as the reader of a sealed segment will, and compares it with what the
// scan of the file found. A seal whose write a crash tore leaves an index
// block that may not match: recording it would serve wrong entries, so
// that is refused rather than repaired.
func checkSealed(filer *segment.Filer, scanned types.SegmentReader, s types.SegmentInfo) error {
	r, err := filer.Open(s)
	if err != nil {
		return fmt.Errorf("open it as a sealed segment: %w", err)
	}
	defer r.Close()
	var codec wal.BinaryCodec
	for i := s.MinIndex; i <= s.MaxIndex; i++ {
		want, err := scanned.GetLog(i)
		if err != nil {
			return fmt.Errorf("read entry %d: %w", i, err)
		}
		got, err := r.GetLog(i)
		if err != nil {
			want.Close()
			return fmt.Errorf("read entry %d through the index block: %w", i, err)
		}
		var l raft.Log
		same := bytes.Equal(want.Bs, got.Bs) && codec.Decode(got.Bs, &l) == nil && l.Index == i
		want.Close()
		got.Close()
		if !same {
			return fmt.Errorf("entry %d read through the index block differs from the entry in the file", i)
		}
	}
	return nil
}
