package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// scaleRow is one chain count's figures on one system.
type scaleRow struct {
	system string
	chains int
	lat    latencies
	sigsPS float64
	// Per node: CPU (fraction of one core), resident set at the end
	// (MiB), write syscalls and KiB written to storage per second.
	cpu, rss, syscw, writeKiB []float64
	entriesPS                 float64
}

// runScale measures one fresh kms-ha cluster per chain count, each chain a
// validator at o.spec.rate, and writes the table and the plot.
func runScale(ctx context.Context, o *options) (err error) {
	dir, done, err := workDir(o)
	if err != nil {
		return err
	}
	defer func() { done(err != nil) }()
	var rows []scaleRow
	for _, n := range o.scale {
		// Each chain count on every system in turn, so that a baseline
		// row meets the same machine as the kms-ha row beside it.
		for i, spec := range o.scaleSystems {
			row, err := scaleOne(ctx, o, spec, filepath.Join(dir, fmt.Sprintf("chains-%d-%d", n, i)), n)
			if err != nil {
				return err
			}
			rows = append(rows, row)
		}
	}
	rep := scaleReport(o, rows, fsyncLine(dir))
	fmt.Print(rep)
	if o.md != "" {
		if err := os.WriteFile(o.md, []byte(rep), 0o644); err != nil {
			return err
		}
	}
	if o.png != "" {
		if err := plotScale(o.png, rows); err != nil {
			return fmt.Errorf("plot: %w", err)
		}
	}
	for _, r := range rows {
		if r.lat.errs > 0 || r.lat.n == 0 {
			return fmt.Errorf("%d chains: %d requests failed, %d answered", r.chains, r.lat.errs, r.lat.n)
		}
	}
	return nil
}

// scaleOne measures one fresh system signing for n chains.
func scaleOne(ctx context.Context, o *options, spec systemSpec, dir string, n int) (scaleRow, error) {
	logf("scale: %d chains on %s", n, spec.label())
	s, err := startSystem(ctx, spec, o.bins, dir, chainIDs(n))
	if err != nil {
		return scaleRow{}, err
	}
	defer s.close()
	runAll(s.vals, o.spec, o.warmup)
	w := measure(ctx, s, o.spec, o.window)
	end := s.snapshot()
	row := scaleRow{system: s.name, chains: n, lat: summarise(w.samples), entriesPS: float64(w.entries) / w.dur.Seconds()}
	row.sigsPS = float64(row.lat.n) / w.dur.Seconds()
	for i := range w.cpu {
		row.cpu = append(row.cpu, w.cpu[i]/w.dur.Seconds())
		row.rss = append(row.rss, float64(end[i].rssKiB)/1024)
		row.syscw = append(row.syscw, float64(w.syscw[i])/w.dur.Seconds())
		row.writeKiB = append(row.writeKiB, float64(w.writeB[i])/1024/w.dur.Seconds())
	}
	logf("scale: %d chains on %s: p50 %.2f ms p99 %.2f ms, %d signed, %d failed", n, s.name, ms(row.lat.p50), ms(row.lat.p99), row.lat.n, row.lat.errs)
	return row, ctx.Err()
}

func scaleReport(o *options, rows []scaleRow, disk string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "a fresh signer per row, each chain a validator at %g blocks/s (a proposal every %d heights, a prevote and a precommit at each), %s measured after %s; load at the end %s; %s\n\n",
		o.spec.rate, o.spec.proposalEvery, o.window, o.warmup, loadAvg(), disk)
	fmt.Fprintf(&b, "`%s`\n\n", o.commandString)
	b.WriteString("| signer | chains | signatures/s | p50 ms | p99 ms | max ms | failed (refused) | CPU % per process (leader first) | RSS MiB per process | raft entries/s | write syscalls/s per process | disk KiB/s per process |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %d | %.0f | %.2f | %.2f | %.2f | %s | %s | %s | %.0f | %s | %s |\n", r.system, r.chains, r.sigsPS,
			ms(r.lat.p50), ms(r.lat.p99), ms(r.lat.max), r.lat.failed(), join(r.cpu, 100, "%.0f"), join(r.rss, 1, "%.0f"),
			r.entriesPS, join(r.syscw, 1, "%.0f"), join(r.writeKiB, 1, "%.0f"))
	}
	for _, sys := range systemsOf(rows) {
		first, last := sys[0], sys[len(sys)-1]
		if last.chains == first.chains || len(first.rss) == 0 {
			continue
		}
		per := func(i int) float64 { return (last.rss[i] - first.rss[i]) / float64(last.chains-first.chains) * 1024 }
		var rest []float64
		for i := 1; i < len(first.rss); i++ {
			rest = append(rest, per(i))
		}
		if len(rest) > 0 {
			fmt.Fprintf(&b, "\n%s: resident set grows by %.0f KiB per chain on the leader, %.0f KiB on the followers (mean)", first.system, per(0), mean(rest))
		} else {
			fmt.Fprintf(&b, "\n%s: resident set grows by %.0f KiB per chain", first.system, per(0))
		}
		fmt.Fprintf(&b, ", from %d to %d chains.\n", first.chains, last.chains)
	}
	return b.String()
}

// systemsOf groups rows by system, in the order they first appear.
func systemsOf(rows []scaleRow) [][]scaleRow {
	var out [][]scaleRow
	idx := map[string]int{}
	for _, r := range rows {
		i, ok := idx[r.system]
		if !ok {
			i = len(out)
			idx[r.system] = i
			out = append(out, nil)
		}
		out[i] = append(out[i], r)
	}
	return out
}

func join(xs []float64, scale float64, format string) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprintf(format, x*scale))
	}
	return strings.Join(s, " / ")
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	var t float64
	for _, x := range xs {
		t += x
	}
	return t / float64(len(xs))
}
