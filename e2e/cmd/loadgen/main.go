// Command loadgen is kms-ha's load generator: it plays N validators (the
// node side of CometBFT's privval protocol, with CometBFT's own
// SignerListenerEndpoint and SignerClient over a real SecretConnection)
// against signers running as real processes on loopback, and reports per
// signer the sign latency, signatures per second, CPU and memory.
//
// Compare mode runs the systems interleaved (A B C A B C ...) so that the
// ratios hold when the machine drifts:
//
//	loadgen -kmsha build/kms-ha -systems filepv,kms1,kms3 -pairs 3
//
// A/B of two kms-ha builds: -kmsha-old OLD -systems old-kms3,kms3.
// Scale mode runs one kms-ha cluster per chain count, each chain a
// validator at -rate blocks/s:
//
//	loadgen -kmsha build/kms-ha -scale 1,10,50,100,200 -rate 1 -png scale.png
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

type binaries struct{ self, kmsha, old string }

type options struct {
	bins          binaries
	systems       []systemSpec
	validators    int
	spec          loadSpec
	rounds        int
	window        time.Duration
	warmup        time.Duration
	dir           string
	md            string
	scale         []int
	png           string
	scaleSystems  []systemSpec
	commandString string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == filePVCommand {
		if err := runFilePVSigner(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "loadgen:", err)
			os.Exit(2)
		}
		return
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(2)
	}
	// Every child dies with us, whatever ends the run.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); harness.KillAll() }()
	if len(o.scale) > 0 {
		err = runScale(ctx, o)
	} else {
		err = runCompare(ctx, o)
	}
	harness.KillAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (*options, error) {
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	o := &options{}
	kmsha := fs.String("kmsha", "build/kms-ha", "the kms-ha binary under test")
	old := fs.String("kmsha-old", "", "a second kms-ha binary, for the old-kmsN systems (A/B of two builds)")
	systems := fs.String("systems", "filepv,kms1,kms3", "systems to compare, the first is the baseline of the ratios: filepv, kmsN, old-kmsN")
	nodes := fs.Int("nodes", 0, "add a kms-ha cluster of this many nodes (e.g. 5) to -systems")
	fs.IntVar(&o.validators, "validators", 1, "validators (one chain each) per system")
	fs.Float64Var(&o.spec.rate, "rate", 0, "blocks per second per validator; 0 asks back to back")
	fs.Int64Var(&o.spec.proposalEvery, "proposal-every", 1, "a proposal at every k-th height (1: a one-validator chain)")
	fs.IntVar(&o.rounds, "pairs", 3, "rounds: each system measured once per round, in turn")
	fs.DurationVar(&o.window, "window", 10*time.Second, "measured time per system and round")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured load per system before the first round")
	fs.StringVar(&o.dir, "dir", "", "work directory (default: a new one under the temp dir, removed at the end)")
	fs.StringVar(&o.md, "md", "", "also write the report (markdown) to this file")
	scale := fs.String("scale", "", "scale mode: chain counts, e.g. 1,10,50,100,200 (one kms-ha cluster each)")
	scaleSystems := fs.String("scale-systems", "kms3,filepv", "scale mode: the systems measured at each chain count, in turn")
	fs.StringVar(&o.png, "png", "", "scale mode: write the plot here")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.systems, err = parseSystems(*systems); err != nil {
		return nil, err
	}
	if o.scaleSystems, err = parseSystems(*scaleSystems); err != nil {
		return nil, err
	}
	if *nodes > 0 && !slices.ContainsFunc(o.systems, func(s systemSpec) bool { return s.nodes == *nodes && !s.old }) {
		o.systems = append(o.systems, systemSpec{name: fmt.Sprintf("kms%d", *nodes), nodes: *nodes})
	}
	for _, c := range strings.Split(*scale, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-scale: %q is not a chain count", c)
		}
		o.scale = append(o.scale, n)
	}
	if o.validators < 1 || o.rounds < 1 || o.window <= 0 {
		return nil, fmt.Errorf("-validators, -pairs and -window must be positive")
	}
	if o.bins.self, err = os.Executable(); err != nil {
		return nil, err
	}
	if o.bins.kmsha, err = execPath(*kmsha, "-kmsha"); err != nil {
		return nil, err
	}
	if slices.ContainsFunc(append(o.systems, o.scaleSystems...), func(s systemSpec) bool { return s.old }) {
		if o.bins.old, err = execPath(*old, "-kmsha-old"); err != nil {
			return nil, err
		}
	}
	o.commandString = "loadgen " + strings.Join(args, " ")
	return o, nil
}

// execPath checks that path is an executable file and makes it absolute
// (the nodes run in their own directories).
func execPath(path, flagName string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("%s: no binary given", flagName)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("%s %s: not an executable file (build it with make build)", flagName, path)
	}
	return abs, nil
}

// workDir is o.dir, or a fresh temporary directory that done removes
// after a run that succeeded; a failed run keeps it for its logs.
func workDir(o *options) (dir string, done func(failed bool), err error) {
	if o.dir != "" {
		return o.dir, func(bool) {}, os.MkdirAll(o.dir, 0o755)
	}
	dir, err = os.MkdirTemp("", "kmsha-loadgen-")
	return dir, func(failed bool) {
		if failed {
			logf("kept the work directory with every process's log: %s", dir)
			return
		}
		os.RemoveAll(dir)
	}, err
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ") + fmt.Sprintf(" on %d CPUs", runtime.NumCPU())
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s loadgen: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}
