//go:build chaos

package main

import (
	"bytes"
	"context"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/kms-ha/kms-ha/e2e/harness"
)

// finish lets the chain settle, reads every block, stops everything,
// checks the invariants over every log and writes the report.
func (r *Run) finish(ctx context.Context) int {
	end := time.Now()
	_ = harness.Sleep(ctx, 3*time.Second)
	latest, err := r.obs.Height(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos: final height:", err)
		return 2
	}
	r.mon.Stop()
	if err := r.readBlocks(ctx, latest); err != nil {
		fmt.Fprintln(os.Stderr, "chaos: reading blocks:", err)
		return 2
	}
	r.c.Close()
	sf := r.checkSafety(latest)
	heights, seen, signedTotal, baseline := r.liveness(latest, end)
	rep := r.report(latest, signedTotal, baseline, sf.signed, sf.connects, sf.evidence, sf.conflicts, sf.regressions)
	if err := r.writeOutputs(rep, heights, seen, end); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	fmt.Println()
	fmt.Println(rep.summary)
	logf("report: %s", filepath.Join(r.o.out, "report.md"))
	if len(r.violations) > 0 {
		fmt.Fprintf(os.Stderr, "\nCHAOS: SAFETY VIOLATION (seed %d):\n", r.o.seed)
		for _, v := range r.violations {
			fmt.Fprintln(os.Stderr, "  "+v)
		}
		return 1
	}
	logf("chaos: PASS: seed %d, %d faults, 0 evidence, 0 conflicting sign bytes, every signature inside its node's leadership", r.o.seed, len(r.windows))
	return 0
}

// readBlocks fetches blocks 1..latest-1 (four at a time) and notes which
// carry the kms-ha validator's signature.
func (r *Run) readBlocks(ctx context.Context, latest int64) error {
	logf("reading blocks 1..%d", latest)
	var wg sync.WaitGroup
	hs := make(chan int64)
	var fetchErr error
	var emu sync.Mutex
	for k := 0; k < 4; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for h := range hs {
				if _, err := r.signedAt(ctx, h); err != nil {
					emu.Lock()
					fetchErr = err
					emu.Unlock()
				}
			}
		}()
	}
	for h := int64(1); h < latest; h++ {
		hs <- h
	}
	close(hs)
	wg.Wait()
	if fetchErr != nil {
		return fetchErr
	}
	if b1, err := r.obs.Block(ctx, 1); err == nil {
		r.blocks[1] = b1
	}
	return nil
}

// safetyCounts is what checkSafety found.
type safetyCounts struct {
	signed, connects, evidence, conflicts, regressions int
}

// checkSafety records a violation for any evidence, double sign,
// signature outside leadership or watermark moving back.
func (r *Run) checkSafety(latest int64) safetyCounts {
	var evidence []string
	for h := int64(1); h <= latest; h++ {
		if b := r.blocks[h]; b != nil && len(b.Evidence) > 0 {
			t, _ := r.mon.FirstSeen(h)
			evidence = append(evidence, fmt.Sprintf("height %d, during %s: %s", h, r.windowAt(t), b.Evidence))
		}
	}
	for _, e := range evidence {
		r.violation("EVIDENCE in block: %s (seed %d)", e, r.o.seed)
	}
	scan, err := r.c.Scan()
	if err != nil {
		r.violation("reading the audit logs: %v", err)
	}
	for _, e := range scan.Errors {
		r.violation("audit log: %v", e)
	}
	conflicts := conflictsOf(scan.Signed)
	for _, cf := range conflicts {
		r.violation("DOUBLE SIGN at %s (height %d) during %s (seed %d)", cf.slot, cf.slot.Height, r.windowAt(cf.t), r.o.seed)
	}
	if err := harness.CheckNoDoubleSign(scan.Signed); err != nil && len(conflicts) == 0 {
		r.violation("%v", err)
	}
	connects, err := harness.CheckLeaderOnly(r.c.LogPaths()...)
	if err != nil {
		r.violation("SIGNATURE OUTSIDE LEADERSHIP: %v (seed %d)", err, r.o.seed)
	} else if connects == 0 {
		r.violation("no validator connection in any log: the leader-only check proves nothing")
	}
	regressions := regressionsOf(scan.Signed)
	for _, rg := range regressions {
		r.violation("SIGNED HRS MOVED BACK: %s during %s (seed %d)", rg.msg, r.windowAt(rg.t), r.o.seed)
	}

	return safetyCounts{signed: len(scan.Signed), connects: connects, evidence: len(evidence),
		conflicts: len(conflicts), regressions: len(regressions)}
}

