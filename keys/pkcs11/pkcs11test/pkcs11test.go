//go:build cgo

// Package pkcs11test provisions SoftHSM2 tokens and Ed25519 keys for tests
// of the pkcs11 key backend, in this repository's packages and in e2e.
//
// Everything goes through PKCS#11 itself (C_InitToken, C_InitPIN,
// C_GenerateKeyPair), not softhsm2-util or pkcs11-tool, so the tests need
// only libsofthsm2.so, and provisioning exercises the same module the
// backend will use.
//
// SoftHSM reads SOFTHSM2_CONF once, at C_Initialize, and a module can be
// initialised only once per process. The package therefore keeps one
// SoftHSM configuration and token directory per test process (under
// os.TempDir, never the system /var/lib/softhsm), sets SOFTHSM2_CONF for
// the whole process before it first loads the module, and keeps the module
// initialised until the process exits. Every NewToken adds one token to
// that directory, or wipes and reuses the token that already has the label
// (so `go test -count=N` works); tests that run in parallel need distinct
// labels.
// Child processes (e2e) get the same directory through the env that
// NewToken returns.
package pkcs11test

import (
	"encoding/asn1"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/miekg/pkcs11"
)

// SOPin is the security officer PIN of every token NewToken creates. Tests
// never need it; it is exported so a test can exercise SO operations.
const SOPin = "kms-ha-test-so-pin"

// PKCS#11 3.0 identifiers that miekg/pkcs11 v1.1.2 does not define.
const (
	ckkECEdwards           = 0x00000040
	ckmECEdwardsKeyPairGen = 0x00001055
)

// ed25519OID is the DER of OID 1.3.101.112 (id-Ed25519, RFC 8410), the
// CKA_EC_PARAMS form SoftHSM 2.6 accepts for CKM_EC_EDWARDS_KEY_PAIR_GEN.
var ed25519OID = []byte{0x06, 0x03, 0x2b, 0x65, 0x70}

// ModuleEnv names an environment variable that, when set, overrides the
// search for libsofthsm2.so.
const ModuleEnv = "SOFTHSM2_MODULE"

// ModuleCandidates are where distributions install libsofthsm2.so; keep in
// step with scripts/install-softhsm.sh.
var ModuleCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
	"/usr/local/opt/softhsm/lib/softhsm/libsofthsm2.so",
}

const installHint = "run scripts/install-softhsm.sh (or set " + ModuleEnv + " to the path of libsofthsm2.so)"

// FindModule returns the path of libsofthsm2.so: $SOFTHSM2_MODULE if set,
// else the first of ModuleCandidates that exists.
func FindModule() (string, error) {
	if p := os.Getenv(ModuleEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("pkcs11test: %s=%s: %w; %s", ModuleEnv, p, err, installHint)
		}
		return p, nil
	}
	for _, p := range ModuleCandidates {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("pkcs11test: SoftHSM2 (libsofthsm2.so) not found; " + installHint)
}

// Module returns the SoftHSM2 module path and fails the test when SoftHSM
// is missing: a missing dependency is a failure, never a skip.
func Module(t testing.TB) string {
	t.Helper()
	p, err := FindModule()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// hsm is the process-wide SoftHSM instance, see the package comment.
var hsm struct {
	mu     sync.Mutex
	ready  bool
	err    error
	module string
	dir    string
	conf   string
	ctx    *pkcs11.Ctx
}

const dirPrefix = "kms-ha-softhsm-"

func setup() error {
	if hsm.ready {
		return hsm.err
	}
	hsm.ready = true
	hsm.err = func() error {
		module, err := FindModule()
		if err != nil {
			return err
		}
		removeStaleDirs()
		dir, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			return fmt.Errorf("pkcs11test: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
			return fmt.Errorf("pkcs11test: %w", err)
		}
		tokens := filepath.Join(dir, "tokens")
		if err := os.Mkdir(tokens, 0o700); err != nil {
			return fmt.Errorf("pkcs11test: %w", err)
		}
		conf := filepath.Join(dir, "softhsm2.conf")
		body := "directories.tokendir = " + tokens + "\n" +
			"objectstore.backend = file\n" +
			"log.level = ERROR\n" +
			"slots.removable = false\n"
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			return fmt.Errorf("pkcs11test: %w", err)
		}
		// Process-wide on purpose: the module reads it at C_Initialize,
		// which may happen in any later test (t.Setenv would be undone).
		if err := os.Setenv("SOFTHSM2_CONF", conf); err != nil {
			return fmt.Errorf("pkcs11test: %w", err)
		}
		ctx := pkcs11.New(module)
		if ctx == nil {
			return fmt.Errorf("pkcs11test: cannot load %s; %s", module, installHint)
		}
		if err := ctx.Initialize(); err != nil {
			ctx.Destroy()
			if errors.Is(err, pkcs11.Error(pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED)) {
				// Someone initialised SoftHSM before SOFTHSM2_CONF pointed
				// here; its tokens could be the system's. Refuse.
				return errors.New("pkcs11test: SoftHSM was initialised in this process before pkcs11test configured it; call NewToken before opening the module")
			}
			return fmt.Errorf("pkcs11test: C_Initialize %s: %w", module, err)
		}
		hsm.module, hsm.dir, hsm.conf, hsm.ctx = module, dir, conf, ctx
		return nil
	}()
	return hsm.err
}

