//go:build !cgo

package pkcs11

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestOpenWithoutCgo(t *testing.T) {
	cfg := Config{Module: "/usr/lib/softhsm/libsofthsm2.so", TokenLabel: "t", KeyLabel: "k", Pin: "1234"}
	_, err := Open(context.Background(), cfg)
	if !errors.Is(err, ErrNotBuilt) {
		t.Fatalf("Open: %v, want ErrNotBuilt", err)
	}
	if !strings.Contains(err.Error(), "built without PKCS#11 support") {
		t.Fatalf("error does not say why: %v", err)
	}
	// A configuration mistake is still reported as one.
	cfg.Pin = ""
	if _, err := Open(context.Background(), cfg); errors.Is(err, ErrNotBuilt) || err == nil {
		t.Fatalf("Open with no pin: %v, want the validation error", err)
	}
}
