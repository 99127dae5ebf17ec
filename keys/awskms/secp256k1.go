package awskms

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

// Secp256k1Key is a secp256k1 key held by AWS KMS (key spec
// ECC_SECG_P256K1, algorithm ECDSA_SHA_256), for the SignerService. It
// signs 32-byte digests as they are (MessageType DIGEST). KMS draws a
// random nonce, so two signatures over one digest differ, and answers DER
// with s possibly high; secp256k1.Normalize fixes and checks it. It is
// safe for concurrent use.
type Secp256k1Key struct {
	k   *Key
	pub *dsecp.PublicKey
}

// OpenSecp256k1 connects to KMS, checks that cfg.KeyID names an enabled
// ECC_SECG_P256K1 signing key, fetches its public key and checks a
// self-test signature against it. Like Open, it addresses the key by ARN
// from then on.
func OpenSecp256k1(ctx context.Context, cfg Config) (*Secp256k1Key, error) {
	// The key spec, usage, state, signing algorithm and public key are
	// checked as for a secp256k1 consensus key.
	cfg.Algorithm = keys.Secp256k1
	k, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := k.inspect(ctx); err != nil {
		return nil, err
	}
	pub, err := dsecp.ParsePubKey(k.pub.Bytes())
	if err != nil {
		return nil, fmt.Errorf("keys/awskms: key %s: %w", k.name, err)
	}
	e := &Secp256k1Key{k: k, pub: pub}
	digest := sha256.Sum256([]byte(selfTestMessage))
	raw, err := e.SignDigest(ctx, digest[:])
	if err == nil {
		_, _, err = secp256k1.Normalize(e.pub, digest[:], raw)
	}
	if err != nil {
		return nil, fmt.Errorf("keys/awskms: key %s: %w (during the self-test signature at startup)", k.name, err)
	}
	k.log.Info("AWS KMS secp256k1 key ready", "key_id", cfg.KeyID, "arn", k.arn, "region", k.region,
		"endpoint", cfg.Endpoint, "pub_key", fmt.Sprintf("%X", e.pub.SerializeCompressed()))
	return e, nil
}

// PubKey is the key's public key, as fetched at Open.
func (e *Secp256k1Key) PubKey() *dsecp.PublicKey { return e.pub }

// SignDigest signs a 32-byte digest as it is and answers r||s as KMS gave
// it.
func (e *Secp256k1Key) SignDigest(ctx context.Context, digest []byte) ([]byte, error) {
	k := e.k
	if k.closed.Load() {
		return nil, fmt.Errorf("keys/awskms: key %s: %w", k.name, ErrClosed)
	}
	if len(digest) != secp256k1.DigestSize {
		return nil, fmt.Errorf("keys/awskms: key %s: digest is %d bytes, want %d", k.name, len(digest), secp256k1.DigestSize)
	}
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	out, err := k.client.Sign(callCtx, &kms.SignInput{
		KeyId:            aws.String(k.arn),
		Message:          digest,
		MessageType:      types.MessageTypeDigest,
		SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256,
	})
	if err != nil {
		return nil, k.apiError("Sign", ctx, callCtx, err)
	}
	rs, err := secp256k1.ParseDER(out.Signature)
	if err != nil {
		k.log.Error("AWS KMS returned a malformed signature; refusing it", "key_id", k.name, "arn", k.arn)
		return nil, &Error{kind: ErrBadSignature, msg: fmt.Sprintf("keys/awskms: key %s: AWS KMS returned a malformed ECDSA signature; refusing it", k.name), err: err}
	}
	return rs, nil
}

// Close makes later signs fail.
func (e *Secp256k1Key) Close() error { return e.k.Close() }
