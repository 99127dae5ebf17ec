package grpcapi_test

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

// BenchmarkStatusRead measures a status read answered by a follower from
// its local replica against one that must be linearizable (the follower
// asks the leader for a read index, which the leader confirms with a
// quorum round trip, then waits to have applied it), and a linearizable
// read on the leader itself. Three nodes over real mTLS on loopback.
func BenchmarkStatusRead(b *testing.B) {
	pk := newPKI(b)
	dir := b.TempDir()
	var ms []*member
	var servers []cluster.Server
	for _, id := range []string{"n1", "n2", "n3"} {
		m := &member{api: freeAddr(b), tls: pk.node(b, id), cfg: cluster.Config{
			NodeID: id, DataDir: filepath.Join(dir, id), BindAddr: freeAddr(b), Logger: quietLog,
		}}
		ms = append(ms, m)
		servers = append(servers, cluster.Server{ID: id, Address: m.cfg.BindAddr})
	}
	for _, m := range ms {
		if err := cluster.Bootstrap(m.cfg, servers); err != nil {
			b.Fatal(err)
		}
		m.start(b)
	}
	defer func() {
		for _, m := range ms {
			m.stop()
		}
	}()
	waitFor(b, "a leader", func() bool { return leaderOf(ms) != nil })
	l := leaderOf(ms)
	for _, m := range ms {
		if err := l.node.SetMember(context.Background(), m.cfg.NodeID, m.api, fsm.Level); err != nil {
			b.Fatal(err)
		}
	}
	importVia(b, l.api, &clusterpb.ImportStateRequest{ChainId: "c", Source: "fresh"})
	var f *member
	for _, m := range ms {
		if m != l {
			f = m
			break
		}
	}
	waitFor(b, "the follower to know the leader's api", func() bool { _, a := f.node.Leader(); return a != "" })
	// A linearizable read also brings an idle follower up to date.
	if err := operator.Call(f.api, 5*time.Second, func(ctx context.Context, c clusterpb.ClusterClient) error {
		r, err := c.Status(ctx, &clusterpb.StatusRequest{Linearizable: true})
		if err == nil && len(r.GetChains()) != 1 {
			err = fmt.Errorf("linearizable read on a follower misses the imported chain: %v", r)
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	conn, err := operator.Dial(f.api)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	lconn, err := operator.Dial(l.api)
	if err != nil {
		b.Fatal(err)
	}
	defer lconn.Close()
	for _, bc := range []struct {
		name string
		c    clusterpb.ClusterClient
		lin  bool
	}{
		{"follower/local", clusterpb.NewClusterClient(conn), false},
		{"follower/linearizable", clusterpb.NewClusterClient(conn), true},
		{"leader/linearizable", clusterpb.NewClusterClient(lconn), true},
	} {
		b.Run(bc.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for i := 0; i < b.N; i++ {
				start := time.Now()
				r, err := bc.c.Status(context.Background(), &clusterpb.StatusRequest{Linearizable: bc.lin})
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
				if len(r.GetChains()) != 1 || r.GetLinearizable() != bc.lin {
					b.Fatalf("unexpected answer %v", r)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
