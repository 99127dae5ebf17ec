package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// runCompare starts every system, then measures them in turn, round after
// round, and prints the report.
func runCompare(ctx context.Context, o *options) (err error) {
	dir, done, err := workDir(o)
	if err != nil {
		return err
	}
	defer func() { done(err != nil) }()
	chains := chainIDs(o.validators)
	var systems []*system
	defer func() {
		for _, s := range systems {
			s.close()
		}
	}()
	for i, spec := range o.systems {
		logf("starting %s (%d validators)", spec.label(), len(chains))
		s, err := startSystem(ctx, spec, o.bins, filepath.Join(dir, fmt.Sprintf("sys%d-%s", i+1, spec.name)), chains)
		if err != nil {
			return err
		}
		systems = append(systems, s)
	}
	for _, s := range systems {
		logf("warm-up %s for %s", s.name, o.warmup)
		runAll(s.vals, o.spec, o.warmup)
	}
	disk := []string{"before: " + fsyncLine(dir)}
	results := make([][]window, len(systems))
	for r := 0; r < o.rounds; r++ {
		for i, s := range systems {
			if err := ctx.Err(); err != nil {
				return err
			}
			w := measure(ctx, s, o.spec, o.window)
			l := summarise(w.samples)
			logf("round %d/%d %-42s p50 %6.2f ms  p99 %6.2f ms  %d signed, %d failed", r+1, o.rounds, s.name, ms(l.p50), ms(l.p99), l.n, l.errs)
			results[i] = append(results[i], w)
		}
	}
	disk = append(disk, "after: "+fsyncLine(dir))
	rep := compareReport(o, systems, results, disk)
	fmt.Print(rep)
	if o.md != "" {
		if err := os.WriteFile(o.md, []byte(rep), 0o644); err != nil {
			return err
		}
	}
	for i, s := range systems {
		for _, w := range results[i] {
			if l := summarise(w.samples); l.errs > 0 || l.n == 0 {
				return fmt.Errorf("%s: %d requests failed, %d answered (see the logs in %s)", s.name, l.errs, l.n, dir)
			}
		}
	}
	return nil
}

// compareReport is the markdown report: one row per system over all its
// windows, then each system's ratios to the first, per round and their
// median.
func compareReport(o *options, systems []*system, results [][]window, disk []string) string {
	var b strings.Builder
	rate := "back to back"
	if o.spec.rate > 0 {
		rate = fmt.Sprintf("%g blocks/s each", o.spec.rate)
	}
	fmt.Fprintf(&b, "%d validator(s), %s, a proposal every %d height(s); %d rounds of %s per system, interleaved; load at the end %s\n\n",
		o.validators, rate, o.spec.proposalEvery, o.rounds, o.window, loadAvg())
	fmt.Fprintf(&b, "%s\n\n", strings.Join(disk, "; "))
	fmt.Fprintf(&b, "`%s`\n\n", o.commandString)
	b.WriteString("| signer | signed | failed (refused) | p50 ms | p99 ms | max ms | signatures/s | CPU s per process (leader first) | CPU µs per signature | peak RSS MiB per process |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	for i, s := range systems {
		var all []sample
		var dur time.Duration
		cpu := make([]float64, len(s.procs))
		for _, w := range results[i] {
			all = append(all, w.samples...)
			dur += w.dur
			for j, c := range w.cpu {
				cpu[j] += c
			}
		}
		l := summarise(all)
		var total float64
		var cpus, rss []string
		for j, c := range cpu {
			total += c
			cpus = append(cpus, fmt.Sprintf("%.2f", c))
			rss = append(rss, fmt.Sprintf("%.0f", float64(readProc(s.procs[j].PID()).hwmKiB)/1024))
		}
		perSig := 0.0
		if l.n > 0 {
			perSig = total / float64(l.n) * 1e6
		}
		fmt.Fprintf(&b, "| %s | %d | %s | %.2f | %.2f | %.2f | %.0f | %s | %.0f | %s |\n", s.name, l.n, l.failed(),
			ms(l.p50), ms(l.p99), ms(l.max), float64(l.n)/dur.Seconds(), strings.Join(cpus, " / "), perSig, strings.Join(rss, " / "))
	}
	if len(systems) < 2 {
		return b.String()
	}
	fmt.Fprintf(&b, "\nRatios to %s, per round (p50, p99) and their median:\n\n", systems[0].name)
	b.WriteString("| signer | p50 ratio per round | median p50 ratio | p99 ratio per round | median p99 ratio |\n|---|---|---|---|---|\n")
	for i := 1; i < len(systems); i++ {
		var r50, r99 []float64
		for r := range results[i] {
			base, l := summarise(results[0][r].samples), summarise(results[i][r].samples)
			if base.p50 > 0 && base.p99 > 0 {
				r50 = append(r50, ms(l.p50)/ms(base.p50))
				r99 = append(r99, ms(l.p99)/ms(base.p99))
			}
		}
		fmt.Fprintf(&b, "| %s | %s | **%.2f** | %s | **%.2f** |\n", systems[i].name, floats(r50), median(r50), floats(r99), median(r99))
	}
	return b.String()
}

func floats(xs []float64) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(s, " ")
}
