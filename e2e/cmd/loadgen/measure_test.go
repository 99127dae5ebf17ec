package main

import (
	"testing"
	"time"
)

func TestSummarise(t *testing.T) {
	var s []sample
	for i := 1; i <= 100; i++ {
		s = append(s, sample{lat: time.Duration(i) * time.Millisecond})
	}
	s = append(s, sample{err: true, refused: true}, sample{err: true})
	l := summarise(s)
	if l.n != 100 || l.errs != 2 || l.refused != 1 || l.failed() != "2 (1)" {
		t.Errorf("counts: %+v", l)
	}
	if l.p50 != 51*time.Millisecond || l.p99 != 100*time.Millisecond || l.max != 100*time.Millisecond {
		t.Errorf("percentiles: p50 %s p99 %s max %s", l.p50, l.p99, l.max)
	}
	if m := median([]float64{3, 1, 2, 10}); m != 2.5 {
		t.Errorf("median = %g, want 2.5", m)
	}
}

func TestParseSystems(t *testing.T) {
	got, err := parseSystems("filepv, kms1,old-kms3,kms5")
	if err != nil {
		t.Fatal(err)
	}
	want := []systemSpec{{name: "filepv"}, {name: "kms1", nodes: 1}, {name: "old-kms3", nodes: 3, old: true}, {name: "kms5", nodes: 5}}
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("system %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"kms0", "kmsx", "raft3", ""} {
		if _, err := parseSystems(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
