//go:build chaos

// Command chaos runs kms-ha and a 4-validator CometBFT testnet on separate
// hosts (Linux network namespaces wired to a router namespace), applies a
// seeded schedule of faults (partitions, one-way loss, packet loss,
// latency, pauses, kills, a full disk, validator restarts), checks the
// safety invariants afterwards and writes a report with figures per fault
// type. Needs root (ip netns, iptables). `make chaos` runs it.
//
// The program runs twice: the outer process builds the binaries, creates
// the namespaces and removes them again whatever happens; the inner
// process runs inside the router namespace, where it reaches every host,
// and owns the cluster, the nemesis and the report.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

type options struct {
	faults   int
	seed     uint64
	out      string
	docs     string
	critical bool
	keep     bool
	kinds    string
	handover string
	commit   time.Duration

	inner    bool
	work     string
	prefix   string
	kmsha    string
	cometbft string
}

func envInt(k string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(k)); err == nil {
		return v
	}
	return def
}

// defaultTimeoutCommit is the published runs' block pace: short, so a run
// sees many heights per fault.
const defaultTimeoutCommit = 100 * time.Millisecond

func envDuration(k string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(k)); err == nil {
		return v
	}
	return def
}

func main() {
	var o options
	flag.IntVar(&o.faults, "faults", envInt("CHAOS_FAULTS", 100), "number of fault steps (env CHAOS_FAULTS)")
	flag.Uint64Var(&o.seed, "seed", uint64(envInt("CHAOS_SEED", 0)), "schedule seed; 0 picks one from the clock (env CHAOS_SEED)")
	flag.StringVar(&o.out, "out", "build/chaos", "directory for report.md, chaos.png and the logs")
	flag.StringVar(&o.docs, "docs", "", "Markdown file whose chaos summary section is rewritten (e.g. docs/chaos.md)")
	flag.BoolVar(&o.critical, "critical", os.Getenv("CHAOS_CRITICAL") == "1", "kms-ha holds 40% of the power: the chain cannot commit without it (env CHAOS_CRITICAL=1)")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory (homes, logs) after a passing run")
	flag.StringVar(&o.kinds, "kinds", os.Getenv("CHAOS_KINDS"), "comma-separated fault kinds to draw from (default all; env CHAOS_KINDS), e.g. leader-validator")
	flag.StringVar(&o.handover, "handover", os.Getenv("CHAOS_HANDOVER"), "kms-ha's cluster.validator_handover_after (default kms-ha's; 0s turns it off; env CHAOS_HANDOVER)")
	flag.DurationVar(&o.commit, "timeout-commit", envDuration("CHAOS_TIMEOUT_COMMIT", defaultTimeoutCommit), "the testnet's consensus.timeout_commit (env CHAOS_TIMEOUT_COMMIT; 1s for mainnet-like block times)")
	flag.BoolVar(&o.inner, "inner", false, "internal: run inside the router namespace")
	flag.StringVar(&o.work, "work", "", "internal")
	flag.StringVar(&o.prefix, "prefix", "", "internal")
	flag.StringVar(&o.kmsha, "kmsha", "", "internal")
	flag.StringVar(&o.cometbft, "cometbft", "", "internal")
	flag.Parse()
	if o.inner {
		os.Exit(runInner(o))
	}
	os.Exit(runOuter(o))
}

func logf(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
}

// runOuter sets up the hosts (build, namespaces, router), runs the inner
// process in the router namespace and tears everything down whatever
// happened; one function so that every setup step sits beside its
// cleanup (over 80 lines for that reason).
func runOuter(o options) int {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "chaos: needs root (ip netns, iptables)")
		return 2
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano()%1_000_000_000) + 1
	}
	if err := checkKinds(o.kindList()); err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		return 2
	}
	var err error
	if o.out, err = filepath.Abs(o.out); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if o.docs != "" {
		if o.docs, err = filepath.Abs(o.docs); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	logf("chaos: seed %d, %d faults, critical=%v", o.seed, o.faults, o.critical)
	root, err := harness.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	logf("building kms-ha and cometbft ...")
	bins, err := harness.Build(context.Background(), root, filepath.Join(o.out, "bin"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	work, err := os.MkdirTemp("", "kms-ha-chaos-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	SweepStale(logf)
	topo := newTopologyDesc(fmt.Sprintf("kc%d", os.Getpid()))
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer topo.Destroy()
	if err := topo.Create(); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: creating the namespaces:", err)
		return 2
	}
	logf("namespaces %s-* created (router %s)", topo.Prefix, topo.Router)
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	args := []string{"netns", "exec", topo.Router, self, "-inner",
		"-faults", strconv.Itoa(o.faults), "-seed", strconv.FormatUint(o.seed, 10),
		"-out", o.out, "-docs", o.docs, fmt.Sprintf("-critical=%v", o.critical), "-kinds", o.kinds, "-handover", o.handover,
		"-timeout-commit", o.commit.String(),
		"-work", work, "-prefix", topo.Prefix, "-kmsha", bins.KMSHA, "-cometbft", bins.CometBFT}
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// ip netns exec becomes the inner program: should this process die
	// without cleaning up, the inner one still stops its processes, and
	// the next run sweeps the namespaces.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var runErr error
	select {
	case runErr = <-done:
	case s := <-sigs:
		logf("chaos: %s: stopping the run", s)
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case runErr = <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			runErr = <-done
		}
	}
	code := 0
	if runErr != nil {
		code = 1
		if ee, ok := runErr.(*exec.ExitError); ok && ee.ExitCode() > 0 {
			code = ee.ExitCode()
		}
	}
	topo.Destroy()
	logf("namespaces removed")
	if code != 0 || o.keep {
		logf("working directory kept: %s", work)
	} else {
		os.RemoveAll(work)
	}
	return code
}
