package signer_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	privvalproto "github.com/cometbft/cometbft/proto/tendermint/privval"
	cmtproto "github.com/cometbft/cometbft/proto/tendermint/types"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/keys"
	"github.com/kms-ha/kms-ha/keys/file"
	"github.com/kms-ha/kms-ha/pki"
	"github.com/kms-ha/kms-ha/signer"
)

// benchCluster starts n raft nodes on loopback TCP with bolt stores on disk
// (fsync on), as in production, and returns the leader's signer.
func benchCluster(b *testing.B, n int) (*signer.Signer, func()) {
	b.Helper()
	leader, log, stop := benchRaft(b, n, "bench")
	s, err := signer.New(signer.Config{Reserver: leader, State: leader.FSM(), Logger: log,
		Keys: map[string]keys.Signer{"bench": file.New(ed25519.GenPrivKey())}})
	if err != nil {
		b.Fatal(err)
	}
	return s, stop
}

// benchRaft starts the n raft nodes of benchCluster and returns the leader,
// with a fresh (empty) watermark committed for each of chains.
func benchRaft(b *testing.B, n int, chains ...string) (*cluster.Node, *slog.Logger, func()) {
	b.Helper()
	_, leader, log, stop := startRaft(b, n, chains...)
	return leader, log, stop
}

// startRaft is benchRaft for tests too; it also returns every node.
func startRaft(b testing.TB, n int, chains ...string) ([]*cluster.Node, *cluster.Node, *slog.Logger, func()) {
	b.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dir := b.TempDir()
	// Raft runs over mutual TLS only, as in production: one CA, a
	// certificate per node.
	caDir := filepath.Join(dir, "ca")
	if err := pki.CreateCA(caDir, pki.CAOptions{}); err != nil {
		b.Fatal(err)
	}
	var cfgs []cluster.Config
	var servers []cluster.Server
	for i := 0; i < n; i++ {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		addr := ln.Addr().String()
		ln.Close()
		id := fmt.Sprintf("b%d", i)
		certDir := filepath.Join(dir, "tls-"+id)
		if err := pki.Issue(caDir, pki.IssueOptions{NodeID: id, Hosts: []string{"127.0.0.1"}, OutDir: certDir}); err != nil {
			b.Fatal(err)
		}
		f := pki.Files{CA: filepath.Join(caDir, pki.CACertFile), Cert: filepath.Join(certDir, pki.NodeCertFile), Key: filepath.Join(certDir, pki.NodeKeyFile)}
		srvTLS, err := pki.ServerConfig(f)
		if err != nil {
			b.Fatal(err)
		}
		cliTLS, err := pki.ClientConfig(f, "")
		if err != nil {
			b.Fatal(err)
		}
		c := cluster.Config{NodeID: id, DataDir: filepath.Join(dir, fmt.Sprint(i)), BindAddr: addr, Logger: log,
			TLS: &cluster.TLS{Server: srvTLS, Client: cliTLS, PeerID: pki.PeerNodeID}}
		cfgs = append(cfgs, c)
		servers = append(servers, cluster.Server{ID: c.NodeID, Address: addr})
	}
	var nodes []*cluster.Node
	for _, c := range cfgs {
		if err := cluster.Bootstrap(c, servers); err != nil {
			b.Fatal(err)
		}
		nd, err := cluster.Open(c, fsm.New())
		if err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, nd)
	}
	var leader *cluster.Node
	for deadline := time.Now().Add(10 * time.Second); leader == nil && time.Now().Before(deadline); {
		for _, nd := range nodes {
			if nd.IsLeader() && nd.Raft().Barrier(time.Second).Error() == nil {
				leader = nd
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if leader == nil {
		b.Fatal("no leader")
	}
	for _, c := range cfgs {
		if err := leader.SetMember(context.Background(), c.NodeID, c.BindAddr, fsm.Level); err != nil {
			b.Fatal(err)
		}
	}
	for _, chain := range chains {
		if _, err := leader.Import(context.Background(), fsm.Import{ChainID: chain}); err != nil {
			b.Fatal(err)
		}
	}
	return nodes, leader, log, func() {
		for _, nd := range nodes {
			nd.Shutdown()
		}
	}
}

// BenchmarkSignLatency measures one prevote from request to signed
// response through a 1-node cluster (the baseline: the key plus one local
// fsync) and a 3-node cluster (plus a round trip and a follower fsync), in
// the same run. Compare the p50/p99 metrics; the ratio is the price of HA.
func BenchmarkSignLatency(b *testing.B) {
	for _, n := range []int{1, 3} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			s, stop := benchCluster(b, n)
			defer stop()
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				req := voteReq("bench", &cmtproto.Vote{Type: cmtproto.PrevoteType, Height: int64(i + 1),
					BlockID: bid(1), Timestamp: ts})
				start := time.Now()
				resp := s.Handle(ctx, "bench", req)
				lat = append(lat, time.Since(start))
				if e := resp.Sum.(*privvalproto.Message_SignedVoteResponse).SignedVoteResponse.Error; e != nil {
					b.Fatal(e.Description)
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
