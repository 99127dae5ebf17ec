package pkcs11

import (
	"slices"

	"github.com/kms-ha/kms-ha/keys"

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
	if err := checkAlgorithm(c.Algorithm); err != nil {
		bad("algorithm", "%v", err)
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

// Algorithms are the consensus key algorithms a PKCS#11 token signs for
// kms-ha.
var Algorithms = []string{keys.Ed25519, keys.Secp256k1, keys.Secp256k1Eth}

func checkAlgorithm(a string) error {
	switch {
	case a == "" || slices.Contains(Algorithms, a):
		return nil
	case a == keys.MLDSA65:
		return errors.New("mldsa65 is not available on pkcs11: PKCS#11 v2.40 and v3.0 (SoftHSM2 2.6 included) define no ML-DSA " +
			"mechanism; keep an ML-DSA-65 consensus key on the file or awskms backend")
	}
	return fmt.Errorf("%q is not supported on pkcs11; use one of %s", a, strings.Join(Algorithms, ", "))
}
