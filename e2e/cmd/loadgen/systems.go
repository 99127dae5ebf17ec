package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// system is one signer under test: its processes and the validators it
// signs for.
type system struct {
	name    string
	procs   []*harness.Process
	vals    []*validator
	cluster *harness.Cluster // nil for the file baseline
}

// systemSpec names a system: "filepv", or "kmsN" / "old-kmsN" (a kms-ha
// cluster of N nodes from the new or the old binary).
type systemSpec struct {
	name  string
	nodes int // 0: the file baseline
	old   bool
}

func parseSystems(list string) ([]systemSpec, error) {
	var out []systemSpec
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "filepv" {
			out = append(out, systemSpec{name: s})
			continue
		}
		rest, old := strings.CutPrefix(s, "old-")
		n, err := strconv.Atoi(strings.TrimPrefix(rest, "kms"))
		if !strings.HasPrefix(rest, "kms") || err != nil || n < 1 {
			return nil, fmt.Errorf("system %q: want filepv, kmsN or old-kmsN (N nodes)", s)
		}
		out = append(out, systemSpec{name: s, nodes: n, old: old})
	}
	return out, nil
}

// label is the system's name in tables.
func (s systemSpec) label() string {
	switch {
	case s.nodes == 0:
		return "file signer (FilePV, fsync per signature)"
	case s.old:
		return fmt.Sprintf("kms-ha %d-node (old binary)", s.nodes)
	}
	return fmt.Sprintf("kms-ha %d-node", s.nodes)
}

// chainIDs names n chains.
func chainIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("bench-%03d", i+1)
	}
	return ids
}

// startSystem prepares spec in dir, starts it and waits until every
// validator has its signer.
func startSystem(ctx context.Context, spec systemSpec, bins binaries, dir string, chains []string) (*system, error) {
	s := &system{name: spec.label()}
	var keys []string
	for _, id := range chains {
		v, err := newValidator(id)
		if err != nil {
			s.close()
			return nil, err
		}
		s.vals = append(s.vals, v)
		k, err := filePVKeys(filepath.Join(dir, "keys"), id)
		if err != nil {
			s.close()
			return nil, err
		}
		keys = append(keys, k)
	}
	var err error
	if spec.nodes == 0 {
		err = s.startFilePV(dir, bins.self)
	} else {
		bin := bins.kmsha
		if spec.old {
			bin = bins.old
		}
		err = s.startKMS(ctx, bin, dir, spec.nodes, keys)
	}
	if err == nil {
		err = s.connect(60 * time.Second)
	}
	if err == nil {
		s.leaderFirst(ctx)
	}
	if err != nil {
		s.close()
		return nil, fmt.Errorf("%s: %w", s.name, err)
	}
	return s, nil
}

func (s *system) startFilePV(dir, self string) error {
	args := []string{filePVCommand, "-dir", filepath.Join(dir, "keys")}
	for _, v := range s.vals {
		args = append(args, v.chainID+"="+v.addr)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	p := &harness.Process{Name: "filepv", Bin: self, Args: args, Dir: dir, LogPath: filepath.Join(dir, "filepv.log")}
	if err := p.Start(); err != nil {
		return err
	}
	s.procs = append(s.procs, p)
	return nil
}

func (s *system) startKMS(ctx context.Context, bin, dir string, nodes int, keys []string) error {
	var chains []harness.ChainConfig
	for i, v := range s.vals {
		chains = append(chains, harness.ChainConfig{ChainID: v.chainID, ValidatorAddr: v.addr, KeyFile: keys[i]})
	}
	c, err := harness.NewSigners(ctx, bin, dir, nodes, chains, harness.RaftTimings{})
	if err != nil {
		return err
	}
	s.cluster = c
	for _, n := range c.Nodes {
		s.procs = append(s.procs, n.Proc)
	}
	return c.StartSigners(ctx)
}

// connect waits until each validator has a signer that gives its key.
func (s *system) connect(timeout time.Duration) error {
	for _, v := range s.vals {
		if err := v.connect(timeout); err != nil {
			return err
		}
	}
	return nil
}

// commitIndex is the leader's raft commit index (0 for the baseline).
func (s *system) commitIndex(ctx context.Context) uint64 {
	if s.cluster == nil {
		return 0
	}
	if _, st, err := s.cluster.Leader(ctx); err == nil {
		return st.CommitIndex
	}
	return 0
}

func (s *system) snapshot() []procStat {
	out := make([]procStat, len(s.procs))
	for i, p := range s.procs {
		out[i] = readProc(p.PID())
	}
	return out
}

func (s *system) close() {
	for _, v := range s.vals {
		v.close()
	}
	if s.cluster != nil {
		s.cluster.Close()
	}
	for _, p := range s.procs {
		_ = p.Kill()
	}
}

// leaderFirst puts the leader's process first, where the tables expect it.
func (s *system) leaderFirst(ctx context.Context) {
	if s.cluster == nil {
		return
	}
	ln, _, err := s.cluster.Leader(ctx)
	if err != nil {
		return
	}
	for i, p := range s.procs {
		if p == ln.Proc {
			s.procs[0], s.procs[i] = s.procs[i], s.procs[0]
		}
	}
}
