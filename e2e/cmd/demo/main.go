// Command demo shows kms-ha at work: a 3-node kms-ha cluster signs for a
// one-validator CometBFT chain on 127.0.0.1, the leader is killed, the chain
// goes on under a new leader, and the killed node comes back as a follower.
//
//	go run ./e2e/cmd/demo                 # until Ctrl-C
//	go run ./e2e/cmd/demo --duration 40s  # CI smoke test
//	go run ./e2e/cmd/demo --keep          # keep homes and logs afterwards
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

func main() {
	keep := flag.Bool("keep", false, "keep the working directory (homes and logs) on exit")
	duration := flag.Duration("duration", 0, "exit by itself after this long (0: run until Ctrl-C)")
	killAt := flag.Int64("kill-at", 10, "kill the leader once the chain reaches this height")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: go run ./e2e/cmd/demo [--keep] [--duration D] [--kill-at H]\n\n"+
			"Starts 3 kms-ha nodes and a CometBFT validator on 127.0.0.1, prints every block\n"+
			"with the kms-ha node that signed it, kills the leader, and shows the failover.\n\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	os.Exit(run(*keep, *duration, *killAt))
}

func run(keep bool, duration time.Duration, killAt int64) int {
	defer takeTerminal()()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		// Give a second Ctrl-C its default meaning, for when cleanup hangs.
		stop()
	}()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}

	dir, err := os.MkdirTemp("", "kms-ha-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	d := &demo{dir: dir, killAt: killAt}
	defer d.cleanup(keep)

	fmt.Println("kms-ha demo: three kms-ha signer nodes and one CometBFT validator, all on 127.0.0.1.")
	fmt.Println()
	fmt.Printf("Working directory: %s\n", dir)
	fmt.Printf("Logs:              %s\n", filepath.Join(dir, "logs"))
	if keep {
		fmt.Println("                   (kept on exit because of --keep)")
	} else {
		fmt.Println("                   (removed on exit; run with --keep to keep it)")
	}
	fmt.Println()

	err = d.main(ctx)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		err = nil
	}
	fmt.Println()
	if err != nil {
		fmt.Printf("demo failed: %v\n", err)
	}
	if d.c != nil && d.c.Comet != nil {
		if cerr := d.finalChecks(); cerr != nil {
			fmt.Printf("SAFETY CHECK FAILED: %v\n", cerr)
			if err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		return 1
	}
	return 0
}

type demo struct {
	dir    string
	killAt int64
	c      *harness.Cluster

	tails   []*harness.LogTail
	signed  []harness.SignRecord
	leader  string // from the latest "became leader" line in any log
	leaderT time.Time
}

func (d *demo) main(ctx context.Context) error {
	root, err := harness.RepoRoot()
	if err != nil {
		return err
	}
	fmt.Println("[1/4] Building kms-ha and cometbft (first run: 1-3 minutes; a dot every 2 s) ...")
	fmt.Print("      ")
	start := time.Now()
	done := dots(2 * time.Second)
	bins, err := harness.Build(ctx, root, filepath.Join(d.dir, "bin"))
	done()
	if err != nil {
		return err
	}
	fmt.Printf("      done in %s\n\n", time.Since(start).Round(100*time.Millisecond))

	say := func(f string, a ...any) { fmt.Printf("      "+f+"\n", a...) }
	fmt.Println("[2/4] Creating the homes: `cometbft init` for the validator; for each signer `kms-ha init`, and a")
	fmt.Println("      certificate from one cluster CA (`kms-ha certs ca`, `kms-ha certs issue`): raft and the cluster")
	fmt.Println("      API run over mutual TLS. The new chain starts with --allow-fresh-state ...")
	d.c, err = harness.New(ctx, harness.Config{
		Dir: d.dir, Bin: bins, Nodes: 3,
		// One block a second is slow enough to read along.
		Comet: harness.CometOptions{ChainID: "demo-chain", TimeoutCommit: time.Second},
		Logf:  say,
	})
	if err != nil {
		return err
	}
	for _, p := range d.c.LogPaths() {
		d.tails = append(d.tails, &harness.LogTail{Path: p})
	}
	fmt.Println()
	fmt.Println("[3/4] Forming the Raft cluster: `kms-ha bootstrap` node1, start it, then start node2 and node3")
	fmt.Println("      and `kms-ha join` them through node1 ...")
	if err := d.c.StartSigners(ctx); err != nil {
		return err
	}
	fmt.Println()
	fmt.Println("[4/4] Starting the validator. Only the Raft leader connects to it; before each")
	fmt.Println("      signature the leader commits the new height/round/step through Raft.")
	if err := d.c.StartChain(ctx); err != nil {
		return err
	}
	fmt.Println()
	fmt.Println("The chain has a single validator, so every block below exists only because")
	fmt.Println("the kms-ha cluster signed it. Press Ctrl-C to stop.")
	fmt.Println()
	return d.follow(ctx)
}

