package fielderr

import (
	"errors"
	"fmt"
	"testing"
)

func TestSplit(t *testing.T) {
	a := New("p", "pin", "set %s", "one")
	if a.Error() != "p: pin: set one" {
		t.Fatalf("Error() = %q", a)
	}
	other := errors.New("other")
	fields, rest := Split(errors.Join(a, fmt.Errorf("wrapped: %w", New("p", "slot", "bad")), other))
	if len(fields) != 2 || fields[0].Field != "pin" || fields[1].Field != "slot" || len(rest) != 1 || rest[0] != other {
		t.Fatalf("Split = %v, %v", fields, rest)
	}
	if f, r := Split(nil); f != nil || r != nil {
		t.Fatal("Split(nil) found problems")
	}
}
