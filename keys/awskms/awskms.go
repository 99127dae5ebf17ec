// Package awskms is the AWS KMS key backend: a consensus key whose private
// half never leaves KMS. Ed25519 (key spec ECC_NIST_EDWARDS25519, algorithm
// ED25519_SHA_512, i.e. PureEd25519 as CometBFT verifies it), secp256k1 and
// secp256k1eth (ECC_SECG_P256K1, ECDSA_SHA_256 over a digest) and ML-DSA-65
// (ML_DSA_65, ML_DSA_SHAKE_256); schemes.go maps each onto KMS.
//
// Credentials come only from the AWS default chain (environment, shared
// config and credentials files, SSO, container or instance role); kms.yaml
// names the key, the region and at most a profile, never a secret.
//
// secp256k1.go holds the SignerService's ECC_SECG_P256K1 keys, on the same
// client, retries and errors.
package awskms

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/cometbft/cometbft/crypto"

	"github.com/kms-ha/kms-ha/keys"
)

const (
	// DefaultSignTimeout bounds one Sign, retries included. CometBFT drops
	// the signer connection after 5 s without an answer; Raft's commit
	// comes out of the same budget, so callers usually pass a shorter
	// context.
	DefaultSignTimeout = 5 * time.Second

	// MaxMessageSize is the largest message KMS signs with MessageType RAW.
	// Ed25519ph (ED25519_PH_SHA_512) would lift the limit but yields a
	// different signature that CometBFT does not accept.
	MaxMessageSize = 4096
)

// The retry policy: the SDK's standard retryer (it knows which errors are
// transient and which are throttling) with its 3 attempts, but backoff in
// tens of milliseconds. Its default backoff draws up to 2 s, then 4 s,
// made for batch clients: two throttled attempts would outlast the
// validator's patience. Here the worst case adds 100 ms + 200 ms of sleep.
const (
	maxAttempts = 3
	baseBackoff = 50 * time.Millisecond
	maxBackoff  = 400 * time.Millisecond
)

// credentialsTimeout bounds resolving credentials at Open: an instance
// role behind a slow IMDS should not hang startup forever.
const credentialsTimeout = 10 * time.Second

// selfTestMessage is what Open signs to prove the key works end to end.
// It starts with ten 0xff bytes, an overlong varint, so it can never parse
// as CometBFT's length-prefixed canonical sign bytes: a signature over it
// is useless to anyone who captures it.
const selfTestMessage = "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff kms-ha/awskms self-test; not a consensus message"

// Config selects a KMS key. It maps one to one to a kms.yaml `awskms` key.
type Config struct {
	// KeyID is a key id, a key ARN, an alias ("alias/NAME") or an alias
	// ARN.
	KeyID string
	// Algorithm is the consensus key's algorithm; empty means ed25519.
	Algorithm string
	// Region of the key; when empty, the AWS environment or profile must
	// supply one (AWS_REGION, `region` in ~/.aws/config).
	Region string
	// Profile is a shared-config profile; empty uses the default chain
	// (AWS_PROFILE, then "default").
	Profile string
	// Endpoint overrides the KMS endpoint URL: a VPC interface endpoint, or
	// a local server in tests. Empty uses the regional AWS endpoint.
	Endpoint string
	// SignTimeout bounds each KMS call, retries included; 0 means
	// DefaultSignTimeout.
	SignTimeout time.Duration
	// Logger receives the backend's few log lines; nil means slog.Default.
	Logger *slog.Logger

	// httpClient replaces the SDK's HTTP client; tests use it to observe
	// every request the SDK makes, credential lookups included.
	httpClient aws.HTTPClient
}

// Key is a consensus key held by AWS KMS. It is safe for concurrent use.
type Key struct {
	name    string // the KeyID as the operator wrote it, for messages
	arn     string
	region  string
	client  *kms.Client
	scheme  *scheme
	pub     crypto.PubKey
	timeout time.Duration
	log     *slog.Logger
	closed  atomic.Bool
}

// Open connects to KMS, checks that cfg.KeyID names an enabled Ed25519
// signing key, fetches its public key and signs a self-test message with it,
// so that a key set up wrongly stops the node at startup rather than at the
// first block it should sign.
//
// From then on the key is addressed by its ARN, not by the alias it may
// have been named with: re-pointing the alias must not silently change the
// validator's consensus key under a running node.
func Open(ctx context.Context, cfg Config) (*Key, error) {
	k, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := k.inspect(ctx); err != nil {
		return nil, err
	}
	if _, err := k.Sign(ctx, []byte(selfTestMessage)); err != nil {
		return nil, fmt.Errorf("%w (during the self-test signature at startup)", err)
	}
	k.log.Info("AWS KMS key ready",
		"key_id", cfg.KeyID, "arn", k.arn, "region", k.region, "endpoint", cfg.Endpoint,
		"algorithm", k.scheme.algorithm, "pub_key", fmt.Sprintf("%X", k.pub.Bytes()), "address", k.PubKey().Address().String())
	return k, nil
}