// liveness attributes each height to the fault window it fell in, and
// counts per window the missed blocks and the time from heal to the next
// signed block.
func (r *Run) liveness(latest int64, end time.Time) (heights []int64, seen func(int64) time.Time, signedTotal, baseline int) {
	heights = make([]int64, 0, latest)
	for h := int64(1); h < latest; h++ {
		heights = append(heights, h)
	}
	seen = func(h int64) time.Time { t, _ := r.mon.FirstSeen(h); return t }
	inWindow := map[int64]bool{}
	for i, w := range r.windows {
		limit := end
		if i+1 < len(r.windows) {
			limit = r.windows[i+1].Start
		}
		recAt, prev := time.Time{}, w.Start
		for _, h := range heights {
			t := seen(h)
			if t.IsZero() || t.Before(w.Start) || !t.Before(limit) {
				continue
			}
			if !recAt.IsZero() {
				break
			}
			inWindow[h] = true
			w.Stall, prev = max(w.Stall, t.Sub(prev)), t
			if r.signed[h] && t.After(w.Heal) {
				recAt, w.NextSigned, w.Recovered = t, h, true
				w.Recovery = t.Sub(w.Heal)
				continue
			}
			if !r.signed[h] {
				w.Missed++
			}
		}
	}
	for i, w := range r.windows {
		if !w.Recovered { // the chain may have halted until the next step
			limit := end
			if i+1 < len(r.windows) {
				limit = r.windows[i+1].Start
			}
			w.Stall = max(w.Stall, limit.Sub(w.Start))
		}
	}
	for _, h := range heights {
		if r.signed[h] {
			signedTotal++
		} else if !inWindow[h] {
			baseline++
		}
	}

	return heights, seen, signedTotal, baseline
}

// writeOutputs writes the report, the plot, a copy of every log and the
// docs' summary.
func (r *Run) writeOutputs(rep report, heights []int64, seen func(int64) time.Time, end time.Time) error {
	if err := os.MkdirAll(r.o.out, 0o755); err != nil {
		return err
	}
	_ = os.WriteFile(filepath.Join(r.o.out, "report.md"), []byte(rep.full), 0o644)
	png := filepath.Join(r.o.out, "chaos.png")
	if err := r.plot(png, heights, seen, end); err != nil {
		logf("plot: %v", err)
	}
	// Keep the logs next to the report.
	logDir := filepath.Join(r.o.out, "logs")
	_ = os.MkdirAll(logDir, 0o755)
	for _, p := range append(r.c.LogPaths(), r.nodeLogs()...) {
		if data, err := os.ReadFile(p); err == nil {
			_ = os.WriteFile(filepath.Join(logDir, filepath.Base(p)), data, 0o644)
		}
	}
	switch {
	case r.o.docs == "":
	case r.o.kinds != "" || r.o.handover != "" || r.o.commit != defaultTimeoutCommit:
		logf("docs: %s left alone: a run restricted to some faults, or with a non-default handover or block time, is not the published one", r.o.docs)
	default:
		if err := r.writeDocs(rep.summary, png); err != nil {
			logf("docs: %v", err)
		}
	}
	return nil
}

func (r *Run) nodeLogs() []string {
	var ps []string
	for _, n := range r.tn.Nodes {
		ps = append(ps, n.Proc.LogPath)
	}
	return ps
}

type conflict struct {
	slot harness.HRS
	t    time.Time
}

func conflictsOf(recs []harness.SignRecord) []conflict {
	by := map[harness.HRS]map[string]time.Time{}
	for _, rc := range recs {
		if by[rc.HRS()] == nil {
			by[rc.HRS()] = map[string]time.Time{}
		}
		if _, ok := by[rc.HRS()][rc.SHA]; !ok {
			by[rc.HRS()][rc.SHA] = rc.Time
		}
	}
	var out []conflict
	for slot, m := range by {
		if len(m) > 1 {
			var last time.Time
			for _, t := range m {
				if t.After(last) {
					last = t
				}
			}
			out = append(out, conflict{slot, last})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].t.Before(out[j].t) })
	return out
}

type regression struct {
	msg string
	t   time.Time
}

