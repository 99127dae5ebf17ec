package node

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/config"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
	"github.com/kms-ha/kms-ha/pki"
)

// memberHome writes the home of node id, with a certificate of home's
// cluster CA, a metrics endpoint and no validators.
func memberHome(t *testing.T, home, id string) (home2, raftAddr, metricsAddr string) {
	t.Helper()
	home2 = t.TempDir()
	if err := pki.Issue(filepath.Join(home, "ca"), pki.IssueOptions{NodeID: id, Hosts: []string{"127.0.0.1"},
		OutDir: filepath.Join(home2, "tls")}); err != nil {
		t.Fatal(err)
	}
	caCert, err := os.ReadFile(filepath.Join(home, "ca", pki.CACertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(home2, "tls", pki.CACertFile), caCert, 0o644); err != nil {
		t.Fatal(err)
	}
	raftAddr, metricsAddr = localAddr(t), localAddr(t)
	yaml := fmt.Sprintf("cluster:\n  node_id: %s\n  raft_addr: %s\n  api_addr: %s\nmetrics:\n  listen: %s\n",
		id, raftAddr, localAddr(t), metricsAddr)
	if err := os.WriteFile(filepath.Join(home2, config.FileName), []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return home2, raftAddr, metricsAddr
}

// scrapeMetrics returns the plain-text exposition as series -> value.
func scrapeMetrics(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.LastIndexByte(line, ' '); i > 0 && !strings.HasPrefix(line, "#") {
			if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
				out[line[:i]] = v
			}
		}
	}
	return out
}

func waitMetrics(t *testing.T, addr string, ok func(map[string]float64) bool) map[string]float64 {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if got := scrapeMetrics(t, addr); ok(got) || time.Now().After(deadline) {
			return got
		}
	}
}

type member struct {
	id, home, metrics string
	node              *Node
	stop              func()
}