// removeStaleDirs deletes token directories left by earlier test processes
// that have exited, since no hook runs at process exit to delete our own.
func removeStaleDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, d := range matches {
		b, err := os.ReadFile(filepath.Join(d, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = os.RemoveAll(d)
		}
	}
}

// ctxFor returns the shared context after checking module is the SoftHSM
// this package configured.
func ctxFor(t testing.TB, module string) *pkcs11.Ctx {
	t.Helper()
	if err := setup(); err != nil {
		t.Fatal(err)
	}
	if module != hsm.module {
		t.Fatalf("pkcs11test: module %q is not the SoftHSM returned by NewToken (%q)", module, hsm.module)
	}
	return hsm.ctx
}

// NewToken initialises an empty SoftHSM token labelled label with user PIN
// pin (wiping an earlier token of that label) and returns the module path
// and the environment (SOFTHSM2_CONF=...) a child process needs to see the
// token. The calling process is already configured.
func NewToken(t testing.TB, label, pin string) (module string, env []string) {
	t.Helper()
	hsm.mu.Lock()
	defer hsm.mu.Unlock()
	if err := setup(); err != nil {
		t.Fatal(err)
	}
	if label == "" || len(label) > 32 {
		t.Fatalf("pkcs11test: token label %q must have 1 to 32 bytes", label)
	}
	if strings.TrimRight(label, " ") != label {
		t.Fatalf("pkcs11test: token label %q must not end in spaces (PKCS#11 pads labels with them)", label)
	}
	ctx := hsm.ctx
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatalf("pkcs11test: C_GetSlotList: %v", err)
	}
	target, free, reuse, found := uint(0), uint(0), false, false
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err != nil {
			t.Fatalf("pkcs11test: C_GetTokenInfo(%d): %v", s, err)
		}
		switch {
		case ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0:
			if !found {
				free, found = s, true
			}
		case ti.Label == label:
			target, reuse = s, true
		}
	}
	if !reuse {
		if !found {
			t.Fatal("pkcs11test: SoftHSM offers no uninitialised slot")
		}
		target = free
	}
	// Re-initialising wipes the token, so a label reused by `go test
	// -count=N` starts from an empty token again.
	if err := ctx.InitToken(target, SOPin, label); err != nil {
		if reuse && errors.Is(err, pkcs11.Error(pkcs11.CKR_SESSION_EXISTS)) {
			t.Fatalf("pkcs11test: token %q is in use (sessions open); parallel tests need distinct token labels", label)
		}
		t.Fatalf("pkcs11test: C_InitToken %q: %v", label, err)
	}
	// Look the token up by label rather than trust the free slot's id:
	// SoftHSM numbers slots by position until it is next initialised, and
	// from the token serial after that.
	slot := slotOf(t, ctx, label)
	s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("pkcs11test: C_OpenSession: %v", err)
	}
	defer func() { _ = ctx.CloseSession(s) }()
	if err := ctx.Login(s, pkcs11.CKU_SO, SOPin); err != nil {
		t.Fatalf("pkcs11test: SO login: %v", err)
	}
	if err := ctx.InitPIN(s, pin); err != nil {
		t.Fatalf("pkcs11test: C_InitPIN: %v", err)
	}
	if err := ctx.Logout(s); err != nil {
		t.Fatalf("pkcs11test: SO logout: %v", err)
	}
	return hsm.module, []string{"SOFTHSM2_CONF=" + hsm.conf}
}

// Conf returns the path of the process's SoftHSM configuration, for tests
// that write their own environment.
func Conf(t testing.TB) string {
	t.Helper()
	hsm.mu.Lock()
	defer hsm.mu.Unlock()
	if err := setup(); err != nil {
		t.Fatal(err)
	}
	return hsm.conf
}

// Slot returns the slot id of the token labelled tokenLabel. SoftHSM
// renumbers slots when it is initialised again (in another process, say),
// so the id is only good for this process.
func Slot(t testing.TB, module, tokenLabel string) uint {
	t.Helper()
	hsm.mu.Lock()
	defer hsm.mu.Unlock()
	return slotOf(t, ctxFor(t, module), tokenLabel)
}

