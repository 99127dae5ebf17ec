package pkcs11

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
	"unicode"
)

// Config selects a key on a token. Field comments give the kms.yaml name,
// which validation errors use. Relative paths are used as given; the config
// package resolves them against --home.
type Config struct {
	Module     string // module: path of the PKCS#11 library
	TokenLabel string // token_label: exactly one of token_label and slot
	Slot       *uint  // slot
	KeyLabel   string // key_label: key_label, key_id or both
	KeyID      string // key_id: hex CKA_ID
	Pin        string // pin: exactly one of pin, pin_env and pin_file
	PinEnv     string // pin_env: name of an environment variable
	PinFile    string // pin_file: trailing whitespace is trimmed
	// Algorithm (algorithm) is the consensus key's algorithm; empty means
	// ed25519.
	Algorithm string
	// SignTimeout bounds each Sign together with the caller's context
	// (whichever ends first); zero means DefaultSignTimeout.
	SignTimeout time.Duration
	Logger      *slog.Logger // nil means slog.Default()
}

// String keeps the PIN out of %v and %+v.
func (c Config) String() string {
	slot := "<nil>"
	if c.Slot != nil {
		slot = fmt.Sprint(*c.Slot)
	}
	return fmt.Sprintf("{Module:%s TokenLabel:%q Slot:%s KeyLabel:%q KeyID:%q Pin:%s PinEnv:%q PinFile:%q SignTimeout:%v}",
		c.Module, c.TokenLabel, slot, c.KeyLabel, c.KeyID, redacted(c.Pin), c.PinEnv, c.PinFile, c.SignTimeout)
}

// LogValue keeps the PIN out of structured logs.
func (c Config) LogValue() slog.Value {
	attrs := []slog.Attr{slog.String("module", c.Module)}
	if c.TokenLabel != "" {
		attrs = append(attrs, slog.String("token_label", c.TokenLabel))
	}
	if c.Slot != nil {
		attrs = append(attrs, slog.Uint64("slot", uint64(*c.Slot)))
	}
	if c.KeyLabel != "" {
		attrs = append(attrs, slog.String("key_label", c.KeyLabel))
	}
	if c.KeyID != "" {
		attrs = append(attrs, slog.String("key_id", c.KeyID))
	}
	if c.Pin != "" {
		attrs = append(attrs, slog.String("pin", redacted(c.Pin)))
	}
	if c.PinEnv != "" {
		attrs = append(attrs, slog.String("pin_env", c.PinEnv))
	}
	if c.PinFile != "" {
		attrs = append(attrs, slog.String("pin_file", c.PinFile))
	}
	return slog.GroupValue(attrs...)
}

func redacted(s string) string {
	if s == "" {
		return `""`
	}
	return "[redacted]"
}

// resolvePin reads the PIN from its source. Errors name the source, never
// the value.
func (c Config) resolvePin() (string, error) {
	switch {
	case c.Pin != "":
		return c.Pin, nil
	case c.PinEnv != "":
		v, ok := os.LookupEnv(c.PinEnv)
		if !ok {
			return "", fmt.Errorf("keys/pkcs11: pin_env %q is not set in the environment", c.PinEnv)
		}
		if v == "" {
			return "", fmt.Errorf("keys/pkcs11: pin_env %q is set but empty", c.PinEnv)
		}
		return v, nil
	default:
		b, err := os.ReadFile(c.PinFile)
		if err != nil {
			return "", fmt.Errorf("keys/pkcs11: pin_file: %w", err)
		}
		// Editors and `echo` add a newline that is not part of the PIN.
		v := strings.TrimRightFunc(string(b), unicode.IsSpace)
		if v == "" {
			return "", fmt.Errorf("keys/pkcs11: pin_file %s is empty", c.PinFile)
		}
		return v, nil
	}
}
