package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Released cometbft versions of the other CometBFT lines the compatibility
// tests run, with the validators[].protocol that serves each. Like
// CometBFT038, each is installed from the Go module proxy into the cache
// directory (BuildCometBFTRelease) and can be overridden by an environment
// variable naming another module version of the same line.
const (
	// CometBFTV1 is the v1.0 line (cometbft.privval.v1): protocol v1.
	CometBFTV1    = "v1.0.1"
	CometBFTV1Env = "KMSHA_E2E_COMETBFTV1"
	// CometBFT037 is the v0.37 line (no vote extensions): protocol v0.37.
	CometBFT037    = "v0.37.18"
	CometBFT037Env = "KMSHA_E2E_COMETBFT037"
)

// ReleaseVersion is def, or the module version the environment variable
// env names.
func ReleaseVersion(def, env string) string {
	if v := os.Getenv(env); v != "" {
		return v
	}
	return def
}

// reportedVersions lists the releases whose binary reports another version
// than its module version: v0.37.18's version/version.go still says
// TMCoreSemVer = "0.37.16".
var reportedVersions = map[string]string{
	"v0.37.18": "0.37.16",
}

// ReportedVersion is what `cometbft version` and /status print for the
// release of module version version.
func ReportedVersion(version string) string {
	if r, ok := reportedVersions[version]; ok {
		return r
	}
	return strings.TrimPrefix(version, "v")
}

// CometBFT034 is the v0.34 line (Tendermint v0.34's successor, no vote
// extensions): protocol v0.34. `go install` refuses it: v0.34.33's go.mod
// names itself github.com/tendermint/tendermint (and v0.34.35's replaces
// modules the proxy does not serve), so BuildCometBFTFromSource builds it.
const (
	CometBFT034    = "v0.34.33"
	CometBFT034Env = "KMSHA_E2E_COMETBFT034"
)

// BuildCometBFTFromSource builds the cometbft binary of module version
// version from its module source (`go mod download`, copied to a writable
// directory, `go build ./cmd/cometbft` with the release's own go.mod) into
// cacheDir/cometbft@version/cometbft, unless a working binary is already
// there. For releases `go install pkg@version` refuses.
func BuildCometBFTFromSource(ctx context.Context, version, cacheDir string) (string, error) {
	dir := filepath.Join(cacheDir, "cometbft@"+version)
	out := filepath.Join(dir, "cometbft")
	if got, err := binaryVersion(ctx, out); err == nil && got == ReportedVersion(version) {
		return out, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	src, err := moduleDir(ctx, "github.com/cometbft/cometbft@"+version)
	if err != nil {
		return "", err
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	work := filepath.Join(tmp, "src")
	if err := os.CopyFS(work, os.DirFS(src)); err != nil {
		return "", fmt.Errorf("copy %s: %w", src, err)
	}
	cmd := exec.CommandContext(ctx, goBinary(), "build", "-o", filepath.Join(tmp, "cometbft"), "./cmd/cometbft")
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build cometbft@%s: %w\n%s", version, err, strings.TrimSpace(string(b)))
	}
	if err := os.Rename(filepath.Join(tmp, "cometbft"), out); err != nil {
		return "", err
	}
	if got, err := binaryVersion(ctx, out); err != nil || got != ReportedVersion(version) {
		return "", fmt.Errorf("%s reports version %q (%v), want %q", out, got, err, ReportedVersion(version))
	}
	return out, nil
}

// moduleDir is the module cache directory of module@version, downloaded
// through the Go module proxy if needed.
func moduleDir(ctx context.Context, modVersion string) (string, error) {
	cmd := exec.CommandContext(ctx, goBinary(), "mod", "download", "-json", modVersion)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	b, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w", modVersion, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("go mod download %s: %w", modVersion, err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %s", modVersion, m.Error)
	}
	return m.Dir, nil
}
