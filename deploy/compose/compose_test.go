//go:build docker

package compose

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCompose brings up deploy/compose as a user would (`make compose-up`),
// under a project name, network and RPC port of its own, and checks what
// the user would see: blocks signed by the cluster's key, `kms-ha status`,
// healthy containers, and the chain going on after the leader's container
// is killed. The images must exist (`make compose-test` builds them).
func TestCompose(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	for _, img := range []string{"kms-ha:dev", "cometbft:dev", "kms-ha-compose-init:dev"} {
		if out, err := exec.Command("docker", "image", "inspect", img).CombinedOutput(); err != nil {
			t.Fatalf("image %s: %v: %s(build the images with `make images`)", img, err, firstLine(out))
		}
	}
	p := newProject(t)

	start := time.Now()
	p.compose(ctx, "up", "-d")
	t.Logf("docker-compose up -d returned after %s", since(start))
	h1 := p.waitHeight(ctx, 1, time.Minute)
	firstBlock := since(start)
	t.Logf("TIMING first block (height %d) %s after docker-compose up", h1, firstBlock)

	// The only validator's key is the one the cluster holds (and the
	// validator's home no longer has it): every block is signed by kms-ha.
	st := p.status(ctx, "node1")
	if len(st.Keys) != 1 || st.Keys[0].ChainID != "compose-chain" {
		t.Fatalf("kms-ha status keys: %+v", st.Keys)
	}
	if got, want := strings.ToUpper(st.Keys[0].PubKey), p.validatorPubKey(ctx); got != want {
		t.Fatalf("the cluster's key %s is not the validator's %s", got, want)
	}

	// Formation: three voters, one leader.
	var leader string
	p.eventually(ctx, time.Minute, "three voters and a leader", func() error {
		st := p.status(ctx, "node1")
		voters := 0
		for _, m := range st.Members {
			if m.Suffrage == "voter" {
				voters++
			}
		}
		if voters != 3 || st.LeaderID == "" {
			return fmt.Errorf("%d voters, leader %q", voters, st.LeaderID)
		}
		leader = st.LeaderID
		return nil
	})
	t.Logf("TIMING three voters %s after docker-compose up; leader %s", since(start), leader)
	out := p.compose(ctx, "exec", "-T", "node1", "kms-ha", "status", "--home", "/var/lib/kms-ha")
	t.Logf("kms-ha status (docker-compose exec -T node1 kms-ha status --home /var/lib/kms-ha):\n%s", out)
	if !strings.Contains(out, "the cluster can lose 1 more voter(s)") {
		t.Fatalf("status does not show a healthy 3-voter cluster")
	}

	// The image's HEALTHCHECK (kms-ha healthcheck on /readyz).
	p.eventually(ctx, time.Minute, "every kms-ha container healthy", func() error {
		for _, n := range []string{"node1", "node2", "node3"} {
			if h := p.health(ctx, n); h != "healthy" {
				return fmt.Errorf("%s is %s", n, h)
			}
		}
		return nil
	})
	t.Logf("TIMING all three containers healthy %s after docker-compose up", since(start))

	// Kill the leader's container; the chain goes on under a new leader.
	hKill := p.waitHeight(ctx, p.height(ctx)+1, 30*time.Second)
	killed := time.Now()
	p.compose(ctx, "kill", "-s", "SIGKILL", leader)
	next := p.waitHeight(ctx, hKill+1, time.Minute)
	gap := since(killed)
	p.waitHeight(ctx, next+3, time.Minute)
	var newLeader string
	other := map[string]string{"node1": "node2", "node2": "node3", "node3": "node1"}[leader]
	p.eventually(ctx, 30*time.Second, "a new leader", func() error {
		st := p.status(ctx, other)
		if st.LeaderID == "" || st.LeaderID == leader {
			return fmt.Errorf("leader %q", st.LeaderID)
		}
		newLeader = st.LeaderID
		return nil
	})
	t.Logf("TIMING killed leader %s at height %d; next block %d after %s; new leader %s; chain at %d",
		leader, hKill, next, gap, newLeader, p.height(ctx))

	// The killed node comes back as a follower.
	p.compose(ctx, "start", leader)
	p.eventually(ctx, time.Minute, leader+" back as a follower", func() error {
		st := p.status(ctx, leader)
		if !strings.EqualFold(st.State, "follower") || st.LeaderID != newLeader {
			return fmt.Errorf("%s is %s, leader %q", leader, st.State, st.LeaderID)
		}
		return nil
	})
	t.Logf("%s is back as a follower of %s; chain at %d; total %s", leader, newLeader, p.height(ctx), since(start))
}

