package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// CometBFT038 is the cometbft release of the v0.38 line the compatibility
// test runs: the newest v0.38 patch on the Go module proxy when the test was
// written (`go list -m -versions github.com/cometbft/cometbft`). v0.38 is the
// most deployed line and speaks the same privval protocol as v0.40.
// Override with $KMSHA_E2E_COMETBFT038 (a module version such as v0.38.27).
const CometBFT038 = "v0.38.26"

// CometBFT038Env overrides CometBFT038.
const CometBFT038Env = "KMSHA_E2E_COMETBFT038"

// CacheEnv names a directory for binaries that do not depend on the kms-ha
// sources (released cometbft versions), kept between runs; default
// $XDG_CACHE_HOME/kms-ha-e2e (os.UserCacheDir).
const CacheEnv = "KMSHA_E2E_CACHE"

// CacheDir returns the directory for binaries kept between test runs.
func CacheDir() (string, error) {
	if d := os.Getenv(CacheEnv); d != "" {
		return filepath.Abs(d)
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no cache directory (set %s): %w", CacheEnv, err)
	}
	return filepath.Join(base, "kms-ha-e2e"), nil
}

// CometBFT038Version is CometBFT038 or its override.
func CometBFT038Version() string {
	if v := os.Getenv(CometBFT038Env); v != "" {
		return v
	}
	return CometBFT038
}

// BuildCometBFTRelease installs the released cometbft binary of module
// version version (e.g. "v0.38.26") from the Go module proxy into
// cacheDir/cometbft@version/cometbft, unless a working binary is already
// there. The release is built with its own go.mod (`go install pkg@version`),
// not with kms-ha's dependencies, exactly as an operator would install it.
// The first build takes about 40 s; later runs reuse the binary.
func BuildCometBFTRelease(ctx context.Context, version, cacheDir string) (string, error) {
	dir := filepath.Join(cacheDir, "cometbft@"+version)
	out := filepath.Join(dir, "cometbft")
	want := ReportedVersion(version)
	if got, err := binaryVersion(ctx, out); err == nil && got == want {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	// Installed into a private directory first and renamed, so a concurrent
	// or interrupted run never leaves a half-written binary at out.
	tmp, err := os.MkdirTemp(dir, "install-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	cmd := exec.CommandContext(ctx, goBinary(), "install", "github.com/cometbft/cometbft/cmd/cometbft@"+version)
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOWORK=off", "GOFLAGS=-buildvcs=false")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go install cometbft@%s: %w\n%s", version, err, strings.TrimSpace(stderr.String()))
	}
	if err := os.Rename(filepath.Join(tmp, "cometbft"), out); err != nil {
		return "", err
	}
	got, err := binaryVersion(ctx, out)
	if err != nil {
		return "", err
	}
	if got != want {
		return "", fmt.Errorf("%s reports version %q, want %q", out, got, want)
	}
	return out, nil
}

func binaryVersion(ctx context.Context, bin string) (string, error) {
	if !fileExists(bin) {
		return "", os.ErrNotExist
	}
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "", fmt.Errorf("%s version: %w", bin, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func goBinary() string {
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			return p
		}
	}
	return "go"
}

// NodeVersion is the version the running node reports in /status
// (node_info.version), e.g. "0.38.26"; v0.40.0 reports "0.39.0".
func (n *CometNode) NodeVersion(ctx context.Context) (string, error) {
	var r struct {
		NodeInfo struct {
			Version string `json:"version"`
		} `json:"node_info"`
	}
	if err := n.rpc(ctx, "/status", &r); err != nil {
		return "", err
	}
	return r.NodeInfo.Version, nil
}
