package pkcs11

import (
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/kms-ha/kms-ha/internal/fielderr"
)

const errPrefix = "keys/pkcs11"

// Validate checks the configuration's shape without touching the token,
// the environment or the PIN file. It reports every problem at once; each
// is a *fielderr.Error naming the kms.yaml field, so that config reports
// it as keys[N].<field>.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fielderr.New(errPrefix, field, format, args...))
	}
	if c.Module == "" {
		bad("module", "is required for backend pkcs11: the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so")
	}
	if (c.TokenLabel == "") == (c.Slot == nil) {
		bad("token_label", "set exactly one of token_label and slot")
	}
	if c.KeyLabel == "" && c.KeyID == "" {
		bad("key_label", "set key_label, key_id (hex), or both")
	}
	if _, err := decodeKeyID(c.KeyID); err != nil {
		errs = append(errs, err)
	}
	n := 0
	for _, v := range []string{c.Pin, c.PinEnv, c.PinFile} {
		if v != "" {
			n++
		}
	}
	if n != 1 {
		bad("pin", "set exactly one of pin, pin_env and pin_file (pin_env or pin_file keep the PIN out of kms.yaml)")
	}
	if c.SignTimeout < 0 {
		errs = append(errs, fmt.Errorf("%s: sign timeout %v is negative", errPrefix, c.SignTimeout))
	}
	return errors.Join(errs...)
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
		return nil, fielderr.New(errPrefix, "key_id", "%q is not hex (the CKA_ID of the key, e.g. 01)", s)
	}
	return id, nil
}
