package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kms-ha/kms-ha/grpcapi/clusterpb"
)

// setHealthJSON copies the members, with the health the leader knows of
// each, into the JSON shape; on a follower's answer the health fields stay
// null and health_note says where to ask.
func setHealthJSON(out *statusJSON, r *clusterpb.StatusResponse) {
	out.HealthKnown, out.HealthNote = r.GetHealthKnown(), r.GetHealthNote()
	if out.HealthKnown {
		ft := r.GetFaultTolerance()
		out.FaultTolerance = &ft
	}
	for _, m := range r.GetMembers() {
		mj := memberJSON{ID: m.GetId(), RaftAddr: m.GetRaftAddr(), APIAddr: m.GetApiAddr(), Role: m.GetRole(),
			Suffrage: strings.ToLower(m.GetSuffrage()), Level: m.GetLevel(), Health: m.GetHealth()}
		if mj.Health == "" {
			mj.Health = "unknown"
		}
		if out.HealthKnown {
			if m.GetHeard() {
				lc := m.GetLastContactMs()
				mj.LastContactMs = &lc
			}
			ai, lag := m.GetAppliedIndex(), m.GetAppliedLag()
			if m.GetHeard() {
				mj.AppliedIndex, mj.AppliedLag = &ai, &lag
			}
		}
		out.Members = append(out.Members, mj)
	}
}

// printMembers prints the member table: role and suffrage as this node
// knows them, and, on the leader's answer, whether the leader hears from
// each member, how long ago it last did, and how far behind it applies.
func printMembers(w io.Writer, s statusJSON) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tROLE\tSUFFRAGE\tHEALTH\tLAST CONTACT\tAPPLIED LAG\tRAFT ADDR\tAPI ADDR")
	for _, m := range s.Members {
		contact, lag := "?", "?"
		switch {
		case m.Role == "leader" && s.HealthKnown:
			contact, lag = "(self)", "0"
		case m.LastContactMs != nil:
			contact = (time.Duration(*m.LastContactMs) * time.Millisecond).Round(time.Millisecond).String() + " ago"
			lag = fmt.Sprint(*m.AppliedLag)
		case s.HealthKnown:
			contact = "never this term"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.Role, m.Suffrage, m.Health, contact, lag, m.RaftAddr, m.APIAddr)
	}
	tw.Flush()
	switch {
	case !s.HealthKnown && s.HealthNote != "":
		fmt.Fprintf(w, "health, last contact, lag: %s\n", s.HealthNote)
	case s.FaultTolerance != nil && *s.FaultTolerance == 0:
		var down []string
		for _, m := range s.Members {
			if m.Health == "unreachable" {
				down = append(down, m.ID)
			}
		}
		what := "too few voters: add members"
		if len(down) > 0 {
			what = "unreachable: " + strings.Join(down, ", ")
		}
		fmt.Fprintf(w, "DEGRADED: the cluster cannot lose another voter (%s)\n", what)
	case s.FaultTolerance != nil:
		fmt.Fprintf(w, "the cluster can lose %d more voter(s) and keep signing\n", *s.FaultTolerance)
	}
}
