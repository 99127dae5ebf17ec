package awskms

import (
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"
	"github.com/kms-ha/kms-ha/keys/awskms/kmstest"
)

// How the backend meets KMS faults: throttling, denied access, a disabled
// key, corrupt signatures, slow or unreachable endpoints.

func TestThrottlingIsRetried(t *testing.T) {
	e := newEnv(t)
	id, pub := e.srv.AddEd25519Key("")
	e.srv.Throttle(2) // Open's DescribeKey is throttled twice, then goes through
	k := e.open(t, id)
	if got := e.srv.Calls(kmstest.OpDescribeKey); got != 3 {
		t.Errorf("DescribeKey calls = %d, want 3 (two throttled, one answered)", got)
	}

	before := e.srv.Calls(kmstest.OpSign)
	e.srv.Throttle(2)
	msg := []byte("vote")
	sig, err := k.Sign(context.Background(), msg)
	if err != nil {
		t.Fatalf("Sign after two throttles: %v", err)
	}
	if !ed25519.Verify(pub, msg, sig) {
		t.Fatal("signature does not verify")
	}
	if got := e.srv.Calls(kmstest.OpSign) - before; got != 3 {
		t.Errorf("Sign calls = %d, want 3", got)
	}
}

func TestPersistentThrottlingFailsFast(t *testing.T) {
	e := newEnv(t)
	e.cfg.SignTimeout = 3 * time.Second
	e.srv.AddEd25519Key("alias/validator")
	k := e.open(t, "alias/validator")

	for _, code := range []string{"ThrottlingException", "LimitExceededException"} {
		t.Run(code, func(t *testing.T) {
			before := e.srv.Calls(kmstest.OpSign)
			e.srv.Fail(1000, code, "Rate exceeded")
			defer e.srv.ClearFaults()
			start := time.Now()
			_, err := k.Sign(context.Background(), []byte("vote"))
			elapsed := time.Since(start)
			if err == nil {
				t.Fatal("Sign succeeded under persistent throttling")
			}
			t.Logf("Sign: %v (after %v)", err, elapsed)
			if !errors.Is(err, ErrThrottled) {
				t.Errorf("error is not ErrThrottled: %v", err)
			}
			var apiErr smithy.APIError
			if !errors.As(err, &apiErr) || apiErr.ErrorCode() != code {
				t.Errorf("error does not unwrap to the SDK's %s: %v", code, err)
			}
			wantContains(t, err, "AWS KMS is throttling requests for key alias/validator", code, "3 attempts")
			if got := e.srv.Calls(kmstest.OpSign) - before; got != maxAttempts {
				t.Errorf("Sign calls = %d, want %d", got, maxAttempts)
			}
			// Bounded retries: well inside the sign timeout, not the SDK's
			// default backoff of seconds.
			if elapsed > time.Second {
				t.Errorf("persistent throttling took %v to report, want < 1s", elapsed)
			}
		})
	}
}

func TestAccessDenied(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("")

	e.srv.DenyAccess(true)
	err := e.openErr(t, id)
	if !errors.Is(err, ErrAccessDenied) {
		t.Errorf("error is not ErrAccessDenied: %v", err)
	}
	wantContains(t, err, "access denied to key "+id+": check the IAM policy allows kms:Sign, kms:GetPublicKey, kms:DescribeKey for this node's role", "AccessDeniedException")

	e.srv.DenyAccess(false)
	k := e.open(t, id)
	e.srv.DenyAccess(true)
	before := e.srv.Calls(kmstest.OpSign)
	_, err = k.Sign(context.Background(), []byte("vote"))
	if !errors.Is(err, ErrAccessDenied) {
		t.Fatalf("Sign: error is not ErrAccessDenied: %v", err)
	}
	if got := e.srv.Calls(kmstest.OpSign) - before; got != 1 {
		t.Errorf("access denied was retried: %d Sign calls, want 1", got)
	}
}

func TestDisabledKey(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("alias/validator")

	e.srv.Disable(id)
	err := e.openErr(t, "alias/validator")
	if !errors.Is(err, ErrKeyDisabled) {
		t.Errorf("error is not ErrKeyDisabled: %v", err)
	}
	wantContains(t, err, "key alias/validator is in state Disabled; kms-ha needs Enabled", "aws kms enable-key --key-id "+e.srv.ARN(id))

	e.srv.Enable(id)
	k := e.open(t, "alias/validator")
	e.srv.Disable(id)
	_, err = k.Sign(context.Background(), []byte("vote"))
	var de *types.DisabledException
	if !errors.Is(err, ErrKeyDisabled) || !errors.As(err, &de) {
		t.Fatalf("Sign on a disabled key: want ErrKeyDisabled and *types.DisabledException, got %v", err)
	}
	wantContains(t, err, "key alias/validator is disabled: enable it")

	e.srv.ScheduleDeletion(id)
	_, err = k.Sign(context.Background(), []byte("vote"))
	var ise *types.KMSInvalidStateException
	if !errors.Is(err, ErrKeyDisabled) || !errors.As(err, &ise) {
		t.Fatalf("Sign on a key pending deletion: want ErrKeyDisabled and *types.KMSInvalidStateException, got %v", err)
	}
	wantContains(t, err, "key alias/validator is not in a usable state", "pending deletion")

	e.srv.Enable(id)
	if _, err := k.Sign(context.Background(), []byte("vote")); err != nil {
		t.Fatalf("Sign after re-enabling: %v", err)
	}
}

