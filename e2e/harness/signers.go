package harness

import (
	"context"
	"os"
	"path/filepath"
)

// NewSigners prepares a kms-ha cluster of nodes members in dir that signs
// for chains whose validators the caller runs itself (no cometbft home is
// made): the load generator plays each validator's node side in process.
// Start it with StartSigners; Close kills its processes.
func NewSigners(ctx context.Context, bin, dir string, nodes int, chains []ChainConfig, t RaftTimings) (*Cluster, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Cluster{Dir: dir, LogDir: filepath.Join(dir, "logs"), Bin: Binaries{KMSHA: bin}, logf: func(string, ...any) {}}
	if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
		return nil, err
	}
	if err := c.newSigners(ctx, Config{Bin: c.Bin, Nodes: nodes, Raft: t}, chains); err != nil {
		return nil, err
	}
	return c, nil
}
