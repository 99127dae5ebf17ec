package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

func statusOut(r *clusterpb.StatusResponse) statusJSON {
	out := statusJSON{NodeID: r.GetNodeId(), State: r.GetState(), LeaderID: r.GetLeaderId()}
	setHealthJSON(&out, r)
	return out
}

// TestStatusShowsMemberHealth: on the leader's answer every member shows
// its health, how long ago the leader heard from it and its applied lag,
// and a degraded cluster says so naming the member; a follower's answer
// shows "?" and where to ask.
func TestStatusShowsMemberHealth(t *testing.T) {
	leader := &clusterpb.StatusResponse{NodeId: "node1", State: "Leader", LeaderId: "node1", HealthKnown: true, FaultTolerance: 0,
		Members: []*clusterpb.Member{
			{Id: "node1", Role: "leader", Suffrage: "Voter", Health: "healthy", Heard: true, AppliedIndex: 90},
			{Id: "node2", Role: "follower", Suffrage: "Voter", Health: "healthy", Heard: true, LastContactMs: 212, AppliedIndex: 88, AppliedLag: 2},
			{Id: "node3", Role: "follower", Suffrage: "Voter", Health: "unreachable", Heard: true, LastContactMs: 12400, AppliedIndex: 40, AppliedLag: 50},
		}}
	var b bytes.Buffer
	printStatus(&b, statusOut(leader))
	text := b.String()
	for _, want := range []string{
		"MEMBER  ROLE      SUFFRAGE  HEALTH       LAST CONTACT  APPLIED LAG",
		"node1   leader    voter     healthy      (self)        0",
		"node2   follower  voter     healthy      212ms ago     2",
		"node3   follower  voter     unreachable  12.4s ago     50",
		"DEGRADED: the cluster cannot lose another voter (unreachable: node3)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("leader status lacks %q:\n%s", want, text)
		}
	}
	js, err := json.Marshal(statusOut(leader))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"health_known":true`, `"fault_tolerance":0`,
		`"id":"node3","raft_addr":"","api_addr":"","role":"follower","suffrage":"voter","level":0,"health":"unreachable","last_contact_ms":12400,"applied_index":40,"applied_lag":50`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("leader status JSON lacks %s:\n%s", want, js)
		}
	}

	follower := &clusterpb.StatusResponse{NodeId: "node2", State: "Follower", LeaderId: "node1",
		HealthNote: "only the leader knows whether it hears from each member: ask node1 (kms-ha status --cluster 10.0.0.1:9001)",
		Members:    []*clusterpb.Member{{Id: "node1", Role: "leader", Suffrage: "Voter"}, {Id: "node2", Role: "follower", Suffrage: "Voter"}}}
	b.Reset()
	printStatus(&b, statusOut(follower))
	text = b.String()
	for _, want := range []string{
		"node1   leader    voter     unknown  ?             ?",
		"health, last contact, lag: only the leader knows whether it hears from each member: ask node1 (kms-ha status --cluster 10.0.0.1:9001)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("follower status lacks %q:\n%s", want, text)
		}
	}
	js, _ = json.Marshal(statusOut(follower))
	if !strings.Contains(string(js), `"health":"unknown","last_contact_ms":null,"applied_index":null,"applied_lag":null`) ||
		!strings.Contains(string(js), `"health_known":false,"health_note":"only the leader knows`) || !strings.Contains(string(js), `"fault_tolerance":null`) {
		t.Errorf("follower status JSON: %s", js)
	}
}
