package deploy_test

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const unitFile = "systemd/kms-ha.service"

// unitForVerify writes the unit into a temporary directory under its own
// name with ExecStart pointing at an executable stub: systemd-analyze
// verify checks that the binary exists, and /usr/local/bin/kms-ha is not
// installed on a build machine. Nothing else is changed.
func unitForVerify(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	stub := filepath.Join(dir, "kms-ha")
	if err := os.WriteFile(stub, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "ExecStart=/usr/local/bin/kms-ha ") {
		t.Fatalf("%s: ExecStart does not run /usr/local/bin/kms-ha", unitFile)
	}
	unit := filepath.Join(dir, "kms-ha.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/kms-ha", stub)), 0o644); err != nil {
		t.Fatal(err)
	}
	return unit
}

func systemdAnalyze(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatalf("systemd-analyze not found on PATH: run scripts/install-systemd-analyze.sh (make deps installs it; Debian package systemd)")
	}
	return p
}

// TestSystemdUnitVerifies: systemd-analyze verify accepts the unit without
// a word. It exits 0 on an unknown or misspelt directive and only warns, so
// any output fails the test too.
func TestSystemdUnitVerifies(t *testing.T) {
	sa := systemdAnalyze(t)
	out, err := exec.Command(sa, "verify", unitForVerify(t)).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", unitFile, err, out)
	}
}

// TestSystemdUnitHardening: the directives the deployment guide promises
// are set, and systemd's own exposure score stays at "OK" (at most 2.0 of
// 10) without loading the unit (--offline).
func TestSystemdUnitHardening(t *testing.T) {
	f, err := os.Open(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	set := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			set[k] = v
		}
	}
	want := map[string]string{
		"User": "kms-ha", "Group": "kms-ha", "ProtectSystem": "strict", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
		"ReadWritePaths": "/var/lib/kms-ha", "Restart": "on-failure", "ProtectHome": "yes", "CapabilityBoundingSet": "",
		"KillSignal": "SIGTERM", "TimeoutStopSec": "30s",
	}
	for k, v := range want {
		if got, ok := set[k]; !ok || got != v {
			t.Errorf("%s: %s=%q, want %q", unitFile, k, got, v)
		}
	}
	if !strings.Contains(set["ExecStart"], "--home /var/lib/kms-ha") {
		t.Errorf("%s: ExecStart %q does not use the home in ReadWritePaths", unitFile, set["ExecStart"])
	}
	sa := systemdAnalyze(t)
	out, err := exec.Command(sa, "security", "--offline=yes", "--threshold=20", unitForVerify(t)).CombinedOutput()
	if err != nil {
		t.Errorf("systemd-analyze security: exposure above 2.0 (or the tool failed): %v\n%s", err, out)
	}
}
