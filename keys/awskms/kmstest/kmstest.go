// Package kmstest is a local stand-in for AWS KMS: an HTTP server on
// 127.0.0.1 that speaks the KMS JSON 1.1 protocol for DescribeKey,
// GetPublicKey and Sign, with real keys generated in the test and faults
// injected on demand. It lets the awskms backend, and the end-to-end tests
// that run kms-ha with an awskms key, go through the real AWS SDK without
// credentials, network access or cost.
//
// The server checks only that a request carries an Authorization header (the
// SDK SigV4-signs every request; an unsigned one means the client was not
// built the way production builds it). It does not verify signatures.
//
// kmstest.go holds the Server, its keys and the faults a test injects;
// api.go answers the KMS operations.
package kmstest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// The account and region every key of the server lives in. Clients must use
// Region (AWS_REGION) for ARNs they build themselves to resolve.
const (
	Region    = "us-east-1"
	AccountID = "111122223333"
)

// Key specs, usages and states, spelled as on the wire.
const (
	SpecEd25519   = "ECC_NIST_EDWARDS25519"
	SpecP256      = "ECC_NIST_P256"
	SpecSecp256k1 = "ECC_SECG_P256K1"
	SpecSymmetric = "SYMMETRIC_DEFAULT"

	UsageSignVerify     = "SIGN_VERIFY"
	UsageEncryptDecrypt = "ENCRYPT_DECRYPT"

	StateEnabled         = "Enabled"
	StateDisabled        = "Disabled"
	StatePendingDeletion = "PendingDeletion"
)

// Operations the server implements, as named in X-Amz-Target after the
// "TrentService." prefix.
const (
	OpDescribeKey  = "DescribeKey"
	OpGetPublicKey = "GetPublicKey"
	OpSign         = "Sign"
)

const (
	targetPrefix = "TrentService."
	contentType  = "application/x-amz-json-1.1"
	// KMS refuses messages above this size for MessageType RAW.
	maxMessage = 4096
)

// KeyOptions describes a key for AddKey.
type KeyOptions struct {
	// Alias is "alias/NAME" (the prefix is added if missing); empty for none.
	Alias string
	// Spec is the KMS key spec; ECC_NIST_EDWARDS25519 when empty. Supported:
	// ECC_NIST_EDWARDS25519, ECC_NIST_P256, ECC_SECG_P256K1,
	// SYMMETRIC_DEFAULT.
	Spec string
	// Usage overrides the key usage (SIGN_VERIFY, or ENCRYPT_DECRYPT for a
	// symmetric key), to exercise a client's usage check.
	Usage string
}

// Server is a local AWS KMS endpoint. All methods are safe for concurrent
// use, also while requests are in flight.
type Server struct {
	// URL is the endpoint, http://127.0.0.1:PORT; pass it as the client's
	// endpoint (kms.Options.BaseEndpoint).
	URL string

	t   testing.TB
	srv *httptest.Server

	mu              sync.Mutex
	keys            map[string]*key   // by key id
	aliases         map[string]string // "alias/NAME" -> key id
	faults          []fault
	mangle          []func([]byte) []byte
	deny            bool
	latency         time.Duration
	calls           map[string]int
	unauthenticated int
}

type key struct {
	id     string
	spec   string
	usage  string
	state  string
	algs   []string
	pubDER []byte
	sign   func(msg []byte, msgType, alg string) ([]byte, error)
}

type fault struct {
	code, message string
}

// New starts a server on 127.0.0.1 (never a wildcard or IPv6 address, so
// nothing of a test is reachable from elsewhere) and stops it when the test
// ends.
func New(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("kmstest: listen on 127.0.0.1: %v", err)
	}
	s := &Server{
		t:       t,
		keys:    map[string]*key{},
		aliases: map[string]string{},
		calls:   map[string]int{},
	}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serveHTTP))
	s.srv.Listener.Close()
	s.srv.Listener = l
	s.srv.Start()
	s.URL = s.srv.URL
	t.Cleanup(s.srv.Close)
	return s
}

// AddEd25519Key adds an enabled ECC_NIST_EDWARDS25519 SIGN_VERIFY key, as
// `aws kms create-key --key-spec ECC_NIST_EDWARDS25519 --key-usage
// SIGN_VERIFY` makes, and returns its key id and public key.
func (s *Server) AddEd25519Key(alias string) (keyID string, pub ed25519.PublicKey) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		s.t.Fatalf("kmstest: generate ed25519 key: %v", err)
	}
	return s.addKey(KeyOptions{Alias: alias, Spec: SpecEd25519}, pub, ed25519Signer(priv)), pub
}

