package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// fsyncProbe times n page writes each followed by fdatasync in dir, the
// operation every signer here waits for: the figure that says how busy
// the disk was during a run.
func fsyncProbe(dir string, n int) (latencies, error) {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return latencies{}, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	page := make([]byte, 4096)
	samples := make([]sample, 0, n)
	for i := 0; i < n; i++ {
		start := time.Now()
		if _, err := f.WriteAt(page, int64(i%16)*4096); err != nil {
			return latencies{}, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return latencies{}, fmt.Errorf("fdatasync %s: %w", filepath.Base(f.Name()), err)
		}
		samples = append(samples, sample{lat: time.Since(start)})
	}
	return summarise(samples), nil
}

// fsyncLine describes the probe for a report.
func fsyncLine(dir string) string {
	l, err := fsyncProbe(dir, 300)
	if err != nil {
		return "disk: fsync probe failed: " + err.Error()
	}
	return fmt.Sprintf("disk (4 KiB write + fdatasync in the work dir, %d times): p50 %.2f ms, p99 %.2f ms", l.n, ms(l.p50), ms(l.p99))
}
