package awskms

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms/types"

	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/awskms/kmstest"
)

var _ keys.Signer = (*Key)(nil)

// awsEnv gives the SDK static credentials and a region through the
// environment, the way an operator's node gets them, and shuts every other
// source of configuration: no shared files, no instance metadata, no
// container credentials, no endpoint or retry overrides. Nothing a test
// does can then reach anything but the local server.
func awsEnv(tb testing.TB) {
	tb.Helper()
	kmstest.IsolateEnv(tb)
}

// recorder is the SDK's HTTP client in tests: it notes the host of every
// request, so a test can assert that nothing left for a real AWS endpoint,
// IMDS or STS.
type recorder struct {
	client *http.Client
	mu     sync.Mutex
	hosts  []string
}

func newRecorder(tb testing.TB) *recorder {
	tr := &http.Transport{}
	tb.Cleanup(tr.CloseIdleConnections)
	return &recorder{client: &http.Client{Transport: tr}}
}

func (r *recorder) Do(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.hosts = append(r.hosts, req.URL.Host)
	r.mu.Unlock()
	return r.client.Do(req)
}

func (r *recorder) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.hosts...)
}

type tWriter struct{ tb testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// env is one test's local KMS and the config pointing at it.
type env struct {
	srv *kmstest.Server
	rec *recorder
	cfg Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	awsEnv(t)
	srv := kmstest.New(t)
	rec := newRecorder(t)
	e := &env{
		srv: srv,
		rec: rec,
		cfg: Config{Endpoint: srv.URL, SignTimeout: 2 * time.Second, Logger: testLogger(t), httpClient: rec},
	}
	host := strings.TrimPrefix(srv.URL, "http://")
	t.Cleanup(func() {
		for _, h := range rec.requests() {
			if h != host {
				t.Errorf("the SDK sent a request to %s; only the local KMS at %s may be contacted", h, host)
			}
		}
	})
	return e
}

func (e *env) open(t *testing.T, keyID string) *Key {
	t.Helper()
	cfg := e.cfg
	cfg.KeyID = keyID
	k, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", keyID, err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func (e *env) openErr(t *testing.T, keyID string) error {
	t.Helper()
	cfg := e.cfg
	cfg.KeyID = keyID
	k, err := Open(context.Background(), cfg)
	if err == nil {
		k.Close()
		t.Fatalf("Open(%s) succeeded, want an error", keyID)
	}
	t.Logf("Open(%s): %v", keyID, err)
	return err
}

type counts struct{ describe, getPub, sign int }

func (e *env) counts() counts {
	return counts{e.srv.Calls(kmstest.OpDescribeKey), e.srv.Calls(kmstest.OpGetPublicKey), e.srv.Calls(kmstest.OpSign)}
}

func wantContains(t *testing.T, err error, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("error %q does not contain %q", err, p)
		}
	}
}

func TestOpenByIDARNAndAlias(t *testing.T) {
	e := newEnv(t)
	id, pub := e.srv.AddEd25519Key("alias/validator")
	for _, ref := range []string{id, e.srv.ARN(id), "alias/validator", e.srv.AliasARN("validator")} {
		t.Run(ref, func(t *testing.T) {
			before := e.counts()
			k := e.open(t, ref)
			if !bytes.Equal(k.PubKey().Bytes(), pub) {
				t.Fatalf("PubKey = %X, want %X", k.PubKey().Bytes(), []byte(pub))
			}
			if k.ARN() != e.srv.ARN(id) {
				t.Errorf("ARN = %s, want %s", k.ARN(), e.srv.ARN(id))
			}
			// Open is exactly DescribeKey, GetPublicKey and the self-test
			// Sign: nothing more is sent anywhere.
			if got, want := e.counts(), (counts{before.describe + 1, before.getPub + 1, before.sign + 1}); got != want {
				t.Errorf("calls after Open = %+v, want %+v", got, want)
			}
		})
	}
}

func TestSignVerifiesAndIsDeterministic(t *testing.T) {
	e := newEnv(t)
	id, pub := e.srv.AddEd25519Key("validator")
	k := e.open(t, id)
	ctx := context.Background()
	for _, msg := range [][]byte{
		[]byte("x"),
		[]byte("a vote's sign bytes"),
		bytes.Repeat([]byte{0xab}, MaxMessageSize),
	} {
		sig, err := k.Sign(ctx, msg)
		if err != nil {
			t.Fatalf("Sign(%d bytes): %v", len(msg), err)
		}
		if !ed25519.Verify(pub, msg, sig) {
			t.Fatalf("signature over %d bytes does not verify with crypto/ed25519", len(msg))
		}
		if !k.PubKey().VerifySignature(msg, sig) {
			t.Fatalf("signature over %d bytes does not verify with the CometBFT public key", len(msg))
		}
		again, err := k.Sign(ctx, msg)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(sig, again) {
			t.Fatalf("two signatures over the same %d bytes differ: Ed25519 must be deterministic", len(msg))
		}
	}
}

