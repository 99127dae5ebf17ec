package deploy_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"github.com/cometbft/cometbft/p2p"
	"gopkg.in/yaml.v3"

	"github.com/kms-ha/kms-ha/config"
)

// configMap reads deploy/kubernetes/configmap.yaml's data. The manifests
// themselves are decoded with the Kubernetes types in deploy/kubernetes's
// own module; this only needs the two files it carries.
func configMap(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("kubernetes/configmap.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data["kms.yaml"] == "" || cm.Data["entrypoint.sh"] == "" {
		t.Fatal("configmap.yaml lacks kms.yaml or entrypoint.sh")
	}
	return cm.Data
}

// TestKubernetesKmsYAMLLoads: the ConfigMap's kms.yaml, rendered for each
// pod as the entrypoint renders it, passes kms-ha's own validation, with
// the pod name as node id and the pod's DNS name as its addresses.
func TestKubernetesKmsYAMLLoads(t *testing.T) {
	tmpl := configMap(t)["kms.yaml"]
	for _, pod := range []string{"kms-ha-0", "kms-ha-1", "kms-ha-2"} {
		fqdn := pod + ".kms-ha.kms-ha.svc.cluster.local"
		y := strings.NewReplacer("__POD_NAME__", pod, "__POD_FQDN__", fqdn).Replace(tmpl)
		home := t.TempDir()
		// The identity is loaded at validation; the key file at start.
		if err := os.Mkdir(filepath.Join(home, "secrets"), 0o700); err != nil {
			t.Fatal(err)
		}
		nk := &p2p.NodeKey{PrivKey: ed25519.GenPrivKey()}
		if err := nk.SaveAs(filepath.Join(home, "secrets", "identity.json")); err != nil {
			t.Fatal(err)
		}
		c, err := config.Parse([]byte(y), home)
		if err != nil {
			t.Fatalf("%s: %v", pod, err)
		}
		if c.Cluster.NodeID != pod || c.Cluster.APIAddr != fqdn+":7101" || c.Cluster.AdvertiseAddr != fqdn+":7001" {
			t.Errorf("%s: node_id %q, api_addr %q, advertise_addr %q", pod, c.Cluster.NodeID, c.Cluster.APIAddr, c.Cluster.AdvertiseAddr)
		}
	}
}

// stubKmsHa is a kms-ha that records its arguments: start runs until
// SIGTERM, status answers with $STUB_STATE, the rest succeed.
const stubKmsHa = `#!/bin/bash
echo "$*" >>"$STUB_LOG"
case $1 in
start) trap 'echo "start got TERM" >>"$STUB_LOG"; exit 0' TERM; while :; do sleep 0.1; done ;;
status) echo "{\"state\": \"$STUB_STATE\"}" ;;
bootstrap) echo "bootstrapped a one-node cluster" ;;
join) echo "joined" ;;
esac
`

// runEntrypoint runs the ConfigMap's entrypoint for pod with a stub
// kms-ha, waits until the log shows want (or times out), stops it with
// SIGTERM as the kubelet does, and returns the stub's log.
func runEntrypoint(t *testing.T, pod, state, want string) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"secrets", "config", "home", "data"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"ca.crt", pod + ".crt", pod + ".key", "identity.json", "priv_validator_key.json"} {
		if err := os.WriteFile(filepath.Join(dir, "secrets", f), []byte(f), 0o440); err != nil {
			t.Fatal(err)
		}
	}
	data := configMap(t)
	write := func(p, s string, mode os.FileMode) {
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "config", "kms.yaml"), data["kms.yaml"], 0o644)
	write(filepath.Join(dir, "entrypoint.sh"), data["entrypoint.sh"], 0o755)
	write(filepath.Join(dir, "kms-ha"), stubKmsHa, 0o755)
	logf := filepath.Join(dir, "stub.log")
	cmd := exec.Command("bash", filepath.Join(dir, "entrypoint.sh"))
	cmd.Env = append(os.Environ(),
		"POD_NAME="+pod, "POD_NAMESPACE=kms-ha", "KMSHA_CLUSTER_DOMAIN=invalid",
		"KMSHA_BOOTSTRAP_WAIT=0", "KMSHA_HOME="+filepath.Join(dir, "home"), "KMSHA_SECRETS="+filepath.Join(dir, "secrets"),
		"KMSHA_CONFIG="+filepath.Join(dir, "config", "kms.yaml"), "KMSHA_DATA="+filepath.Join(dir, "data"),
		"KMSHA_BIN="+filepath.Join(dir, "kms-ha"), "STUB_LOG="+logf, "STUB_STATE="+state)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that a failing test stops the stub too;
	// and Wait does not wait forever for a pipe a leftover child holds.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) })
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, _ := os.ReadFile(logf)
		if strings.Contains(string(b), want) {
			break
		}
		if time.Now().After(deadline) {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			cmd.Wait()
			t.Fatalf("%s: %q never appeared; stub log:\n%s\nentrypoint output:\n%s", pod, want, b, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // let the admission step finish
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("%s: entrypoint exited with %v after SIGTERM; output:\n%s", pod, err, out)
		}
	case <-time.After(10 * time.Second):
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		t.Fatalf("%s: entrypoint did not stop within 10 s of SIGTERM; output:\n%s", pod, out)
	}
	b, _ := os.ReadFile(logf)
	home := filepath.Join(dir, "home")
	y, err := os.ReadFile(filepath.Join(home, "kms.yaml"))
	if err != nil || !strings.Contains(string(y), "node_id: "+pod) {
		t.Errorf("%s: rendered kms.yaml lacks node_id %s (%v)", pod, pod, err)
	}
	for _, f := range []string{"ca.crt", "node.crt", "node.key", "identity.json", "priv_validator_key.json"} {
		fi, err := os.Stat(filepath.Join(home, "secrets", f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: secrets/%s: %v, mode %v, want 0600", pod, f, err, fi)
		}
	}
	return strings.ReplaceAll(string(b), home, "HOME")
}

// TestKubernetesEntrypoint: kms-ha-0 with no member answering bootstraps,
// starts, and is not asked to join; kms-ha-2 without raft state does not
// bootstrap and joins through kms-ha-0; both forward SIGTERM to the node.
func TestKubernetesEntrypoint(t *testing.T) {
	log0 := runEntrypoint(t, "kms-ha-0", "Leader", "status --home ")
	// start runs in the background, so whether its line or the first
	// status line is logged first is up to the scheduler.
	lines := strings.Split(strings.TrimSpace(log0), "\n")
	var mid []string
	if len(lines) == 4 {
		mid = slices.Clone(lines[1:3])
		slices.Sort(mid)
	}
	if len(lines) != 4 || lines[0] != "bootstrap --home HOME" || lines[3] != "start got TERM" ||
		!slices.Equal(mid, []string{"start --home HOME", "status --home HOME --json"}) {
		t.Errorf("kms-ha-0 ran:\n%s\nwant bootstrap, then start and status (either order), then SIGTERM forwarded to start", log0)
	}
	log2 := runEntrypoint(t, "kms-ha-2", "AwaitingJoin", "join --home")
	if strings.Contains(log2, "bootstrap") {
		t.Errorf("kms-ha-2 ran bootstrap:\n%s", log2)
	}
	if !strings.Contains(log2, "join --home HOME --cluster kms-ha-0.kms-ha.kms-ha.svc.invalid:7101 --timeout 60s\n") ||
		!strings.Contains(log2, "start got TERM") || strings.Count(log2, "join ") != 1 {
		t.Errorf("kms-ha-2 ran:\n%s\nwant start, one join through kms-ha-0, then SIGTERM forwarded", log2)
	}
}
