package pkcs11

import (
	"encoding/hex"
	"errors"
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

// Validate checks the configuration's shape without touching the token,
// the environment or the PIN file.
func (c Config) Validate() error {
	if c.Module == "" {
		return errors.New("keys/pkcs11: module is required: the path of the PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so)")
	}
	switch {
	case c.TokenLabel != "" && c.Slot != nil:
		return errors.New("keys/pkcs11: token_label and slot are both set; set exactly one")
	case c.TokenLabel == "" && c.Slot == nil:
		return errors.New("keys/pkcs11: set token_label or slot to choose the token")
	}
	if c.KeyLabel == "" && c.KeyID == "" {
		return errors.New("keys/pkcs11: set key_label, key_id or both to choose the key")
	}
	if _, err := decodeKeyID(c.KeyID); err != nil {
		return err
	}
	var sources []string
	if c.Pin != "" {
		sources = append(sources, "pin")
	}
	if c.PinEnv != "" {
		sources = append(sources, "pin_env")
	}
	if c.PinFile != "" {
		sources = append(sources, "pin_file")
	}
	switch len(sources) {
	case 0:
		return errors.New("keys/pkcs11: set one of pin_env, pin_file or pin for the token's user PIN")
	case 1:
	default:
		return fmt.Errorf("keys/pkcs11: %s are set; set exactly one PIN source", strings.Join(sources, " and "))
	}
	if c.SignTimeout < 0 {
		return fmt.Errorf("keys/pkcs11: sign timeout %v is negative", c.SignTimeout)
	}
	return nil
}

// decodeKeyID accepts an optional 0x prefix because tools print CKA_ID
// both ways.
func decodeKeyID(s string) ([]byte, error) {
	if s == "" {
		return nil, nil
	}
	h := strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X")
	id, err := hex.DecodeString(h)
	if err != nil || len(id) == 0 {
		return nil, fmt.Errorf("keys/pkcs11: key_id %q is not hex (the CKA_ID as hex digits, e.g. \"01\")", s)
	}
	return id, nil
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
