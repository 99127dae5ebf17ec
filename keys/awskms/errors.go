package awskms

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
)

// Error kinds, for errors.Is: callers count refusals by reason and decide
// what is worth retrying on another node. Timeouts and cancellations also
// match context.DeadlineExceeded or context.Canceled.
var (
	// ErrThrottled: KMS refused the request for the account's or key's
	// request quota, on every attempt.
	ErrThrottled = errors.New("throttled by AWS KMS")
	// ErrAccessDenied: the IAM identity may not use the key.
	ErrAccessDenied = errors.New("access denied by AWS KMS")
	// ErrCredentials: no credentials could be found, or AWS rejected them.
	ErrCredentials = errors.New("no valid AWS credentials")
	// ErrKeyDisabled: the key exists but is disabled, pending deletion, or
	// otherwise not usable.
	ErrKeyDisabled = errors.New("AWS KMS key not usable")
	// ErrKeyNotFound: no such key or alias in the region and account.
	ErrKeyNotFound = errors.New("AWS KMS key not found")
	// ErrUnsuitableKey: the key is not a signing key of the configured
	// algorithm.
	ErrUnsuitableKey = errors.New("AWS KMS key is not a signing key of the configured algorithm")
	// ErrBadSignature: KMS answered with a signature that does not verify.
	ErrBadSignature = errors.New("AWS KMS returned an invalid signature")
	// ErrUnavailable: KMS could not be reached or failed internally, or did
	// not answer in time.
	ErrUnavailable = errors.New("AWS KMS unavailable")
	// ErrClosed: the key was closed.
	ErrClosed = errors.New("key closed")
)

// Error is an operator-facing error: what went wrong and what to fix, then
// the SDK's own detail. It unwraps to its kind (one of the Err values) and
// to the SDK error, so errors.As still finds smithy.APIError and the typed
// KMS exceptions.
type Error struct {
	kind   error
	msg    string
	detail string
	err    error
	extra  error // context error, for timeouts and cancellations
}

func (e *Error) Error() string {
	switch {
	case e.detail != "":
		return e.msg + ": " + e.detail
	case e.err != nil:
		return e.msg + ": " + e.err.Error()
	}
	return e.msg
}

// Unwrap returns the kind, the context error if any, and the cause.
func (e *Error) Unwrap() []error {
	errs := []error{e.kind}
	if e.extra != nil {
		errs = append(errs, e.extra)
	}
	if e.err != nil {
		errs = append(errs, e.err)
	}
	return errs
}

// credentialCodes are the answers AWS gives when it does not accept the
// request's credentials or signature, as opposed to refusing the identity.
var credentialCodes = map[string]bool{
	"UnrecognizedClientException":         true,
	"InvalidSignatureException":           true,
	"IncompleteSignatureException":        true,
	"ExpiredTokenException":               true,
	"InvalidClientTokenId":                true,
	"MissingAuthenticationTokenException": true,
}

// throttleCodes are KMS's own throttling answers; the SDK's retryer treats
// both as throttling too.
var throttleCodes = map[string]bool{
	"ThrottlingException":    true,
	"LimitExceededException": true,
}

