//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

var (
	loadgenOnce sync.Once
	loadgenBin  string
	loadgenErr  error
)

// loadgen builds the load generator once per test run, for the tests that
// need CometBFT's FilePV as a remote signer (its filepv-signer command).
func loadgen(ctx context.Context, t *testing.T) string {
	t.Helper()
	loadgenOnce.Do(func() {
		root, err := harness.RepoRoot()
		if err != nil {
			loadgenErr = err
			return
		}
		dir, err := os.MkdirTemp("", "kms-ha-e2e-loadgen-")
		if err != nil {
			loadgenErr = err
			return
		}
		loadgenBin, loadgenErr = harness.BuildLoadgen(ctx, root, dir)
	})
	if loadgenErr != nil {
		t.Fatalf("build the load generator: %v", loadgenErr)
	}
	return loadgenBin
}

// startFilePVRemote starts a validator that waits for a remote signer and
// serves it with CometBFT's own FilePV behind CometBFT's own remote-signer
// loop (privval SignerDialerEndpoint + SignerServer): the single-node
// remote signer design, one process, its state file fsynced per signature.
func startFilePVRemote(ctx context.Context, t *testing.T, dir string, opts harness.CometOptions) *harness.CometNode {
	t.Helper()
	bin := loadgen(ctx, t)
	n, err := harness.NewComet(ctx, bins.CometBFT, dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Proc.Kill() })
	pvDir := filepath.Join(dir, "filepv", n.ChainID)
	if err := os.MkdirAll(pvDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key, err := os.ReadFile(n.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pvDir, "priv_validator_key.json"), key, 0o600); err != nil {
		t.Fatal(err)
	}
	state := `{"height": "0", "round": 0, "step": 0}`
	if err := os.WriteFile(filepath.Join(pvDir, "priv_validator_state.json"), []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &harness.Process{Name: "filepv-signer", Bin: bin, Dir: dir, LogPath: filepath.Join(dir, "filepv-signer.log"),
		Args: []string{"filepv-signer", "-dir", filepath.Join(dir, "filepv"), n.ChainID + "=" + n.PrivvalAddr}}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	return n
}