// dots prints a dot every interval until the returned func is called,
// which ends the line: a long build is never silent.
func dots(interval time.Duration) (stop func()) {
	quit, finished := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-quit:
				fmt.Println()
				return
			case <-t.C:
				fmt.Print(".")
			}
		}
	}()
	return func() { close(quit); <-finished }
}

// follow prints every block as it is committed and drives the failover.
func (d *demo) follow(ctx context.Context) error {
	const stall = 20 * time.Second
	var (
		printed    int64
		lastBlock  = time.Now()
		failover   *harness.Failover
		restartAt  int64
		restarted  bool
		caughtUp   = make(chan error, 1)
		tick       = time.NewTicker(100 * time.Millisecond)
		noteOnNext string
	)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-caughtUp:
			if err != nil {
				return err
			}
			fmt.Println()
			fmt.Println("The cluster is whole again. Blocks keep coming; press Ctrl-C to stop.")
			fmt.Println()
		case <-tick.C:
		}
		h, err := d.c.Comet.Height(ctx)
		if err != nil || h <= printed {
			if time.Since(lastBlock) > stall {
				return fmt.Errorf("no new block for %s after height %d", stall, printed)
			}
			continue
		}
		for x := printed + 1; x <= h; x++ {
			d.printBlock(ctx, x, noteOnNext)
			noteOnNext = ""
		}
		printed, lastBlock = h, time.Now()

		switch {
		case failover == nil && printed >= d.killAt:
			f, err := d.kill(ctx, &printed)
			if err != nil {
				return err
			}
			failover, restartAt = f, f.HeightAtKill+5
			// The loop prints the blocks after the kill, this one annotated.
			noteOnNext = fmt.Sprintf("<- first block after the kill, %s later: %s took over",
				f.NextBlock.Round(time.Millisecond), f.NewLeader)
		case failover != nil && !restarted && printed >= restartAt:
			restarted = true
			node := d.c.Node(failover.Killed)
			fmt.Println()
			fmt.Printf(">>> Restarting %s with its old home directory. No `join` needed: it is still a\n", node.ID)
			fmt.Println(">>> member, so it catches up on the Raft log and becomes a follower.")
			fmt.Println()
			if err := d.c.Restart(node); err != nil {
				return err
			}
			go func() {
				fs, ls, err := d.c.WaitCaughtUp(ctx, node, time.Minute, 5)
				if err == nil {
					fmt.Printf(">>> %s is back as a follower of %s: it has applied Raft index %d, the leader has committed %d.\n",
						node.ID, fs.LeaderID, fs.AppliedIndex, ls.CommitIndex)
				}
				caughtUp <- err
			}()
		}
	}
}

