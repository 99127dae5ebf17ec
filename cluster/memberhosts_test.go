package cluster_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/kms-ha/kms-ha/cluster"
)

// TestMemberHostsFollowsTheConfiguration: the priority set holds the
// addresses of the raft configuration's servers, IPv4 and IPv6, and
// follows a configuration change.
func TestMemberHostsFollowsTheConfiguration(t *testing.T) {
	var hosts cluster.MemberHosts
	if hosts.Contains(net.ParseIP("127.0.0.5")) {
		t.Fatal("an empty set contains an address")
	}
	hosts.Update(context.Background(), []raft.Server{
		{ID: "a", Address: "127.0.0.5:7000"},
		{ID: "b", Address: "[2001:db8::1]:7000"},
		{ID: "c", Address: "[::ffff:10.0.0.9]:7000"},
	}, nil)
	for ip, want := range map[string]bool{
		"127.0.0.5": true, "::ffff:127.0.0.5": true, "2001:db8::1": true, "10.0.0.9": true,
		"127.0.0.6": false, "2001:db8::2": false,
	} {
		if got := hosts.Contains(net.ParseIP(ip)); got != want {
			t.Errorf("Contains(%s) = %v, want %v", ip, got, want)
		}
	}

	// Follow a single-node raft and add a non-voter.
	_, trans := raft.NewInmemTransport("127.0.0.7:7000")
	rc := raft.DefaultConfig()
	rc.LocalID = "a"
	rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = 50*time.Millisecond, 50*time.Millisecond, 50*time.Millisecond
	rc.Logger = hclog.NewNullLogger()
	store, snaps := raft.NewInmemStore(), raft.NewInmemSnapshotStore()
	conf := raft.Configuration{Servers: []raft.Server{{ID: "a", Address: trans.LocalAddr()}}}
	if err := raft.BootstrapCluster(rc, store, store, snaps, trans, conf); err != nil {
		t.Fatal(err)
	}
	r, err := raft.NewRaft(rc, &countFSM{}, store, store, snaps, trans)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Shutdown().Error() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); hosts.Follow(ctx, r, 20*time.Millisecond, nil) }()
	t.Cleanup(func() { cancel(); <-done })
	waitFor(t, 5*time.Second, "the set follows the configuration", func() bool {
		return hosts.Contains(net.ParseIP("127.0.0.7")) && !hosts.Contains(net.ParseIP("127.0.0.5"))
	})
	waitFor(t, 5*time.Second, "a leader", func() bool { return r.State() == raft.Leader })
	if err := r.AddNonvoter("b", "127.0.0.8:7000", 0, time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "an added server is in the set", func() bool {
		return hosts.Contains(net.ParseIP("127.0.0.8"))
	})
}