type project struct {
	t    *testing.T
	root string
	env  []string
	name string
	rpc  string
}

func newProject(t *testing.T) *project {
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Dir(file)
	port := freePort(t)
	// A network of its own, away from the default 172.28.15 of a user's
	// `make compose-up`.
	netPrefix := os.Getenv("KMSHA_TEST_NET")
	if netPrefix == "" {
		netPrefix = "172.28.115"
	}
	p := &project{
		t:    t,
		root: dir,
		name: fmt.Sprintf("kmsha-test-%d", os.Getpid()),
		rpc:  fmt.Sprintf("http://127.0.0.1:%d", port),
		env:  append(os.Environ(), "KMSHA_NET="+netPrefix, fmt.Sprintf("KMSHA_RPC_PORT=%d", port)),
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			out, _ := p.run(ctx, "logs", "--no-color", "--tail", "40")
			t.Logf("docker-compose logs:\n%s", out)
		}
		if out, err := p.run(ctx, "down", "-v", "--remove-orphans", "-t", "2"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
	})
	return p
}

func (p *project) run(ctx context.Context, args ...string) (string, error) {
	args = append([]string{"-f", filepath.Join(p.root, "docker-compose.yml"), "-p", p.name}, args...)
	cmd := exec.CommandContext(ctx, "docker-compose", args...)
	cmd.Env = p.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (p *project) compose(ctx context.Context, args ...string) string {
	p.t.Helper()
	out, err := p.run(ctx, args...)
	if err != nil {
		p.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

type status struct {
	NodeID   string `json:"node_id"`
	State    string `json:"state"`
	LeaderID string `json:"leader_id"`
	Members  []struct {
		ID       string `json:"id"`
		Suffrage string `json:"suffrage"`
	} `json:"members"`
	Keys []struct {
		ChainID string `json:"chain_id"`
		PubKey  string `json:"pub_key"`
	} `json:"keys"`
}

// status is `kms-ha status --json` run in the node's container (the
// image has no shell; exec runs the binary itself). A zero status on
// failure: callers poll.
func (p *project) status(ctx context.Context, node string) status {
	var st status
	out, err := p.run(ctx, "exec", "-T", node, "kms-ha", "status", "--home", "/var/lib/kms-ha", "--json")
	if err == nil {
		_ = json.Unmarshal([]byte(out), &st)
	}
	return st
}

func (p *project) health(ctx context.Context, service string) string {
	id, err := p.run(ctx, "ps", "-q", service)
	if err != nil {
		return err.Error()
	}
	out, err := exec.CommandContext(ctx, "docker", "inspect", "-f", "{{.State.Health.Status}}", strings.TrimSpace(id)).CombinedOutput()
	if err != nil {
		return err.Error()
	}
	return strings.TrimSpace(string(out))
}

func (p *project) rpcGet(ctx context.Context, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.rpc+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

type cometStatus struct {
	Result struct {
		SyncInfo struct {
			LatestBlockHeight string `json:"latest_block_height"`
		} `json:"sync_info"`
		ValidatorInfo struct {
			PubKey struct {
				Value string `json:"value"`
			} `json:"pub_key"`
		} `json:"validator_info"`
	} `json:"result"`
}

func (p *project) height(ctx context.Context) int64 {
	var s cometStatus
	if err := p.rpcGet(ctx, "/status", &s); err != nil {
		return 0
	}
	h, _ := strconv.ParseInt(s.Result.SyncInfo.LatestBlockHeight, 10, 64)
	return h
}

func (p *project) validatorPubKey(ctx context.Context) string {
	p.t.Helper()
	var s cometStatus
	if err := p.rpcGet(ctx, "/status", &s); err != nil {
		p.t.Fatal(err)
	}
	b, err := base64.StdEncoding.DecodeString(s.Result.ValidatorInfo.PubKey.Value)
	if err != nil {
		p.t.Fatal(err)
	}
	return strings.ToUpper(hex.EncodeToString(b))
}

func (p *project) waitHeight(ctx context.Context, h int64, timeout time.Duration) int64 {
	p.t.Helper()
	var got int64
	p.eventually(ctx, timeout, fmt.Sprintf("height %d", h), func() error {
		if got = p.height(ctx); got < h {
			return fmt.Errorf("at height %d", got)
		}
		return nil
	})
	return got
}

func (p *project) eventually(ctx context.Context, timeout time.Duration, what string, f func() error) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			p.t.Fatalf("no %s within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func since(t time.Time) time.Duration { return time.Since(t).Round(10 * time.Millisecond) }

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(string(b), "\n")
	return s + " "
}