// kill crashes the leader right after a block, announcing it first, and
// waits for the next block.
func (d *demo) kill(ctx context.Context, printed *int64) (*harness.Failover, error) {
	f, err := d.c.KillLeader(ctx, harness.FailoverOptions{
		BeforeKill: func(leader *harness.KMSNode, h int64) {
			// KillLeader waits for a fresh block so the kill lands between
			// blocks; show the blocks committed meanwhile before the news.
			for x := *printed + 1; x <= h; x++ {
				d.printBlock(ctx, x, "")
			}
			*printed = h
			fmt.Println()
			fmt.Printf(">>> Killing the leader, %s, with SIGKILL, as if its machine had crashed.\n", leader.ID)
			fmt.Println(">>> The other two nodes elect a new leader, which connects to the validator and signs;")
			fmt.Println(">>> the chain pauses meanwhile. Raft guarantees the new leader knows every height")
			fmt.Printf(">>> %s signed, so nothing is ever signed twice.\n", leader.ID)
			fmt.Println()
		},
	})
	if err != nil {
		return nil, fmt.Errorf("failover: %w", err)
	}
	return f, nil
}

func (d *demo) printBlock(ctx context.Context, h int64, note string) {
	when := "            "
	if b, err := d.c.Comet.Block(ctx, h); err == nil {
		when = b.Time.Local().Format("15:04:05.000")
	}
	// The signer's log line can trail the commit by a moment.
	var signer string
	var round int64
	var ok bool
	for deadline := time.Now().Add(time.Second); ; {
		d.pollLogs()
		if signer, round, ok = harness.PrecommitSigner(d.signed, d.c.Comet.ChainID, h); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	who := "by ?"
	if ok {
		who = "by " + signer
		switch {
		case signer == d.leader:
			who += " (leader)"
		case d.leader != "":
			who += fmt.Sprintf(" (leader now %s)", d.leader)
		}
		if round > 0 {
			who += fmt.Sprintf(", in round %d", round)
		}
	}
	line := fmt.Sprintf("  height %-5d %s  signed %s", h, when, who)
	if note != "" {
		line = fmt.Sprintf("%-58s %s", line, note)
	}
	fmt.Println(line)
}

// pollLogs reads what the kms-ha nodes logged since the last call.
func (d *demo) pollLogs() {
	for i, t := range d.tails {
		s, err := t.Poll()
		if err != nil {
			continue
		}
		d.signed = append(d.signed, s.Signed...)
		for _, e := range s.Events {
			if e.Msg == harness.MsgBecameLeader && !e.Time.Before(d.leaderT) {
				d.leader, d.leaderT = d.c.Nodes[i].ID, e.Time
			}
		}
	}
}

// finalChecks repeats the end-to-end test's safety checks on what the demo
// produced, so a newcomer sees them and CI fails on a violation.
func (d *demo) finalChecks() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	scan, err := d.c.Scan()
	if err != nil {
		return err
	}
	if len(scan.Errors) > 0 {
		return scan.Errors[0]
	}
	if err := harness.CheckNoDoubleSign(scan.Signed); err != nil {
		return err
	}
	per := map[string]int{}
	for _, r := range scan.Signed {
		per[r.NodeID]++
	}
	var parts []string
	for id, n := range per {
		parts = append(parts, fmt.Sprintf("%s %d", id, n))
	}
	sort.Strings(parts)
	fmt.Printf("Safety check: %d signatures in the logs (%s); no height/round/step\n", len(scan.Signed), strings.Join(parts, ", "))
	fmt.Println("was ever signed with two different messages.")
	if !d.c.Comet.Proc.Running() {
		return nil
	}
	latest, err := d.c.Comet.Height(ctx)
	if err != nil || latest < 1 {
		return nil
	}
	// Enough to cover any demo session a person watches, while keeping
	// Ctrl-C quick after a long run.
	from := max(1, latest-2000)
	if err := d.c.Comet.ScanEvidence(ctx, from, latest); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	fmt.Printf("Evidence check: no evidence of double signing in blocks %d..%d.\n", from, latest)
	return nil
}

func (d *demo) cleanup(keep bool) {
	fmt.Println()
	if d.c != nil {
		fmt.Println("Stopping every kms-ha node and cometbft ...")
		d.c.Close()
	}
	harness.KillAll()
	if keep {
		fmt.Printf("Kept %s (homes, logs/, bin/).\n", d.dir)
		return
	}
	if err := os.RemoveAll(d.dir); err != nil {
		fmt.Printf("Could not remove %s: %v\n", d.dir, err)
		return
	}
	fmt.Printf("Removed %s.\n", d.dir)
}