func TestSignMessageSizeLimits(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("")
	k := e.open(t, id)
	before := e.srv.Calls(kmstest.OpSign)
	for _, n := range []int{0, MaxMessageSize + 1} {
		_, err := k.Sign(context.Background(), make([]byte, n))
		if err == nil {
			t.Fatalf("Sign(%d bytes) succeeded", n)
		}
		wantContains(t, err, fmt.Sprintf("%d-byte message", n), "1 to 4096 bytes")
	}
	if got := e.srv.Calls(kmstest.OpSign); got != before {
		t.Errorf("a message KMS cannot sign was sent anyway (%d Sign calls)", got-before)
	}
}

func TestOpenRefusesWrongKeySpec(t *testing.T) {
	e := newEnv(t)
	e.srv.AddKey(kmstest.KeyOptions{Alias: "alias/p256", Spec: kmstest.SpecP256})
	e.srv.AddKey(kmstest.KeyOptions{Alias: "alias/aes", Spec: kmstest.SpecSymmetric})
	e.srv.AddKey(kmstest.KeyOptions{Alias: "alias/ed-encrypt", Spec: kmstest.SpecEd25519, Usage: kmstest.UsageEncryptDecrypt})

	err := e.openErr(t, "alias/p256")
	if !errors.Is(err, ErrUnsuitableKey) {
		t.Errorf("error is not ErrUnsuitableKey: %v", err)
	}
	wantContains(t, err, "keys/awskms: key alias/p256 has key spec ECC_NIST_P256; kms-ha needs ECC_NIST_EDWARDS25519 (create it with --key-spec ECC_NIST_EDWARDS25519 --key-usage SIGN_VERIFY)")

	err = e.openErr(t, "alias/aes")
	wantContains(t, err, "key alias/aes has key spec SYMMETRIC_DEFAULT")

	err = e.openErr(t, "alias/ed-encrypt")
	if !errors.Is(err, ErrUnsuitableKey) {
		t.Errorf("error is not ErrUnsuitableKey: %v", err)
	}
	wantContains(t, err, "key alias/ed-encrypt has key usage ENCRYPT_DECRYPT; kms-ha needs SIGN_VERIFY")

	if n := e.srv.Calls(kmstest.OpSign); n != 0 {
		t.Errorf("%d Sign calls on unsuitable keys", n)
	}
}

func TestOpenUnknownKey(t *testing.T) {
	e := newEnv(t)
	err := e.openErr(t, "alias/nope")
	if !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("error is not ErrKeyNotFound: %v", err)
	}
	var nf *types.NotFoundException
	if !errors.As(err, &nf) {
		t.Errorf("error does not unwrap to *types.NotFoundException: %v", err)
	}
	wantContains(t, err, "key alias/nope not found in region us-east-1", "NotFoundException")
}

func TestOpenNeedsRegion(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("")
	t.Setenv("AWS_REGION", "")
	err := e.openErr(t, id)
	wantContains(t, err, "no AWS region: set region in the key's kms.yaml entry, AWS_REGION, or region in the AWS profile")

	e.cfg.Region = kmstest.Region
	e.open(t, id)
}

func TestOpenNeedsCredentials(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("")
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	err := e.openErr(t, id)
	if !errors.Is(err, ErrCredentials) {
		t.Errorf("error is not ErrCredentials: %v", err)
	}
	wantContains(t, err, "no usable AWS credentials")
	if n := e.srv.TotalCalls(); n != 0 {
		t.Errorf("%d requests sent without credentials", n)
	}
	if hosts := e.rec.requests(); len(hosts) != 0 {
		t.Errorf("credential lookup made requests: %v (IMDS must be disabled in tests)", hosts)
	}

	e.cfg.Profile = "no-such-profile"
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAKMSTESTKMSTEST00")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "kmstest-secret-not-a-real-one")
	err = e.openErr(t, id)
	if !errors.Is(err, ErrCredentials) {
		t.Errorf("error is not ErrCredentials: %v", err)
	}
	wantContains(t, err, `AWS profile "no-such-profile" is not defined`)
}