// AddKey adds a key of any supported spec and returns its key id.
func (s *Server) AddKey(opts KeyOptions) (keyID string) {
	if opts.Spec == "" {
		opts.Spec = SpecEd25519
	}
	switch opts.Spec {
	case SpecEd25519:
		pub, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			s.t.Fatalf("kmstest: generate ed25519 key: %v", err)
		}
		return s.addKey(opts, pub, ed25519Signer(priv))
	case SpecP256:
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			s.t.Fatalf("kmstest: generate P-256 key: %v", err)
		}
		return s.addKey(opts, &priv.PublicKey, p256Signer(priv))
	case SpecSecp256k1:
		id, _ := s.addSecp256k1Key(opts)
		return id
	case SpecSymmetric:
		return s.addKey(opts, nil, nil)
	default:
		s.t.Fatalf("kmstest: key spec %q is not supported", opts.Spec)
		return ""
	}
}

func (s *Server) addKey(opts KeyOptions, pub crypto.PublicKey, sign func([]byte, string, string) ([]byte, error)) string {
	k := &key{id: newKeyID(s.t), spec: opts.Spec, usage: opts.Usage, state: StateEnabled, sign: sign}
	switch opts.Spec {
	case SpecEd25519:
		k.algs = []string{"ED25519_SHA_512", "ED25519_PH_SHA_512"}
	case SpecP256, SpecSecp256k1:
		k.algs = []string{"ECDSA_SHA_256"}
	}
	if k.usage == "" {
		k.usage = UsageSignVerify
		if opts.Spec == SpecSymmetric {
			k.usage = UsageEncryptDecrypt
		}
	}
	if k.usage != UsageSignVerify {
		k.algs = nil
	}
	if der, ok := pub.(spkiDER); ok {
		k.pubDER = der
	} else if pub != nil {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			s.t.Fatalf("kmstest: marshal public key: %v", err)
		}
		k.pubDER = der
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[k.id] = k
	if opts.Alias != "" {
		alias := opts.Alias
		if !strings.HasPrefix(alias, "alias/") {
			alias = "alias/" + alias
		}
		if _, dup := s.aliases[alias]; dup {
			s.t.Fatalf("kmstest: alias %s already exists", alias)
		}
		s.aliases[alias] = k.id
	}
	return k.id
}

// ARN is the key ARN of keyID, as DescribeKey reports it.
func (s *Server) ARN(keyID string) string {
	return fmt.Sprintf("arn:aws:kms:%s:%s:key/%s", Region, AccountID, keyID)
}

// AliasARN is the ARN of an alias ("alias/NAME" or "NAME").
func (s *Server) AliasARN(alias string) string {
	if !strings.HasPrefix(alias, "alias/") {
		alias = "alias/" + alias
	}
	return fmt.Sprintf("arn:aws:kms:%s:%s:%s", Region, AccountID, alias)
}

// Throttle makes the next n requests, whatever their operation, answer
// ThrottlingException, as KMS does above the account's request quota.
func (s *Server) Throttle(n int) { s.Fail(n, "ThrottlingException", "Rate exceeded") }

// Fail makes the next n requests answer the error code with message (for
// example LimitExceededException, KMSInternalException,
// DependencyTimeoutException). The HTTP status follows KMS: 500 for
// KMSInternalException and KeyUnavailableException, 503 for
// DependencyTimeoutException, 400 otherwise.
func (s *Server) Fail(n int, code, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.faults = append(s.faults, fault{code: code, message: message})
	}
}

// ClearFaults drops the errors and signature manglings not yet served.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.faults = nil
	s.mangle = nil
}

// DenyAccess makes every request answer AccessDeniedException, as when the
// caller's IAM policy does not allow the operation, until called with false.
func (s *Server) DenyAccess(deny bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.deny = deny
}

// Disable disables a key (aws kms disable-key): DescribeKey still answers,
// with KeyState Disabled; GetPublicKey and Sign answer DisabledException.
func (s *Server) Disable(keyID string) { s.setState(keyID, StateDisabled) }

// Enable re-enables a key.
func (s *Server) Enable(keyID string) { s.setState(keyID, StateEnabled) }

// ScheduleDeletion puts a key in PendingDeletion: GetPublicKey and Sign
// answer KMSInvalidStateException.
func (s *Server) ScheduleDeletion(keyID string) { s.setState(keyID, StatePendingDeletion) }

func (s *Server) setState(keyID, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[keyID]
	if !ok {
		s.t.Fatalf("kmstest: no key %s", keyID)
	}
	k.state = state
}