func slotOf(t testing.TB, ctx *pkcs11.Ctx, label string) uint {
	t.Helper()
	slots, err := ctx.GetSlotList(true)
	if err != nil {
		t.Fatalf("pkcs11test: C_GetSlotList: %v", err)
	}
	for _, s := range slots {
		ti, err := ctx.GetTokenInfo(s)
		if err != nil {
			t.Fatalf("pkcs11test: C_GetTokenInfo(%d): %v", s, err)
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 && ti.Label == label {
			return s
		}
	}
	t.Fatalf("pkcs11test: no token labelled %q", label)
	return 0
}

// userSession opens a read-write session on the token and logs the user
// in. It never logs out: login state is shared by every session of the
// process on that token, so a logout would also log out the backend under
// test. Closing the last session ends the login anyway.
func userSession(t testing.TB, ctx *pkcs11.Ctx, slot uint, pin string) pkcs11.SessionHandle {
	t.Helper()
	s, err := ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		t.Fatalf("pkcs11test: C_OpenSession: %v", err)
	}
	if err := ctx.Login(s, pkcs11.CKU_USER, pin); err != nil &&
		!errors.Is(err, pkcs11.Error(pkcs11.CKR_USER_ALREADY_LOGGED_IN)) {
		_ = ctx.CloseSession(s)
		t.Fatalf("pkcs11test: user login: %v", err)
	}
	return s
}

// GenerateEd25519 generates an Ed25519 key pair on the token (the private
// half sensitive and not extractable, as on a production HSM) and returns
// its public key. keyLabel or keyID may be empty to leave that attribute
// out.
func GenerateEd25519(t testing.TB, module, tokenLabel, pin, keyLabel string, keyID []byte) ed25519.PubKey {
	t.Helper()
	hsm.mu.Lock()
	defer hsm.mu.Unlock()
	ctx := ctxFor(t, module)
	s := userSession(t, ctx, slotOf(t, ctx, tokenLabel), pin)
	defer func() { _ = ctx.CloseSession(s) }()

	pubT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
		pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, ed25519OID),
	}
	privT := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, ckkECEdwards),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true),
		pkcs11.NewAttribute(pkcs11.CKA_PRIVATE, true),
		pkcs11.NewAttribute(pkcs11.CKA_SENSITIVE, true),
		pkcs11.NewAttribute(pkcs11.CKA_EXTRACTABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_SIGN, true),
	}
	if keyLabel != "" {
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_LABEL, keyLabel))
	}
	if len(keyID) > 0 {
		pubT = append(pubT, pkcs11.NewAttribute(pkcs11.CKA_ID, keyID))
		privT = append(privT, pkcs11.NewAttribute(pkcs11.CKA_ID, keyID))
	}
	pub, _, err := ctx.GenerateKeyPair(s,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(ckmECEdwardsKeyPairGen, nil)}, pubT, privT)
	if err != nil {
		t.Fatalf("pkcs11test: C_GenerateKeyPair(CKM_EC_EDWARDS_KEY_PAIR_GEN): %v", err)
	}
	attrs, err := ctx.GetAttributeValue(s, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
	if err != nil {
		t.Fatalf("pkcs11test: read CKA_EC_POINT: %v", err)
	}
	point := attrs[0].Value
	// SoftHSM returns the point as a DER OCTET STRING; accept the raw form
	// too in case a future version follows the other reading of the spec.
	if len(point) != ed25519.PubKeySize {
		var raw []byte
		if rest, err := asn1.Unmarshal(point, &raw); err != nil || len(rest) != 0 {
			t.Fatalf("pkcs11test: CKA_EC_POINT %x is neither 32 bytes nor a DER OCTET STRING", point)
		}
		point = raw
	}
	if len(point) != ed25519.PubKeySize {
		t.Fatalf("pkcs11test: public key has %d bytes, want %d", len(point), ed25519.PubKeySize)
	}
	return ed25519.PubKey(point)
}

// DropSessions closes every session the process has on the token
// (C_CloseAllSessions), which also ends the login: what a token reset or a
// HSM failover looks like to the backend under test.
func DropSessions(t testing.TB, module, tokenLabel string) {
	t.Helper()
	hsm.mu.Lock()
	defer hsm.mu.Unlock()
	ctx := ctxFor(t, module)
	if err := ctx.CloseAllSessions(slotOf(t, ctx, tokenLabel)); err != nil {
		t.Fatalf("pkcs11test: C_CloseAllSessions: %v", err)
	}
}

// Logout ends the process's user login on the token while leaving its
// sessions open, so the backend's next call fails with
// CKR_USER_NOT_LOGGED_IN.
func Logout(t testing.TB, module, tokenLabel string) {
	t.Helper()
	hsm.mu.Lock()
	defer hsm.mu.Unlock()
	ctx := ctxFor(t, module)
	s, err := ctx.OpenSession(slotOf(t, ctx, tokenLabel), pkcs11.CKF_SERIAL_SESSION)
	if err != nil {
		t.Fatalf("pkcs11test: C_OpenSession: %v", err)
	}
	defer func() { _ = ctx.CloseSession(s) }()
	if err := ctx.Logout(s); err != nil {
		t.Fatalf("pkcs11test: C_Logout: %v", err)
	}
}