func TestSharedConfigProfile(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("")
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "config")
	credFile := filepath.Join(dir, "credentials")
	writeFile(t, cfgFile, "[profile validator]\nregion = "+kmstest.Region+"\n")
	writeFile(t, credFile, "[validator]\naws_access_key_id = AKIAPROFILEKMSTEST00\naws_secret_access_key = from-the-profile\n")
	t.Setenv("AWS_CONFIG_FILE", cfgFile)
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", credFile)
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	t.Setenv("AWS_REGION", "")

	e.cfg.Profile = "validator"
	e.open(t, id)
}

func TestClose(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("")
	k := e.open(t, id)
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	before := e.srv.Calls(kmstest.OpSign)
	if _, err := k.Sign(context.Background(), []byte("vote")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sign after Close: %v, want ErrClosed", err)
	}
	if e.srv.Calls(kmstest.OpSign) != before {
		t.Error("a closed key still called KMS")
	}
}

func TestConcurrentSigns(t *testing.T) {
	e := newEnv(t)
	id, pub := e.srv.AddEd25519Key("")
	k := e.open(t, id)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				msg := fmt.Appendf(nil, "chain-%d/height-%d", g, i)
				sig, err := k.Sign(context.Background(), msg)
				if err != nil {
					errs <- err
					return
				}
				if !ed25519.Verify(pub, msg, sig) {
					errs <- fmt.Errorf("signature over %q does not verify", msg)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestOnlyTheLocalServerIsContacted checks, on a whole life cycle with
// retries, that every request the SDK made (credentials included) went to
// the local server, signed, and that the server saw each of them.
func TestOnlyTheLocalServerIsContacted(t *testing.T) {
	e := newEnv(t)
	id, _ := e.srv.AddEd25519Key("alias/validator")
	e.srv.Throttle(1)
	k := e.open(t, "alias/validator")
	for range 5 {
		if _, err := k.Sign(context.Background(), []byte("vote")); err != nil {
			t.Fatal(err)
		}
	}
	e.srv.Disable(id)
	_, _ = k.Sign(context.Background(), []byte("vote"))

	hosts := e.rec.requests()
	if len(hosts) != e.srv.TotalCalls() {
		t.Errorf("the SDK made %d requests, the local server saw %d", len(hosts), e.srv.TotalCalls())
	}
	if want := (counts{2, 1, 7}); e.counts() != want {
		t.Errorf("calls = %+v, want %+v", e.counts(), want)
	}
	if n := e.srv.Unauthenticated(); n != 0 {
		t.Errorf("%d requests without SigV4 Authorization", n)
	}
	// The host check itself runs in newEnv's cleanup.
}

// TestDefaultHTTPClient opens a key with the SDK's own HTTP client, the
// one production uses.
func TestDefaultHTTPClient(t *testing.T) {
	awsEnv(t)
	srv := kmstest.New(t)
	id, pub := srv.AddEd25519Key("alias/validator")
	k, err := Open(context.Background(), Config{KeyID: "alias/validator", Endpoint: srv.URL, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	sig, err := k.Sign(context.Background(), []byte("vote"))
	if err != nil || !ed25519.Verify(pub, []byte("vote"), sig) {
		t.Fatalf("Sign: sig=%X err=%v", sig, err)
	}
	if k.ARN() != srv.ARN(id) {
		t.Errorf("ARN = %s", k.ARN())
	}
	if got := srv.TotalCalls(); got != 4 {
		t.Errorf("server saw %d requests, want 4", got)
	}
}

func TestOpenValidatesConfig(t *testing.T) {
	awsEnv(t)
	if _, err := Open(context.Background(), Config{}); err == nil || !strings.Contains(err.Error(), "keys/awskms: key_id: is required") {
		t.Errorf("Open without a key id: %v", err)
	}
	if _, err := Open(context.Background(), Config{KeyID: "alias/x", SignTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("Open with a negative timeout: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkSign(b *testing.B) {
	awsEnv(b)
	srv := kmstest.New(b)
	id, _ := srv.AddEd25519Key("alias/validator")
	k, err := Open(context.Background(), Config{KeyID: id, Endpoint: srv.URL, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer k.Close()
	msg := bytes.Repeat([]byte{0x42}, 150) // about a precommit's sign bytes
	ctx := context.Background()

	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := k.Sign(ctx, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := k.Sign(ctx, msg); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
