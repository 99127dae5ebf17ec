package kmstest_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/kms-ha/kms-ha/keys/awskms/kmstest"
)

// client is a bare SDK client for the server: static credentials, no
// retries, so each call is exactly one request.
func client(srv *kmstest.Server) *kms.Client {
	return kms.New(kms.Options{
		Region:       kmstest.Region,
		Credentials:  credentials.NewStaticCredentialsProvider("AKIAKMSTESTKMSTEST00", "secret", ""),
		BaseEndpoint: aws.String(srv.URL),
		Retryer:      aws.NopRetryer{},
	})
}

func TestServerListensOnLoopback(t *testing.T) {
	srv := kmstest.New(t)
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("URL = %s, want http://127.0.0.1:PORT", srv.URL)
	}
}

func TestDescribeKeyThroughTheSDK(t *testing.T) {
	srv := kmstest.New(t)
	id, _ := srv.AddEd25519Key("validator") // the alias/ prefix is added
	c := client(srv)
	for _, ref := range []string{id, srv.ARN(id), "alias/validator", srv.AliasARN("validator")} {
		out, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{KeyId: aws.String(ref)})
		if err != nil {
			t.Fatalf("DescribeKey(%s): %v", ref, err)
		}
		md := out.KeyMetadata
		if aws.ToString(md.KeyId) != id || aws.ToString(md.Arn) != srv.ARN(id) {
			t.Errorf("DescribeKey(%s): KeyId %s Arn %s", ref, aws.ToString(md.KeyId), aws.ToString(md.Arn))
		}
		if md.KeySpec != types.KeySpecEccNistEdwards25519 || md.KeyUsage != types.KeyUsageTypeSignVerify ||
			md.KeyState != types.KeyStateEnabled || !md.Enabled {
			t.Errorf("DescribeKey(%s): spec %s usage %s state %s enabled %v", ref, md.KeySpec, md.KeyUsage, md.KeyState, md.Enabled)
		}
		if !slices.Contains(md.SigningAlgorithms, types.SigningAlgorithmSpecEd25519Sha512) {
			t.Errorf("SigningAlgorithms = %v", md.SigningAlgorithms)
		}
		if md.CreationDate == nil || md.CreationDate.Year() != 2025 {
			t.Errorf("CreationDate = %v", md.CreationDate)
		}
	}
	if got := srv.Calls(kmstest.OpDescribeKey); got != 4 {
		t.Errorf("DescribeKey calls = %d, want 4", got)
	}

	// An ARN in another region or account is another key.
	_, err := c.DescribeKey(context.Background(), &kms.DescribeKeyInput{
		KeyId: aws.String(strings.Replace(srv.ARN(id), kmstest.Region, "eu-west-1", 1)),
	})
	var nf *types.NotFoundException
	if !errors.As(err, &nf) {
		t.Errorf("DescribeKey of a foreign ARN: %v, want NotFoundException", err)
	}
}

