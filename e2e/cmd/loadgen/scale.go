package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// scaleRow is one chain count's figures.
type scaleRow struct {
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
func runScale(ctx context.Context, o *options) error {
	dir, done, err := workDir(o)
	if err != nil {
		return err
	}
	defer done()
	spec := systemSpec{name: fmt.Sprintf("kms%d", o.scaleNodes), nodes: o.scaleNodes}
	var rows []scaleRow
	for _, n := range o.scale {
		logf("scale: %d chains on %s", n, spec.label())
		s, err := startSystem(ctx, spec, o.bins, filepath.Join(dir, fmt.Sprintf("chains-%d", n)), chainIDs(n))
		if err != nil {
			return err
		}
		runAll(s.vals, o.spec, o.warmup)
		w := measure(ctx, s, o.spec, o.window)
		end := s.snapshot()
		s.close()
		row := scaleRow{chains: n, lat: summarise(w.samples), entriesPS: float64(w.entries) / w.dur.Seconds()}
		row.sigsPS = float64(row.lat.n) / w.dur.Seconds()
		for i := range w.cpu {
			row.cpu = append(row.cpu, w.cpu[i]/w.dur.Seconds())
			row.rss = append(row.rss, float64(end[i].rssKiB)/1024)
			row.syscw = append(row.syscw, float64(w.syscw[i])/w.dur.Seconds())
			row.writeKiB = append(row.writeKiB, float64(w.writeB[i])/1024/w.dur.Seconds())
		}
		logf("scale: %d chains: p50 %.2f ms p99 %.2f ms, %d signed, %d failed", n, ms(row.lat.p50), ms(row.lat.p99), row.lat.n, row.lat.errs)
		rows = append(rows, row)
		if err := ctx.Err(); err != nil {
			return err
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

func scaleReport(o *options, rows []scaleRow, disk string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "one %d-node kms-ha cluster per row, each chain a validator at %g blocks/s (a proposal every %d heights, a prevote and a precommit at each), %s measured after %s; load at the end %s; %s\n\n",
		o.scaleNodes, o.spec.rate, o.spec.proposalEvery, o.window, o.warmup, loadAvg(), disk)
	fmt.Fprintf(&b, "`%s`\n\n", o.commandString)
	b.WriteString("| chains | signatures/s | p50 ms | p99 ms | max ms | failed | CPU % per node (leader first) | RSS MiB per node | raft entries/s | write syscalls/s per node | disk KiB/s per node |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %d | %.0f | %.2f | %.2f | %.2f | %d | %s | %s | %.0f | %s | %s |\n", r.chains, r.sigsPS,
			ms(r.lat.p50), ms(r.lat.p99), ms(r.lat.max), r.lat.errs, join(r.cpu, 100, "%.0f"), join(r.rss, 1, "%.0f"),
			r.entriesPS, join(r.syscw, 1, "%.0f"), join(r.writeKiB, 1, "%.0f"))
	}
	if len(rows) > 1 {
		first, last := rows[0], rows[len(rows)-1]
		per := (mean(last.rss) - mean(first.rss)) / float64(last.chains-first.chains) * 1024
		fmt.Fprintf(&b, "\nMemory per chain: %.0f KiB of resident set per node per chain added (%d to %d chains, mean of the nodes).\n",
			per, first.chains, last.chains)
	}
	return b.String()
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