// TestHealthTellsTheTruth: a three-voter cluster whose leader reports all
// members healthy; one follower stops, and the leader's /readyz turns to
// 200 "degraded" naming it, its metrics count it unreachable with no fault
// tolerance left, and its status shows it unreachable with its last
// contact, while the other follower's status says it cannot know and names
// the leader.
func TestHealthTellsTheTruth(t *testing.T) {
	home1, metrics1, _ := testHome(t, "")
	cfg1, err := config.Load(home1)
	if err != nil {
		t.Fatal(err)
	}
	h2, r2, m2 := memberHome(t, home1, "n2")
	h3, r3, m3 := memberHome(t, home1, "n3")
	peers := []cluster.Server{{ID: "n1", Address: cfg1.Cluster.RaftAddr}, {ID: "n2", Address: r2}, {ID: "n3", Address: r3}}
	ms := []*member{{id: "n1", home: home1, metrics: metrics1}, {id: "n2", home: h2, metrics: m2}, {id: "n3", home: h3, metrics: m3}}
	ms[0].node, ms[0].stop = runNode(t, home1, peers, nil, nil)
	for _, m := range ms[1:] {
		m.node, m.stop = runNode(t, m.home, nil, []string{"n1"}, nil)
	}
	leader := waitLeader(t, ms)
	code, body := waitReadyz(t, leader.metrics, 20*time.Second, func(code int, body string) bool { return body == "ready\n" })
	if code != http.StatusOK || body != "ready\n" {
		t.Fatalf("leader %s /readyz with three voters up: %d %q, want 200 ready", leader.id, code, body)
	}
	got := waitMetrics(t, leader.metrics, func(got map[string]float64) bool { return got[`kmsha_cluster_members{state="healthy"}`] == 3 })
	if got[`kmsha_cluster_members{state="healthy"}`] != 3 || got[`kmsha_cluster_fault_tolerance`] != 1 {
		t.Fatalf("leader metrics with three voters up: healthy %v, fault tolerance %v; want 3 and 1",
			got[`kmsha_cluster_members{state="healthy"}`], got[`kmsha_cluster_fault_tolerance`])
	}

	waitAllHeard(t, leader, 3)

	var down, other *member
	for _, m := range ms {
		if m != leader && down == nil {
			down = m
		} else if m != leader {
			other = m
		}
	}
	down.stop()
	code, body = waitReadyz(t, leader.metrics, 10*time.Second, func(_ int, body string) bool { return strings.HasPrefix(body, "degraded") })
	want := fmt.Sprintf("degraded: 2 of 3 voters reachable, quorum 2: the cluster cannot lose another voter; %s unreachable (voter, last heard ", down.id)
	if code != http.StatusOK || !strings.HasPrefix(body, want) {
		t.Fatalf("leader /readyz with %s stopped: %d %q, want 200 starting with %q", down.id, code, body, want)
	}
	got = waitMetrics(t, leader.metrics, func(got map[string]float64) bool { return got[`kmsha_cluster_members{state="unreachable"}`] == 1 })
	if got[`kmsha_cluster_members{state="unreachable"}`] != 1 || got[`kmsha_cluster_fault_tolerance`] != 0 ||
		got[fmt.Sprintf(`kmsha_raft_member_last_contact_seconds{member=%q}`, down.id)] < 3 {
		t.Errorf("leader metrics with %s stopped: unreachable %v, fault tolerance %v, its last contact %vs",
			down.id, got[`kmsha_cluster_members{state="unreachable"}`], got[`kmsha_cluster_fault_tolerance`],
			got[fmt.Sprintf(`kmsha_raft_member_last_contact_seconds{member=%q}`, down.id)])
	}
	if _, ok := scrapeMetrics(t, other.metrics)[`kmsha_cluster_members{state="healthy"}`]; ok {
		t.Errorf("follower %s exports kmsha_cluster_members: only the leader knows", other.id)
	}

	st := statusOf(t, leader)
	if !st.GetHealthKnown() || st.GetFaultTolerance() != 0 {
		t.Errorf("leader status: health known %v, fault tolerance %d", st.GetHealthKnown(), st.GetFaultTolerance())
	}
	for _, m := range st.GetMembers() {
		switch m.GetId() {
		case down.id:
			if m.GetHealth() != "unreachable" || !m.GetHeard() || m.GetLastContactMs() < 3000 {
				t.Errorf("leader status of stopped %s: %v", down.id, m)
			}
		case other.id:
			if m.GetHealth() != "healthy" || m.GetLastContactMs() > 2500 || m.GetAppliedIndex() == 0 {
				t.Errorf("leader status of running %s: %v", other.id, m)
			}
		}
	}
	fst := statusOf(t, other)
	if fst.GetHealthKnown() || !strings.Contains(fst.GetHealthNote(), "ask "+leader.id) {
		t.Errorf("follower status: health known %v, note %q; want unknown, pointing to %s", fst.GetHealthKnown(), fst.GetHealthNote(), leader.id)
	}
}

// waitAllHeard waits until the leader's status shows n members heard from
// recently, each with its applied index.
func waitAllHeard(t *testing.T, leader *member, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		st, heard := statusOf(t, leader), 0
		for _, m := range st.GetMembers() {
			if m.GetHeard() && m.GetHealth() == "healthy" && m.GetLastContactMs() < 2000 && m.GetAppliedIndex() > 0 {
				heard++
			}
		}
		if heard == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("leader status after 10s: %v", st.GetMembers())
		}
	}
}

func waitLeader(t *testing.T, ms []*member) *member {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, m := range ms {
			if cl := m.node.cluster.Load(); cl != nil && cl.IsLeader() {
				return m
			}
		}
	}
	t.Fatal("no leader within 20s")
	return nil
}

func statusOf(t *testing.T, m *member) *clusterpb.StatusResponse {
	t.Helper()
	var st *clusterpb.StatusResponse
	err := m.node.dialer.Call(m.node.cfg.Cluster.APIAddr, 5*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
		var err error
		st, err = c.Status(ctx, &clusterpb.StatusRequest{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}
