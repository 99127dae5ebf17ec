//go:build e2e

package e2e

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// Binaries only some tests need are built on first use, so that the other
// tests do not wait for them.
var (
	comet038Once sync.Once
	comet038Bin  string
	comet038Err  error

	abciAppBuild   builtOnce
	abciAppV1Build builtOnce
)

// cometBFT038 returns the released cometbft v0.38 binary, installed from the
// module proxy into the e2e cache directory on first use (about 40 s) and
// reused by later runs.
func cometBFT038(t *testing.T) string {
	t.Helper()
	comet038Once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		dir, err := harness.CacheDir()
		if err != nil {
			comet038Err = err
			return
		}
		start := time.Now()
		comet038Bin, comet038Err = harness.BuildCometBFTRelease(ctx, harness.CometBFT038Version(), dir)
		t.Logf("cometbft %s: %s (ready after %s)", harness.CometBFT038Version(), comet038Bin, time.Since(start).Round(time.Millisecond))
	})
	if comet038Err != nil {
		t.Fatalf("cometbft %s: %v", harness.CometBFT038Version(), comet038Err)
	}
	return comet038Bin
}

// builtOnce builds one of the test's own programs once per run.
type builtOnce struct {
	once sync.Once
	bin  string
	err  error
}

// get builds the program with build (from the repository root, into the
// directory of this run's binaries) on first use.
func (b *builtOnce) get(t *testing.T, what string, build func(ctx context.Context, root, dir string) (string, error)) string {
	t.Helper()
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		root, err := harness.RepoRoot()
		if err != nil {
			b.err = err
			return
		}
		b.bin, b.err = build(ctx, root, filepath.Dir(bins.CometBFT))
	})
	if b.err != nil {
		t.Fatalf("%s: %v", what, b.err)
	}
	return b.bin
}

// abciApp returns ./cmd/abciapp, built next to the other binaries of this
// run (removed by TestMain).
func abciApp(t *testing.T) string { return abciAppBuild.get(t, "abciapp", harness.BuildABCIApp) }
