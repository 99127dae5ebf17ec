//go:build e2e

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// startFilePVRemote starts a validator that waits for a remote signer and
// serves it with CometBFT's own FilePV behind CometBFT's own remote-signer
// loop (privval SignerDialerEndpoint + SignerServer): the single-node
// remote signer design, one process, its state file fsynced per signature.
func startFilePVRemote(ctx context.Context, t *testing.T, dir string, opts harness.CometOptions) *harness.CometNode {
	t.Helper()
	// Built into the case's own directory, removed with it; go's build
	// cache makes every build after the first a link.
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := harness.BuildLoadgen(ctx, root, dir)
	if err != nil {
		t.Fatalf("build the load generator: %v", err)
	}
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
