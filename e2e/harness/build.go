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

// ModulePath is the module whose root RepoRoot looks for.
const ModulePath = "github.com/kms-ha/kms-ha"

// Binaries are the absolute paths of the programs a cluster runs.
type Binaries struct {
	KMSHA    string
	CometBFT string
}

// RepoRoot walks up from the working directory to the kms-ha module root, so
// that the test (run from ./e2e) and the demo (run from anywhere inside the
// repository) build the same sources.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && isModule(data, ModulePath) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod for module %s above the working directory", ModulePath)
		}
		dir = parent
	}
}

func isModule(gomod []byte, path string) bool {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "module" && strings.Trim(f[1], `"`) == path {
			return true
		}
	}
	return false
}

// RaceEnv, set to 1, builds kms-ha with the race detector, so the end-to-end
// tests hunt data races in the real processes too (`make test` sets it).
const RaceEnv = "KMSHA_E2E_RACE"

// RaceReport is what the race detector prints into a process's stderr.
const RaceReport = "WARNING: DATA RACE"

// BuildKMSHA builds ./cmd/kms-ha into outDir.
func BuildKMSHA(ctx context.Context, repoRoot, outDir string) (string, error) {
	out := filepath.Join(outDir, "kms-ha")
	var flags []string
	if os.Getenv(RaceEnv) == "1" {
		flags = append(flags, "-race")
		// A race-enabled binary sleeps a second before it exits, so that
		// late reports get printed; every short kms-ha command of a test
		// would pay it. Reports are written as races are found, and the
		// checks read them from the logs.
		if os.Getenv("GORACE") == "" {
			os.Setenv("GORACE", "atexit_sleep_ms=50")
		}
	}
	return out, goBuild(ctx, repoRoot, out, "./cmd/kms-ha", flags...)
}

// BuildCometBFT builds the cometbft version pinned by go.mod (a tool
// dependency), so the chain under test is exactly the one kms-ha is compiled
// against.
func BuildCometBFT(ctx context.Context, repoRoot, outDir string) (string, error) {
	out := filepath.Join(outDir, "cometbft")
	return out, goBuild(ctx, repoRoot, out, "github.com/cometbft/cometbft/cmd/cometbft")
}

// Build builds both binaries into outDir.
func Build(ctx context.Context, repoRoot, outDir string) (Binaries, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return Binaries{}, err
	}
	var b Binaries
	var err error
	if b.KMSHA, err = BuildKMSHA(ctx, repoRoot, outDir); err != nil {
		return b, err
	}
	if b.CometBFT, err = BuildCometBFT(ctx, repoRoot, outDir); err != nil {
		return b, err
	}
	return b, nil
}

func goBuild(ctx context.Context, repoRoot, out, pkg string, flags ...string) error {
	goBin := "go"
	if root := os.Getenv("GOROOT"); root != "" {
		if p := filepath.Join(root, "bin", "go"); fileExists(p) {
			goBin = p
		}
	}
	args := append(append([]string{"build"}, flags...), "-o", out, pkg)
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = repoRoot
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// BuildLoadgen builds the load generator (e2e/cmd/loadgen) into outDir: its
// filepv-signer command is CometBFT's own FilePV behind CometBFT's own
// remote-signer loop, the single-node remote signer the measurements
// compare kms-ha with.
func BuildLoadgen(ctx context.Context, repoRoot, outDir string) (string, error) {
	out := filepath.Join(outDir, "loadgen")
	return out, goBuild(ctx, repoRoot, out, "./e2e/cmd/loadgen")
}