// regressionsOf checks, per node log (all incarnations), that the signed
// HRS of each chain never goes down: the watermark is durable.
func regressionsOf(recs []harness.SignRecord) []regression {
	type key struct{ file, chain string }
	last := map[key]harness.SignRecord{}
	var out []regression
	for _, rc := range recs {
		k := key{rc.File, rc.Chain}
		if p, ok := last[k]; ok {
			a := harness.Watermark{Height: rc.Height, Round: rc.Round, Step: rc.Step}
			b := harness.Watermark{Height: p.Height, Round: p.Round, Step: p.Step}
			if hrsLess(a, b) {
				out = append(out, regression{fmt.Sprintf("%s signed %s after %s (%s:%d)", rc.NodeID, rc.HRS(), p.HRS(), rc.File, rc.Line), rc.Time})
				continue
			}
		}
		last[k] = rc
	}
	return out
}

type report struct{ summary, full string }

type agg struct {
	n, missed, maxMissed, notRecovered int
	rec, stall                         []time.Duration
}

// medMax formats the median and the maximum of ds, sorting it.
func medMax(ds []time.Duration) (string, string) {
	if len(ds) == 0 {
		return "–", "–"
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2].Round(10 * time.Millisecond).String(), ds[len(ds)-1].Round(10 * time.Millisecond).String()
}

