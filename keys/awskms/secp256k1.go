package awskms

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	dsecp "github.com/decred/dcrd/dcrec/secp256k1/v4"

	"github.com/kms-ha/kms-ha/keys/secp256k1"
)

const secp256k1CreateHint = "aws kms create-key --key-spec ECC_SECG_P256K1 --key-usage SIGN_VERIFY"

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
	k, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	e := &Secp256k1Key{k: k}
	if err := e.inspect(ctx); err != nil {
		return nil, err
	}
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

func (e *Secp256k1Key) inspect(ctx context.Context) error {
	k := e.k
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	desc, err := k.client.DescribeKey(callCtx, &kms.DescribeKeyInput{KeyId: aws.String(k.name)})
	if err != nil {
		err = k.apiError("DescribeKey", ctx, callCtx, err)
	}
	cancel()
	if err != nil {
		return err
	}
	md := desc.KeyMetadata
	if md == nil {
		return fmt.Errorf("keys/awskms: key %s: DescribeKey returned no key metadata: %w", k.name, ErrUnavailable)
	}
	if md.Arn != nil && *md.Arn != "" {
		k.arn = *md.Arn
	}
	switch {
	case md.KeySpec != types.KeySpecEccSecgP256k1:
		return k.unsuitable("has key spec %s; a secp256k1 key needs ECC_SECG_P256K1 (create it with %s)", md.KeySpec, secp256k1CreateHint)
	case md.KeyUsage != types.KeyUsageTypeSignVerify:
		return k.unsuitable("has key usage %s; kms-ha needs SIGN_VERIFY (create the key with %s)", md.KeyUsage, secp256k1CreateHint)
	case md.KeyState != types.KeyStateEnabled:
		return k.stateError(md.KeyState)
	case !hasAlgorithm(md.SigningAlgorithms, types.SigningAlgorithmSpecEcdsaSha256):
		return k.unsuitable("does not offer ECDSA_SHA_256 (it offers %v)", md.SigningAlgorithms)
	}
	callCtx, cancel = context.WithTimeout(ctx, k.timeout)
	pk, err := k.client.GetPublicKey(callCtx, &kms.GetPublicKeyInput{KeyId: aws.String(k.arn)})
	if err != nil {
		err = k.apiError("GetPublicKey", ctx, callCtx, err)
	}
	cancel()
	if err != nil {
		return err
	}
	pub, err := secp256k1.ParseSPKI(pk.PublicKey)
	if err != nil {
		return &Error{kind: ErrUnsuitableKey, msg: fmt.Sprintf("keys/awskms: key %s: GetPublicKey returned no secp256k1 public key", k.name), err: err}
	}
	e.pub = pub
	return nil
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