func TestCorruptSignatureIsRefused(t *testing.T) {
	e := newEnv(t)
	id, pub := e.srv.AddEd25519Key("")

	e.srv.CorruptSignatures(1)
	err := e.openErr(t, id)
	if !errors.Is(err, ErrBadSignature) {
		t.Errorf("Open with a corrupt self-test signature: error is not ErrBadSignature: %v", err)
	}
	wantContains(t, err, "does not verify", "self-test")

	k := e.open(t, id)
	msg := []byte("vote")
	e.srv.CorruptSignatures(1)
	sig, err := k.Sign(context.Background(), msg)
	if err == nil || sig != nil {
		t.Fatalf("a corrupt signature was passed on: sig=%X err=%v", sig, err)
	}
	if !errors.Is(err, ErrBadSignature) {
		t.Errorf("error is not ErrBadSignature: %v", err)
	}

	for _, bad := range []func([]byte) []byte{
		func(s []byte) []byte { return s[:63] },
		func(s []byte) []byte { return append(s, 0) },
		func([]byte) []byte { return nil },
	} {
		e.srv.MangleSignatures(1, bad)
		sig, err = k.Sign(context.Background(), msg)
		if err == nil || sig != nil || !errors.Is(err, ErrBadSignature) {
			t.Fatalf("a malformed signature was not refused: sig=%X err=%v", sig, err)
		}
		t.Log(err)
	}

	sig, err = k.Sign(context.Background(), msg)
	if err != nil || !ed25519.Verify(pub, msg, sig) {
		t.Fatalf("Sign after the corruption stopped: sig=%X err=%v", sig, err)
	}
}

func TestSignTimeout(t *testing.T) {
	e := newEnv(t)
	e.cfg.SignTimeout = 300 * time.Millisecond
	id, _ := e.srv.AddEd25519Key("")
	k := e.open(t, id)
	e.srv.SetLatency(5 * time.Second)

	start := time.Now()
	_, err := k.Sign(context.Background(), []byte("vote"))
	elapsed := time.Since(start)
	t.Logf("Sign: %v (after %v)", err, elapsed)
	if err == nil {
		t.Fatal("Sign succeeded although KMS answers after 5s")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("error is not DeadlineExceeded and ErrUnavailable: %v", err)
	}
	wantContains(t, err, "AWS KMS did not answer Sign for key "+id+" within 300ms")
	if elapsed > 800*time.Millisecond {
		t.Errorf("Sign returned after %v, want about the 300ms timeout", elapsed)
	}

	// The caller's own, shorter deadline wins over SignTimeout.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = k.Sign(ctx, []byte("vote"))
	elapsed = time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error is not DeadlineExceeded: %v", err)
	}
	wantContains(t, err, "abandoned: the caller gave up")
	if elapsed > 600*time.Millisecond {
		t.Errorf("Sign returned after %v, want about the caller's 100ms", elapsed)
	}

	e.srv.SetLatency(0)
	if _, err := k.Sign(context.Background(), []byte("vote")); err != nil {
		t.Fatalf("Sign once KMS is fast again: %v", err)
	}
}

func TestServerErrorsAreRetried(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("")
	k := e.open(t, id)
	before := e.srv.Calls(kmstest.OpSign)
	e.srv.Fail(1, "KMSInternalException", "internal error")
	e.srv.Fail(1, "DependencyTimeoutException", "timed out")
	if _, err := k.Sign(context.Background(), []byte("vote")); err != nil {
		t.Fatalf("Sign after two transient server errors: %v", err)
	}
	if got := e.srv.Calls(kmstest.OpSign) - before; got != 3 {
		t.Errorf("Sign calls = %d, want 3", got)
	}

	e.srv.Fail(maxAttempts, "KMSInternalException", "internal error")
	_, err := k.Sign(context.Background(), []byte("vote"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("error is not ErrUnavailable: %v", err)
	}
	var ie *types.KMSInternalException
	if !errors.As(err, &ie) {
		t.Errorf("error does not unwrap to *types.KMSInternalException: %v", err)
	}
	wantContains(t, err, "AWS KMS refused Sign for key", "KMSInternalException")
}

func TestUnreachableEndpoint(t *testing.T) {
	e := newEnv(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := "http://" + l.Addr().String()
	l.Close()
	e.cfg.Endpoint = dead
	e.rec = newRecorder(t) // the dead address is not the server's
	e.cfg.httpClient = e.rec

	start := time.Now()
	err = e.openErr(t, "alias/validator")
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("error is not ErrUnavailable: %v", err)
	}
	wantContains(t, err, "cannot reach AWS KMS for key alias/validator in region us-east-1", "connection refused", "3 attempts")
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("took %v to give up on a refused connection", elapsed)
	}
	want, _ := url.Parse(dead)
	for _, h := range e.rec.requests() {
		if h != want.Host {
			t.Errorf("request to %s", h)
		}
	}
}