func (r *Run) report(latest int64, signed, baseline, sigs, connects, evidence, conflicts, regressions int) report {
	per := map[string]*agg{}
	for _, w := range r.windows {
		key := w.Label
		if strings.HasPrefix(key, "overlap") {
			key = "overlap (2 faults at once)"
		}
		a := per[key]
		if a == nil {
			a = &agg{}
			per[key] = a
		}
		a.n++
		a.stall = append(a.stall, w.Stall)
		a.missed += w.Missed
		a.maxMissed = max(a.maxMissed, w.Missed)
		if w.Recovered {
			a.rec = append(a.rec, w.Recovery)
		} else {
			a.notRecovered++
		}
	}
	crit := "under a third of the power (10 of 40): the chain never waits for it"
	if r.o.critical {
		crit = "40% of the power (20 of 50): the chain cannot commit without it"
	}
	var s bytes.Buffer
	fmt.Fprintf(&s, "Command: `%s`  \n", r.command())
	fmt.Fprintf(&s, "Seed %d, %d fault steps, %s of faults, %d heights (%d signed by kms-ha), timeout_commit %v, kms-ha validator holds %s.\n\n",
		r.o.seed, len(r.windows), time.Since(r.start).Round(time.Second), latest, signed, r.o.commit, crit)
	fmt.Fprintf(&s, "**Safety: %d evidence, %d conflicting sign bytes, %d watermark regressions, %d signatures outside leadership** (%d signatures, %d validator connections checked).\n\n",
		evidence, conflicts, regressions, boolInt(strings.Contains(strings.Join(r.violations, "\n"), "OUTSIDE LEADERSHIP")), sigs, connects)
	s.WriteString("| fault (target) | runs | missed blocks (total) | missed per run (max) | heal → next signed block, median | max | not recovered in 30 s | longest block gap, median | max |\n")
	s.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, k := range sortedKeys(per) {
		a := per[k]
		med, mx := medMax(a.rec)
		smed, smx := medMax(a.stall)
		fmt.Fprintf(&s, "| %s | %d | %d | %d | %s | %s | %d | %s | %s |\n", k, a.n, a.missed, a.maxMissed, med, mx, a.notRecovered, smed, smx)
	}
	fmt.Fprintf(&s, "\nMissed blocks outside any fault window: %d.\n", baseline)

	var f bytes.Buffer
	f.WriteString("# kms-ha chaos run\n\n")
	f.WriteString(s.String())
	f.WriteString("\n![signed and missed heights over time](chaos.png)\n\n")
	f.WriteString("Plot: one column per committed height at the time it was first seen; green = kms-ha's precommit is in the commit, red = missed. Shaded: fault windows (dark: fault applied, light: heal until the next signed block).\n\n")
	f.WriteString("Missed blocks of a step: heights committed from the fault's start until the first block after the heal that carries kms-ha's precommit. Recovery: heal until that block was first seen (polled every 100 ms).\n\n")
	if len(r.violations) > 0 {
		f.WriteString("## SAFETY VIOLATIONS\n\n")
		for _, v := range r.violations {
			fmt.Fprintf(&f, "- %s\n", v)
		}
		f.WriteString("\n")
	}
	if len(r.events) > 0 {
		f.WriteString("## Events\n\n")
		for _, e := range r.events {
			fmt.Fprintf(&f, "- %s\n", strings.ReplaceAll(e, "\n", "\n  "))
		}
		f.WriteString("\n")
	}
	f.WriteString("Longest block gap: the longest time without a new block from the fault's start to that block (to the next step when it never came): what a fault costs when the chain cannot commit without kms-ha.\n\n")
	f.WriteString("## Steps\n\n| step | fault | detail | duration | height at start | missed | heal → next signed | longest block gap |\n|---:|---|---|---:|---:|---:|---:|---:|\n")
	for _, w := range r.windows {
		rec := "not recovered"
		if w.Recovered {
			rec = w.Recovery.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(&f, "| %d | %s | %s | %s | %d | %d | %s | %s |\n", w.Step, w.Label, w.Detail,
			w.Heal.Sub(w.Start).Round(100*time.Millisecond), w.HeightStart, w.Missed, rec, w.Stall.Round(10*time.Millisecond))
	}
	return report{summary: s.String(), full: f.String()}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (r *Run) command() string {
	cmd := fmt.Sprintf("make chaos CHAOS_FAULTS=%d CHAOS_SEED=%d", r.o.faults, r.o.seed)
	if r.o.critical {
		cmd += " CHAOS_CRITICAL=1"
	}
	if r.o.kinds != "" {
		cmd += " CHAOS_KINDS=" + r.o.kinds
	}
	if r.o.handover != "" {
		cmd += " CHAOS_HANDOVER=" + r.o.handover
	}
	if r.o.commit != defaultTimeoutCommit {
		cmd += " CHAOS_TIMEOUT_COMMIT=" + r.o.commit.String()
	}
	return cmd
}

// plot draws heights over time: a column per height (green signed, red
// missed) over shaded fault windows.
func (r *Run) plot(path string, heights []int64, seen func(int64) time.Time, end time.Time) error {
	const W, H = 1600, 220
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	fillRect(img, 0, 0, W, H, color.RGBA{255, 255, 255, 255})
	t0 := r.start.Add(-5 * time.Second)
	span := end.Add(3 * time.Second).Sub(t0)
	x := func(t time.Time) int { return int(float64(W-1) * float64(t.Sub(t0)) / float64(span)) }
	for _, w := range r.windows {
		fillRect(img, x(w.Start), 0, max(x(w.Heal), x(w.Start)+1), H, color.RGBA{255, 200, 120, 255})
		if w.Recovered {
			fillRect(img, x(w.Heal), 0, max(x(w.Heal.Add(w.Recovery)), x(w.Heal)+1), H, color.RGBA{255, 235, 200, 255})
		}
	}
	for _, h := range heights {
		t := seen(h)
		if t.IsZero() || t.Before(t0) {
			continue
		}
		c, top := color.RGBA{0, 150, 0, 255}, 40
		if !r.signed[h] {
			c, top = color.RGBA{220, 0, 0, 255}, 120
		}
		fillRect(img, x(t), top, x(t)+1, top+60, c)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return png.Encode(f, img)
}

func fillRect(img *image.RGBA, x0, y0, x1, y1 int, c color.RGBA) {
	for y := y0; y < y1; y++ {
		for x := x0; x < x1; x++ {
			img.SetRGBA(x, y, c)
		}
	}
}

// writeDocs replaces the summary section of the docs page (the critical
// run has its own) and copies the plot next to it.
func (r *Run) writeDocs(summary, png string) error {
	section, plotName := "summary", "chaos.png"
	if r.o.critical {
		section, plotName = "critical", "chaos-critical.png"
	}
	docsBegin, docsEnd := "<!-- chaos:"+section+":begin -->", "<!-- chaos:"+section+":end -->"
	data, err := os.ReadFile(r.o.docs)
	if err != nil {
		return err
	}
	s := string(data)
	i, j := strings.Index(s, docsBegin), strings.Index(s, docsEnd)
	if i < 0 || j < i {
		return fmt.Errorf("%s: no %s ... %s section", r.o.docs, docsBegin, docsEnd)
	}
	out := s[:i+len(docsBegin)] + "\n" + summary + "\n![signed and missed heights over time](" + plotName + ")\n" + s[j:]
	if err := os.WriteFile(r.o.docs, []byte(out), 0o644); err != nil {
		return err
	}
	img, err := os.ReadFile(png)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(filepath.Dir(r.o.docs), plotName), img, 0o644)
}
