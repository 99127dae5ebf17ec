//go:build cgo

package pkcs11test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestFindModuleNamesTheInstallScript(t *testing.T) {
	saved := ModuleCandidates
	t.Cleanup(func() { ModuleCandidates = saved })
	ModuleCandidates = []string{filepath.Join(t.TempDir(), "libsofthsm2.so")}
	t.Setenv(ModuleEnv, "")
	if _, err := FindModule(); err == nil || !strings.Contains(err.Error(), "scripts/install-softhsm.sh") {
		t.Fatalf("FindModule without SoftHSM: %v", err)
	}
	t.Setenv(ModuleEnv, filepath.Join(t.TempDir(), "missing.so"))
	if _, err := FindModule(); err == nil || !strings.Contains(err.Error(), "scripts/install-softhsm.sh") {
		t.Fatalf("FindModule with a wrong %s: %v", ModuleEnv, err)
	}
}

func TestNewTokenUsesAPrivateDirectory(t *testing.T) {
	module, env := NewToken(t, "helper-self-test", "1234")
	if module != Module(t) {
		t.Fatalf("module %q, want %q", module, Module(t))
	}
	if len(env) != 1 || !strings.HasPrefix(env[0], "SOFTHSM2_CONF=") {
		t.Fatalf("env = %q", env)
	}
	conf := strings.TrimPrefix(env[0], "SOFTHSM2_CONF=")
	if conf != os.Getenv("SOFTHSM2_CONF") || conf != Conf(t) {
		t.Fatalf("SOFTHSM2_CONF is %q in the process, %q in env", os.Getenv("SOFTHSM2_CONF"), conf)
	}
	if !strings.HasPrefix(conf, os.TempDir()) {
		t.Fatalf("config %s is not under %s", conf, os.TempDir())
	}
	body, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), "directories.tokendir = "+filepath.Dir(conf)) {
		t.Fatalf("token dir is not next to the config:\n%s", body)
	}

	pub := GenerateEd25519(t, module, "helper-self-test", "1234", "k", []byte{7})
	if len(pub) != 32 {
		t.Fatalf("public key has %d bytes", len(pub))
	}
	other := GenerateEd25519(t, module, "helper-self-test", "1234", "k2", nil)
	if pub.Equals(other) {
		t.Fatal("two generated keys are equal")
	}
	// Two tokens in one process, each with its own slot.
	NewToken(t, "helper-self-test-2", "5678")
	if Slot(t, module, "helper-self-test") == Slot(t, module, "helper-self-test-2") {
		t.Fatal("two tokens share a slot")
	}
	DropSessions(t, module, "helper-self-test")
}

func TestNewTokenWipesAReusedLabel(t *testing.T) {
	module, _ := NewToken(t, "helper-reuse", "1234")
	GenerateEd25519(t, module, "helper-reuse", "1234", "k", []byte{1})
	slots := func() int {
		s, err := hsm.ctx.GetSlotList(true)
		if err != nil {
			t.Fatal(err)
		}
		return len(s)
	}
	before := slots()
	NewToken(t, "helper-reuse", "5678")
	if after := slots(); after != before {
		t.Fatalf("reusing a label added a slot: %d -> %d", before, after)
	}
	// The same key label and id again: the old pair must be gone, or the
	// token would now hold two keys labelled "k".
	GenerateEd25519(t, module, "helper-reuse", "5678", "k", []byte{1})
	s := userSession(t, hsm.ctx, Slot(t, module, "helper-reuse"), "5678")
	defer func() { _ = hsm.ctx.CloseSession(s) }()
	if err := hsm.ctx.FindObjectsInit(s, nil); err != nil {
		t.Fatal(err)
	}
	objs, _, err := hsm.ctx.FindObjects(s, 10)
	_ = hsm.ctx.FindObjectsFinal(s)
	if err != nil || len(objs) != 2 {
		t.Fatalf("%d objects on the re-initialised token (err %v), want one key pair", len(objs), err)
	}
}
