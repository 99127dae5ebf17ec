package grpcapi_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/kms-ha/kms-ha/cluster"
	"github.com/kms-ha/kms-ha/fsm"
	"github.com/kms-ha/kms-ha/grpcapi"
	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

// fakeRaft is a leader whose members are fixed; it records the writes it
// was asked to make. The API's authorisation needs nothing more.
type fakeRaft struct {
	id      string
	members []string
	mu      sync.Mutex
	writes  []string
}

func (f *fakeRaft) ID() string     { return f.id }
func (f *fakeRaft) IsLeader() bool { return true }
func (f *fakeRaft) IsMember(id string) bool {
	for _, m := range f.members {
		if m == id {
			return true
		}
	}
	return false
}
func (f *fakeRaft) Trusts(id string) bool                 { return f.IsMember(id) }
func (f *fakeRaft) IsVoter(id string) bool                { return f.IsMember(id) }
func (f *fakeRaft) Leader() (string, string)              { return f.id, "" }
func (f *fakeRaft) Members() ([]cluster.Member, error)    { return nil, nil }
func (f *fakeRaft) Stats() cluster.Stats                  { return cluster.Stats{State: "Leader"} }
func (f *fakeRaft) Health() (cluster.ClusterHealth, bool) { return cluster.ClusterHealth{}, false }
func (f *fakeRaft) LastContact() time.Duration            { return 0 }
func (f *fakeRaft) FSM() *fsm.FSM                         { return fsm.New() }
func (f *fakeRaft) ReadIndex(context.Context) (uint64, error) {
	return 0, nil
}
func (f *fakeRaft) Nudge(context.Context) error               { return nil }
func (f *fakeRaft) WaitApplied(context.Context, uint64) error { return nil }
func (f *fakeRaft) record(w string) {
	f.mu.Lock()
	f.writes = append(f.writes, w)
	f.mu.Unlock()
}
func (f *fakeRaft) Join(_ context.Context, r cluster.JoinRequest) ([]string, error) {
	f.record("join " + r.ID)
	return f.members, nil
}
func (f *fakeRaft) Remove(_ context.Context, id string) error { f.record("remove " + id); return nil }
func (f *fakeRaft) TransferLeadershipTo(string) error         { f.record("transfer"); return nil }
func (f *fakeRaft) Import(_ context.Context, im fsm.Import) (fsm.ImportResult, error) {
	f.record("import " + im.ChainID)
	return fsm.ImportResult{Applied: true}, nil
}

func TestRoleTable(t *testing.T) {
	pk := newPKI(t)
	leader := pk.node(t, "L")
	fake := &fakeRaft{id: "L", members: []string{"L", "M"}}
	cs := grpcapi.NewClusterServer("L", fake, grpcapi.Dialer{TLS: leader.client}, quietLog)
	srv := cs.NewGRPCServer(leader.server)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	addr := ln.Addr().String()

	callers := map[string]grpcapi.Dialer{
		"operator":   operator,
		"reader":     pk.operator(t, "grafana", true),
		"member":     {TLS: pk.node(t, "M").client},
		"non-member": {TLS: pk.node(t, "Z").client},
	}
	ops := map[string]func(context.Context, clusterpb.ClusterClient) error{
		"status": func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Status(ctx, &clusterpb.StatusRequest{})
			return err
		},
		"remove": func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Remove(ctx, &clusterpb.RemoveRequest{Id: "M"})
			return err
		},
		"import": func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.ImportState(ctx, &clusterpb.ImportStateRequest{ChainId: "x"})
			return err
		},
		"backup": func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Backup(ctx, &clusterpb.BackupRequest{})
			return err
		},
		"join Z": func(ctx context.Context, c clusterpb.ClusterClient) error {
			_, err := c.Join(ctx, &clusterpb.JoinRequest{Id: "Z", RaftAddr: "127.0.0.1:1"})
			return err
		},
	}
	allowed := map[string]map[string]bool{
		"operator":   {"status": true, "remove": true, "import": true, "backup": true},
		"reader":     {"status": true},
		"member":     {"status": true, "remove": true, "import": true, "backup": true},
		"non-member": {"join Z": true},
	}
	for who, d := range callers {
		for op, fn := range ops {
			err := d.Call(addr, 5*time.Second, fn)
			switch want := allowed[who][op]; {
			case want && err != nil:
				t.Errorf("%s %s: refused: %v", who, op, err)
			case !want && codeOf(err) != codes.PermissionDenied:
				t.Errorf("%s %s: %v, want PermissionDenied", who, op, err)
			}
		}
	}
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.writes) != 5 { // remove and import by the operator and the member; join Z
		t.Errorf("writes that reached the node: %v", fake.writes)
	}
}
