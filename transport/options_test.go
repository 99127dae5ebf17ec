package transport

import (
	"testing"
	"time"
)

// The schedule itself is tested in internal/backoff.

func TestOptionsDefaults(t *testing.T) {
	o := Options{}.withDefaults()
	if o.DialTimeout != 2*time.Second || o.BackoffMin != 200*time.Millisecond ||
		o.BackoffMax != time.Second || o.ReadTimeout != 10*time.Second ||
		o.WriteTimeout != 5*time.Second || o.MaxFrameSize != 1<<20+64<<10 || o.Logger == nil {
		t.Fatalf("unexpected defaults: %+v", o)
	}
}