func TestEd25519SignaturesVerify(t *testing.T) {
	srv := kmstest.New(t)
	id, pub := srv.AddEd25519Key("")
	c := client(srv)

	pk, err := c.GetPublicKey(context.Background(), &kms.GetPublicKeyInput{KeyId: aws.String(id)})
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParsePKIXPublicKey(pk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := parsed.(ed25519.PublicKey); !ok || !got.Equal(pub) {
		t.Fatalf("GetPublicKey = %T %X, want %X", parsed, parsed, []byte(pub))
	}

	msg := []byte("sign bytes")
	out, err := c.Sign(context.Background(), &kms.SignInput{
		KeyId: aws.String(id), Message: msg,
		MessageType: types.MessageTypeRaw, SigningAlgorithm: types.SigningAlgorithmSpecEd25519Sha512,
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ed25519.Verify(pub, msg, out.Signature) {
		t.Fatal("ED25519_SHA_512 signature does not verify")
	}
	if out.SigningAlgorithm != types.SigningAlgorithmSpecEd25519Sha512 || aws.ToString(out.KeyId) != srv.ARN(id) {
		t.Errorf("Sign answered algorithm %s key %s", out.SigningAlgorithm, aws.ToString(out.KeyId))
	}

	ph, err := c.Sign(context.Background(), &kms.SignInput{
		KeyId: aws.String(id), Message: msg,
		MessageType: types.MessageTypeRaw, SigningAlgorithm: types.SigningAlgorithmSpecEd25519PhSha512,
	})
	if err != nil {
		t.Fatal(err)
	}
	d := crypto.SHA512.New()
	d.Write(msg)
	if err := ed25519.VerifyWithOptions(pub, d.Sum(nil), ph.Signature, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
		t.Fatalf("ED25519_PH_SHA_512 signature: %v", err)
	}
	if bytes.Equal(ph.Signature, out.Signature) {
		t.Fatal("Ed25519ph and PureEd25519 signatures are equal")
	}
}

func TestP256Key(t *testing.T) {
	srv := kmstest.New(t)
	id := srv.AddKey(kmstest.KeyOptions{Alias: "alias/p256", Spec: kmstest.SpecP256})
	c := client(srv)
	pk, err := c.GetPublicKey(context.Background(), &kms.GetPublicKeyInput{KeyId: aws.String("alias/p256")})
	if err != nil {
		t.Fatal(err)
	}
	if pk.KeySpec != types.KeySpecEccNistP256 {
		t.Errorf("KeySpec = %s", pk.KeySpec)
	}
	parsed, err := x509.ParsePKIXPublicKey(pk.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	pub, ok := parsed.(*ecdsa.PublicKey)
	if !ok {
		t.Fatalf("public key is %T", parsed)
	}
	msg := []byte("hello")
	out, err := c.Sign(context.Background(), &kms.SignInput{
		KeyId: aws.String(id), Message: msg,
		MessageType: types.MessageTypeRaw, SigningAlgorithm: types.SigningAlgorithmSpecEcdsaSha256,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(pub, h[:], out.Signature) {
		t.Fatal("ECDSA signature does not verify")
	}

	_, err = c.Sign(context.Background(), &kms.SignInput{
		KeyId: aws.String(id), Message: msg,
		MessageType: types.MessageTypeRaw, SigningAlgorithm: types.SigningAlgorithmSpecEd25519Sha512,
	})
	var iku *types.InvalidKeyUsageException
	if !errors.As(err, &iku) {
		t.Fatalf("Ed25519 on a P-256 key: %v, want InvalidKeyUsageException", err)
	}
}

// TestErrorsAsTheSDKSeesThem pins down how the SDK decodes the server's
// error answers: modeled KMS exceptions become their types.XxxException,
// unmodeled ones (ThrottlingException, AccessDeniedException) a
// smithy.GenericAPIError with the code from __type.
func TestErrorsAsTheSDKSeesThem(t *testing.T) {
	srv := kmstest.New(t)
	id, _ := srv.AddEd25519Key("")
	c := client(srv)
	sign := func() error {
		_, err := c.Sign(context.Background(), &kms.SignInput{
			KeyId: aws.String(id), Message: []byte("m"),
			MessageType: types.MessageTypeRaw, SigningAlgorithm: types.SigningAlgorithmSpecEd25519Sha512,
		})
		return err
	}

	srv.Throttle(1)
	err := sign()
	var generic *smithy.GenericAPIError
	if !errors.As(err, &generic) || generic.Code != "ThrottlingException" || generic.Message != "Rate exceeded" {
		t.Errorf("throttled: %v, want GenericAPIError ThrottlingException: Rate exceeded", err)
	}

	srv.Fail(1, "LimitExceededException", "too many")
	var le *types.LimitExceededException
	if err := sign(); !errors.As(err, &le) || le.ErrorMessage() != "too many" {
		t.Errorf("limit: %v, want *types.LimitExceededException", err)
	}

	srv.DenyAccess(true)
	var apiErr smithy.APIError
	if err := sign(); !errors.As(err, &apiErr) || apiErr.ErrorCode() != "AccessDeniedException" {
		t.Errorf("denied: %v, want AccessDeniedException", err)
	}
	srv.DenyAccess(false)

	srv.Disable(id)
	var de *types.DisabledException
	if err := sign(); !errors.As(err, &de) {
		t.Errorf("disabled: %v, want *types.DisabledException", err)
	}
	srv.ScheduleDeletion(id)
	var ise *types.KMSInvalidStateException
	if err := sign(); !errors.As(err, &ise) {
		t.Errorf("pending deletion: %v, want *types.KMSInvalidStateException", err)
	}
	srv.Enable(id)

	_, err = c.Sign(context.Background(), &kms.SignInput{
		KeyId: aws.String(id), Message: make([]byte, 4097),
		MessageType: types.MessageTypeRaw, SigningAlgorithm: types.SigningAlgorithmSpecEd25519Sha512,
	})
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "ValidationException" {
		t.Errorf("oversized message: %v, want ValidationException", err)
	}

	var unsupported *types.UnsupportedOperationException
	if _, err := c.ListKeys(context.Background(), &kms.ListKeysInput{}); !errors.As(err, &unsupported) {
		t.Errorf("ListKeys: %v, want *types.UnsupportedOperationException", err)
	}
	if got := srv.Calls("ListKeys"); got != 1 {
		t.Errorf("ListKeys calls = %d", got)
	}

	if err := sign(); err != nil {
		t.Fatalf("Sign once the faults are gone: %v", err)
	}
}

func TestRawProtocol(t *testing.T) {
	srv := kmstest.New(t)
	id, _ := srv.AddEd25519Key("")
	post := func(target string, auth bool, body string) (int, map[string]any, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-amz-json-1.1")
		req.Header.Set("X-Amz-Target", target)
		if auth {
			req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=test")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, out, resp.Header
	}

	status, out, h := post("TrentService.Sign", false, `{"KeyId":"`+id+`","Message":"bQ==","SigningAlgorithm":"ED25519_SHA_512"}`)
	if status != 400 || out["__type"] != "MissingAuthenticationTokenException" {
		t.Errorf("unsigned request: %d %v", status, out)
	}
	if ct := h.Get("Content-Type"); ct != "application/x-amz-json-1.1" {
		t.Errorf("Content-Type = %q", ct)
	}
	if srv.Unauthenticated() != 1 {
		t.Errorf("Unauthenticated = %d", srv.Unauthenticated())
	}

	status, out, _ = post("TrentService.Encrypt", true, `{}`)
	if status != 400 || out["__type"] != "UnsupportedOperationException" || out["message"] == "" {
		t.Errorf("unknown operation: %d %v", status, out)
	}

	status, out, _ = post("TrentService.Sign", true, `{"KeyId":"`+id+`","Message":"bQ==","MessageType":"RAW","SigningAlgorithm":"ED25519_SHA_512"}`)
	if status != 200 || out["SigningAlgorithm"] != "ED25519_SHA_512" || out["Signature"] == nil {
		t.Errorf("Sign: %d %v", status, out)
	}

	srv.Fail(1, "KMSInternalException", "boom")
	if status, _, _ = post("TrentService.Sign", true, `{}`); status != 500 {
		t.Errorf("KMSInternalException status = %d, want 500", status)
	}
	if got := srv.Calls(kmstest.OpSign); got != 3 {
		t.Errorf("Sign calls = %d, want 3", got)
	}
	if got := srv.TotalCalls(); got != 4 {
		t.Errorf("TotalCalls = %d, want 4", got)
	}
}

func TestLatencyIsAbandonedWithTheClient(t *testing.T) {
	srv := kmstest.New(t)
	id, _ := srv.AddEd25519Key("")
	srv.SetLatency(time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := client(srv).DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(id)})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("DescribeKey: %v, want DeadlineExceeded", err)
	}
	if time.Since(start) > time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
	// The server's Close, at cleanup, must not wait out the minute.
}