// apiError turns an SDK error from op into an Error naming the key and
// what the operator should do. parent is the caller's context and callCtx
// the one bounded by the sign timeout, to tell "the caller gave up" from
// "KMS was too slow".
func (k *Key) apiError(op string, parent, callCtx context.Context, err error) error {
	e := &Error{err: err, detail: op + ": " + describe(err)}
	var (
		apiErr   smithy.APIError
		limit    *types.LimitExceededException
		disabled *types.DisabledException
		invalid  *types.KMSInvalidStateException
		notFound *types.NotFoundException
		usage    *types.InvalidKeyUsageException
		quota    ratelimit.QuotaExceededError
	)
	switch {
	case errors.As(err, &limit):
		e.kind, e.msg = ErrThrottled, fmt.Sprintf("keys/awskms: AWS KMS is throttling requests for key %s (raise the KMS request quota for the account and region)", k.name)
	case errors.As(err, &disabled):
		e.kind, e.msg = ErrKeyDisabled, fmt.Sprintf("keys/awskms: key %s is disabled: enable it (aws kms enable-key --key-id %s)", k.name, k.arn)
	case errors.As(err, &invalid):
		e.kind, e.msg = ErrKeyDisabled, fmt.Sprintf("keys/awskms: key %s is not in a usable state (pending deletion, pending import, or its key store is disconnected): see aws kms describe-key --key-id %s", k.name, k.arn)
	case errors.As(err, &notFound):
		e.kind, e.msg = ErrKeyNotFound, fmt.Sprintf("keys/awskms: key %s not found in region %s: check key_id and region, and that the node's credentials belong to the key's account", k.name, k.region)
	case errors.As(err, &usage):
		e.kind, e.msg = ErrUnsuitableKey, fmt.Sprintf("keys/awskms: key %s cannot sign with %s; kms-ha needs an %s SIGN_VERIFY key (create it with %s)", k.name, k.scheme.signing, k.scheme.spec, k.scheme.createHint())
	case errors.As(err, &apiErr) && throttleCodes[apiErr.ErrorCode()]:
		e.kind, e.msg = ErrThrottled, fmt.Sprintf("keys/awskms: AWS KMS is throttling requests for key %s (raise the KMS request quota for the account and region)", k.name)
	case errors.As(err, &apiErr) && apiErr.ErrorCode() == "AccessDeniedException":
		e.kind, e.msg = ErrAccessDenied, fmt.Sprintf("keys/awskms: access denied to key %s: check the IAM policy allows kms:Sign, kms:GetPublicKey, kms:DescribeKey for this node's role", k.name)
	case errors.As(err, &apiErr) && credentialCodes[apiErr.ErrorCode()]:
		e.kind, e.msg = ErrCredentials, fmt.Sprintf("keys/awskms: AWS rejected the credentials used for key %s (expired or revoked keys or session token, or a skewed clock)", k.name)
	case errors.As(err, &apiErr):
		e.kind, e.msg = ErrUnavailable, fmt.Sprintf("keys/awskms: AWS KMS refused %s for key %s", op, k.name)
	case parent.Err() != nil:
		// The SDK's text adds nothing here but layers of wrapping.
		e.kind, e.extra = ErrUnavailable, parent.Err()
		e.msg = fmt.Sprintf("keys/awskms: %s for key %s abandoned: the caller gave up", op, k.name)
		e.detail = parent.Err().Error()
	case errors.Is(callCtx.Err(), context.DeadlineExceeded):
		e.kind, e.extra = ErrUnavailable, callCtx.Err()
		e.msg = fmt.Sprintf("keys/awskms: AWS KMS did not answer %s for key %s within %v", op, k.name, k.timeout)
		e.detail = callCtx.Err().Error()
	case errors.As(err, &quota):
		// Unreachable with the retry quota disabled; kept so that turning
		// it back on cannot produce an unexplained error.
		e.kind, e.msg = ErrThrottled, fmt.Sprintf("keys/awskms: AWS KMS is throttling requests for key %s (client retry quota exhausted)", k.name)
	default:
		e.kind, e.msg = ErrUnavailable, fmt.Sprintf("keys/awskms: cannot reach AWS KMS for key %s in region %s", k.name, k.region)
	}
	return e
}

// stateError explains a KeyState other than Enabled found at Open.
func (k *Key) stateError(state types.KeyState) error {
	var fix string
	switch state {
	case types.KeyStateDisabled:
		fix = "enable it (aws kms enable-key --key-id " + k.arn + ")"
	case types.KeyStatePendingDeletion, types.KeyStatePendingReplicaDeletion:
		fix = "cancel the deletion and enable it (aws kms cancel-key-deletion --key-id " + k.arn + ", then aws kms enable-key)"
	case types.KeyStatePendingImport:
		fix = "import its key material first"
	case types.KeyStateUnavailable:
		fix = "reconnect its custom key store"
	default:
		fix = "wait until it is Enabled"
	}
	return &Error{kind: ErrKeyDisabled, msg: fmt.Sprintf("keys/awskms: key %s is in state %s; kms-ha needs Enabled: %s", k.name, state, fix)}
}

// describe shortens an SDK error to what an operator needs: the AWS error
// code and message, how many attempts were made, and the request id to
// quote to AWS support.
func describe(err error) string {
	var (
		b       strings.Builder
		apiErr  smithy.APIError
		opErr   *smithy.OperationError
		maxErr  *retry.MaxAttemptsError
		respErr *awshttp.ResponseError
		netErr  *net.OpError
	)
	switch {
	case errors.As(err, &apiErr):
		b.WriteString(apiErr.ErrorCode())
		if m := apiErr.ErrorMessage(); m != "" {
			b.WriteString(": ")
			b.WriteString(m)
		}
	case errors.As(err, &netErr):
		// Skip the SDK's "https response error ... RequestSendError" layers.
		b.WriteString(netErr.Error())
	case errors.As(err, &opErr) && opErr.Err != nil:
		b.WriteString(opErr.Err.Error())
	default:
		b.WriteString(err.Error())
	}
	var notes []string
	if errors.As(err, &maxErr) {
		notes = append(notes, fmt.Sprintf("%d attempts", maxErr.Attempt))
	}
	if errors.As(err, &respErr) && respErr.ServiceRequestID() != "" {
		notes = append(notes, "request id "+respErr.ServiceRequestID())
	}
	if len(notes) > 0 {
		b.WriteString(" (" + strings.Join(notes, ", ") + ")")
	}
	return b.String()
}
