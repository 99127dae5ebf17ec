package logthrottle

import (
	"testing"
	"time"
)

func TestOneLinePerKeyPerInterval(t *testing.T) {
	l := New(50 * time.Millisecond)
	if _, ok := l.Allow("a"); !ok {
		t.Fatal("the first event of a key was held back")
	}
	for range 5 {
		if _, ok := l.Allow("a"); ok {
			t.Fatal("a repeat within the interval was let through")
		}
	}
	if _, ok := l.Allow("b"); !ok {
		t.Fatal("another key was held back")
	}
	time.Sleep(60 * time.Millisecond)
	held, ok := l.Allow("a")
	if !ok || held != 5 {
		t.Fatalf("after the interval: let through %v, held back %d; want true, 5", ok, held)
	}
}
