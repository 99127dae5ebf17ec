package awskms

import (
	"slices"

	"github.com/kms-ha/kms-ha/keys"

	"errors"
	"strings"

	"github.com/kms-ha/kms-ha/internal/fielderr"
)

// Algorithms are the consensus key algorithms an AWS KMS key signs for
// kms-ha.
var Algorithms = []string{keys.Ed25519, keys.Secp256k1, keys.Secp256k1Eth, keys.MLDSA65}

// Validate checks the configuration's shape without calling AWS. It
// reports every problem at once; each is a *fielderr.Error naming the
// kms.yaml field, so that config reports it as keys[N].<field>.
func (c Config) Validate() error {
	var errs []error
	if c.KeyID == "" {
		errs = append(errs, fielderr.New("keys/awskms", "key_id", "is required for backend awskms: the key id, ARN or alias/NAME"))
	}
	if c.Endpoint != "" && !strings.HasPrefix(c.Endpoint, "https://") && !strings.HasPrefix(c.Endpoint, "http://") {
		errs = append(errs, fielderr.New("keys/awskms", "endpoint", "%q must be a URL, e.g. https://kms.us-east-1.amazonaws.com", c.Endpoint))
	}
	if a := c.Algorithm; a != "" && !slices.Contains(Algorithms, a) {
		errs = append(errs, fielderr.New("keys/awskms", "algorithm", "%q is not supported on awskms; use one of %s", a, strings.Join(Algorithms, ", ")))
	}
	return errors.Join(errs...)
}