// SetLatency delays every answer by d, to exercise client timeouts. A
// request whose client gives up is abandoned at once.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// CorruptSignatures flips one bit in the next n signatures the server
// returns: a well-formed answer carrying a signature that does not verify.
func (s *Server) CorruptSignatures(n int) {
	s.MangleSignatures(n, func(sig []byte) []byte {
		out := append([]byte(nil), sig...)
		out[len(out)/2] ^= 0x01
		return out
	})
}

// MangleSignatures passes the next n signatures through f before they are
// returned (truncate them, replace them...).
func (s *Server) MangleSignatures(n int, f func(sig []byte) []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range n {
		s.mangle = append(s.mangle, f)
	}
}

// Calls is the number of requests received for op (DescribeKey,
// GetPublicKey, Sign, or any other target), including refused ones.
func (s *Server) Calls(op string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[op]
}

// TotalCalls is the number of requests received, of any operation.
func (s *Server) TotalCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		n += c
	}
	return n
}

// Unauthenticated is the number of requests that came without an
// Authorization header.
func (s *Server) Unauthenticated() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unauthenticated
}

func ed25519Signer(priv ed25519.PrivateKey) func([]byte, string, string) ([]byte, error) {
	return func(msg []byte, msgType, alg string) ([]byte, error) {
		switch {
		case alg == "ED25519_SHA_512" && msgType == "RAW":
			return ed25519.Sign(priv, msg), nil
		case alg == "ED25519_PH_SHA_512" && msgType == "RAW":
			d := sha512.Sum512(msg)
			return priv.Sign(nil, d[:], &ed25519.Options{Hash: crypto.SHA512})
		case alg == "ED25519_PH_SHA_512" && msgType == "DIGEST" && len(msg) == sha512.Size:
			return priv.Sign(nil, msg, &ed25519.Options{Hash: crypto.SHA512})
		}
		return nil, fmt.Errorf("MessageType %s is not valid with %s", msgType, alg)
	}
}

func p256Signer(priv *ecdsa.PrivateKey) func([]byte, string, string) ([]byte, error) {
	return func(msg []byte, msgType, _ string) ([]byte, error) {
		digest := msg
		switch msgType {
		case "RAW":
			d := sha256.Sum256(msg)
			digest = d[:]
		case "DIGEST":
			if len(msg) != sha256.Size {
				return nil, fmt.Errorf("digest has %d bytes, want %d", len(msg), sha256.Size)
			}
		default:
			return nil, fmt.Errorf("MessageType %s is not valid with ECDSA_SHA_256", msgType)
		}
		return ecdsa.SignASN1(rand.Reader, priv, digest)
	}
}

// newKeyID makes a KMS-shaped key id (a UUID).
func newKeyID(t testing.TB) string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("kmstest: %v", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// IsolateEnv gives the AWS SDK static test credentials and the region
// through the environment, the way an operator's node gets them, and shuts
// every other source of configuration (shared files, instance metadata,
// container credentials, endpoint and retry overrides), so nothing a test
// does can reach anything but a local Server. The credentials are not real.
func IsolateEnv(tb testing.TB) {
	tb.Helper()
	dir := tb.TempDir()
	for k, v := range map[string]string{
		"AWS_ACCESS_KEY_ID":                      "AKIAKMSTESTKMSTEST00",
		"AWS_SECRET_ACCESS_KEY":                  "kmstest-secret-not-a-real-one",
		"AWS_SESSION_TOKEN":                      "",
		"AWS_REGION":                             Region,
		"AWS_DEFAULT_REGION":                     "",
		"AWS_PROFILE":                            "",
		"AWS_DEFAULT_PROFILE":                    "",
		"AWS_CONFIG_FILE":                        filepath.Join(dir, "no-such-config"),
		"AWS_SHARED_CREDENTIALS_FILE":            filepath.Join(dir, "no-such-credentials"),
		"AWS_EC2_METADATA_DISABLED":              "true",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI":     "",
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_WEB_IDENTITY_TOKEN_FILE":            "",
		"AWS_ROLE_ARN":                           "",
		"AWS_ENDPOINT_URL":                       "",
		"AWS_ENDPOINT_URL_KMS":                   "",
		"AWS_MAX_ATTEMPTS":                       "",
		"AWS_RETRY_MODE":                         "",
		"AWS_CA_BUNDLE":                          "",
		"AWS_NEW_RETRIES_2026":                   "",
	} {
		tb.Setenv(k, v)
	}
}
