package main

import (
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The scale plot is a PNG an operator can open, with a log latency axis
// that survives an outlier, and the report names each system's rows.
func TestScaleOutputs(t *testing.T) {
	var rows []scaleRow
	for _, sys := range []string{"kms-ha 3-node", "file signer (FilePV, fsync per signature)"} {
		for i, n := range []int{1, 10, 200} {
			rows = append(rows, scaleRow{system: sys, chains: n,
				lat: latencies{n: 100, p50: time.Millisecond, p99: time.Duration(i*100+2) * time.Millisecond},
				cpu: []float64{0.1, 0.05}, rss: []float64{40 + float64(n)/4, 39}})
		}
	}
	path := filepath.Join(t.TempDir(), "scale.png")
	if err := plotScale(path, rows); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 800 || b.Dy() < 300 {
		t.Errorf("plot is %v, too small to read", b)
	}
	rep := scaleReport(&options{}, rows, "disk: -")
	for _, want := range []string{"| kms-ha 3-node | 200 |", "| file signer (FilePV, fsync per signature) | 1 |",
		"kms-ha 3-node: resident set grows by 256 KiB per chain on the leader, 0 KiB on the followers"} {
		if !strings.Contains(rep, want) {
			t.Errorf("report lacks %q:\n%s", want, rep)
		}
	}
}