// connect builds the KMS client for cfg and checks the credentials; it
// does not call KMS yet.
func connect(ctx context.Context, cfg Config) (*Key, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	timeout := cfg.SignTimeout
	if timeout == 0 {
		timeout = DefaultSignTimeout
	}
	if timeout < 0 {
		return nil, fmt.Errorf("keys/awskms: key %s: sign timeout %v is negative", cfg.KeyID, timeout)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}

	var loadOpts []func(*config.LoadOptions) error
	if cfg.Region != "" {
		loadOpts = append(loadOpts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		loadOpts = append(loadOpts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.httpClient != nil {
		loadOpts = append(loadOpts, config.WithHTTPClient(cfg.httpClient))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		var noProfile config.SharedConfigProfileNotExistError
		if errors.As(err, &noProfile) {
			return nil, fmt.Errorf("keys/awskms: key %s: AWS profile %q is not defined in the shared config or credentials files: %w",
				cfg.KeyID, noProfile.Profile, ErrCredentials)
		}
		return nil, fmt.Errorf("keys/awskms: key %s: load AWS configuration: %w", cfg.KeyID, err)
	}
	if awsCfg.Region == "" {
		return nil, fmt.Errorf("keys/awskms: key %s: no AWS region: set region in the key's kms.yaml entry, AWS_REGION, or region in the AWS profile", cfg.KeyID)
	}
	if err := checkCredentials(ctx, awsCfg, cfg.KeyID); err != nil {
		return nil, err
	}

	client := kms.NewFromConfig(awsCfg, func(o *kms.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = maxAttempts
			so.Backoff = retry.BackoffDelayerFunc(backoff)
			// The retry quota protects a service from a fleet of clients
			// retrying in lockstep. A signer sends a few requests per
			// block; once a throttling spell drained the quota, it would
			// refuse every retry until hundreds of signs succeeded, and
			// turn short throttling into missed blocks.
			so.RateLimiter = ratelimit.None
		})
		// Set explicitly so AWS_MAX_ATTEMPTS or a profile's max_attempts
		// cannot stretch a sign past the validator's deadline.
		o.RetryMaxAttempts = maxAttempts
	})

	sch := schemes[cfg.Algorithm]
	if cfg.Algorithm == "" {
		sch = schemes[keys.Ed25519]
	}
	k := &Key{
		scheme:  sch,
		name:    cfg.KeyID,
		arn:     cfg.KeyID,
		region:  awsCfg.Region,
		client:  client,
		timeout: timeout,
		log:     log,
	}
	return k, nil
}

// checkCredentials resolves credentials once, so a node without any fails
// at startup with the chain's own explanation rather than later with a
// signing error.
func checkCredentials(ctx context.Context, awsCfg aws.Config, keyID string) error {
	if awsCfg.Credentials == nil {
		return fmt.Errorf("keys/awskms: key %s: no AWS credentials provider: %w", keyID, ErrCredentials)
	}
	ctx, cancel := context.WithTimeout(ctx, credentialsTimeout)
	defer cancel()
	if _, err := awsCfg.Credentials.Retrieve(ctx); err != nil {
		return &Error{
			kind: ErrCredentials,
			msg: fmt.Sprintf("keys/awskms: key %s: no usable AWS credentials (kms-ha takes them from the default chain: "+
				"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the shared config profile, SSO, or the container or instance role)", keyID),
			err: err,
		}
	}
	return nil
}

// inspect checks the key's metadata and fetches its public key.
func (k *Key) inspect(ctx context.Context) error {
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
	} else if md.KeyId != nil && *md.KeyId != "" {
		k.arn = *md.KeyId
	}
	if err := k.checkSpec(md.KeySpec); err != nil {
		return err
	}
	if md.KeyUsage != types.KeyUsageTypeSignVerify {
		return k.unsuitable("has key usage %s; kms-ha needs SIGN_VERIFY (create the key with %s)", md.KeyUsage, k.scheme.createHint())
	}
	if md.KeyState != types.KeyStateEnabled {
		return k.stateError(md.KeyState)
	}
	if !hasAlgorithm(md.SigningAlgorithms, k.scheme.signing) {
		return k.unsuitable("does not offer the %s signing algorithm (it offers %v); kms-ha needs an %s key (create it with %s)",
			k.scheme.signing, md.SigningAlgorithms, k.scheme.spec, k.scheme.createHint())
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
	if err := k.checkSpec(pk.KeySpec); err != nil {
		return err
	}
	pub, err := k.scheme.parsePub(pk.PublicKey)
	if err != nil {
		return &Error{kind: ErrUnsuitableKey, msg: fmt.Sprintf("keys/awskms: key %s: GetPublicKey returned an unusable %s public key (create the key with %s)",
			k.name, k.scheme.spec, k.scheme.createHint()), err: err}
	}
	k.pub = pub
	return nil
}

func (k *Key) checkSpec(spec types.KeySpec) error {
	if spec != k.scheme.spec {
		return k.unsuitable("has key spec %s; kms-ha needs %s (create it with --key-spec %s --key-usage SIGN_VERIFY)", spec, k.scheme.spec, k.scheme.spec)
	}
	return nil
}

func (k *Key) unsuitable(format string, args ...any) error {
	return &Error{kind: ErrUnsuitableKey, msg: fmt.Sprintf("keys/awskms: key %s ", k.name) + fmt.Sprintf(format, args...)}
}

func hasAlgorithm(algs []types.SigningAlgorithmSpec, want types.SigningAlgorithmSpec) bool {
	for _, a := range algs {
		if a == want {
			return true
		}
	}
	return false
}

// PubKey implements keys.Signer.
func (k *Key) PubKey() crypto.PubKey { return k.pub }

// ARN is the key's ARN as KMS reported it at Open; every call uses it.
func (k *Key) ARN() string { return k.arn }

// Sign implements keys.Signer. It returns only a signature that verifies
// against the public key fetched at Open: a KMS (or anything between) that
// answers with a corrupt signature, or one made by another key, gets an
// error, never a signature passed on to the validator.
func (k *Key) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	if k.closed.Load() {
		return nil, fmt.Errorf("keys/awskms: key %s: %w", k.name, ErrClosed)
	}
	payload, err := k.scheme.payload(msg)
	if err != nil {
		return nil, fmt.Errorf("keys/awskms: key %s: %w", k.name, err)
	}
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	out, err := k.client.Sign(callCtx, &kms.SignInput{
		KeyId:            aws.String(k.arn),
		Message:          payload,
		MessageType:      k.scheme.messageType,
		SigningAlgorithm: k.scheme.signing,
	})
	if err != nil {
		return nil, k.apiError("Sign", ctx, callCtx, err)
	}
	sig, err := k.scheme.finish(k.pub, payload, out.Signature)
	if err != nil {
		k.log.Error("AWS KMS returned a malformed signature; refusing it", "key_id", k.name, "arn", k.arn, "len", len(out.Signature), "err", err)
		return nil, &Error{kind: ErrBadSignature, msg: fmt.Sprintf(
			"keys/awskms: key %s: AWS KMS returned a malformed %d-byte %s signature (%v); refusing it", k.name, len(out.Signature), k.scheme.signing, err)}
	}
	if !k.pub.VerifySignature(msg, sig) {
		k.log.Error("AWS KMS returned a signature that does not verify; refusing it", "key_id", k.name, "arn", k.arn)
		return nil, &Error{kind: ErrBadSignature, msg: fmt.Sprintf(
			"keys/awskms: key %s: AWS KMS returned a signature that does not verify against the key's public key; refusing it", k.name)}
	}
	return sig, nil
}

// Deterministic implements keys.Signer: ED25519_SHA_512 is RFC 8032
// Ed25519, deterministic by construction; AWS KMS's ECDSA draws a new nonce
// per call, and its ML-DSA is not documented as deterministic.
func (k *Key) Deterministic() bool { return k.scheme.deterministic }

// Close implements keys.Signer. KMS holds no session to end; Close only
// makes later signs fail instead of using a key the node let go of.
func (k *Key) Close() error {
	k.closed.Store(true)
	return nil
}

// backoff is jittered exponential backoff on a scale of tens of
// milliseconds: enough to step out of a burst of throttling, short enough
// that all attempts fit in a consensus step.
func backoff(attempt int, _ error) (time.Duration, error) {
	d := baseBackoff << max(attempt, 0)
	if d > maxBackoff || d <= 0 {
		d = maxBackoff
	}
	return d/2 + rand.N(d/2+1), nil
}
