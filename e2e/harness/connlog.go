package harness

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// Messages of kms-ha's validator connection lifecycle (transport package)
// and of the signer's refusals.
const (
	// MsgDisconnected ends a connection: attribute reason "context done"
	// when the node stopped leading or shut down, err otherwise.
	MsgDisconnected = "transport: disconnected"
	// MsgDroppingConnection ends a connection on a malformed frame.
	MsgDroppingConnection = "transport: dropping connection"
	// MsgClosedBeforeRequest ends a connection that the node closed before
	// sending anything.
	MsgClosedBeforeRequest = "transport: connection closed before any request"
	// MsgRefused is a request answered with a RemoteSignerError; attribute
	// reason (regression, conflict, invalid, unavailable, key).
	MsgRefused = "refused to sign"
	// ReasonContextDone is the reason of a disconnect that kms-ha chose:
	// leadership ended or the node is stopping.
	ReasonContextDone = "context done"
)

// ConnEvent is one line of a validator connection's lifecycle: connected, or
// one of the messages that end a connection.
type ConnEvent struct {
	Msg    string
	Time   time.Time
	Level  string
	NodeID string
	Chain  string
	Addr   string
	Reason string
	Err    string
	Served int
	File   string
	Line   int
}

// Ends reports whether e ends a connection.
func (e ConnEvent) Ends() bool { return e.Msg != MsgConnected }

func (e ConnEvent) String() string {
	s := fmt.Sprintf("%s %s %q addr=%s", e.Time.Format("15:04:05.000"), e.NodeID, e.Msg, e.Addr)
	if e.Reason != "" {
		s += " reason=" + e.Reason
	}
	if e.Err != "" {
		s += " err=" + e.Err
	}
	if e.Ends() {
		s += fmt.Sprintf(" served=%d", e.Served)
	}
	return s + fmt.Sprintf(" (%s:%d)", e.File, e.Line)
}

// Refusal is one request kms-ha answered with an error instead of a
// signature.
type Refusal struct {
	Time   time.Time
	NodeID string
	Chain  string
	Reason string
	// Outcome is the line's outcome attribute, if it has one.
	Outcome string
	Err     string
	File    string
	Line    int
}

// AuditScan is the connection lifecycle, the refusals and the outcome of
// every signature in a set of kms-ha logs.
type AuditScan struct {
	Conns    []ConnEvent
	Refusals []Refusal
	// Outcomes counts signed lines by their outcome attribute (allow,
	// allow_stored), per chain.
	Outcomes map[string]map[string]int
}

// ScanAudit parses kms-ha JSON logs from the beginning.
func ScanAudit(paths ...string) (AuditScan, error) {
	s := AuditScan{Outcomes: map[string]map[string]int{}}
	for _, p := range paths {
		f, err := os.Open(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return s, err
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := bytes.TrimSpace(sc.Bytes())
			if len(line) == 0 || line[0] != '{' {
				continue
			}
			var a struct {
				Time    time.Time       `json:"time"`
				Level   string          `json:"level"`
				Msg     string          `json:"msg"`
				NodeID  string          `json:"node_id"`
				Chain   string          `json:"chain"`
				Addr    string          `json:"addr"`
				Reason  string          `json:"reason"`
				Outcome string          `json:"outcome"`
				Err     json.RawMessage `json:"err"`
				Served  int             `json:"served"`
			}
			if json.Unmarshal(line, &a) != nil {
				continue
			}
			errText := ""
			if len(a.Err) > 0 {
				if json.Unmarshal(a.Err, &errText) != nil {
					errText = string(a.Err)
				}
			}
			switch {
			case a.Msg == MsgConnected || a.Msg == MsgDisconnected || a.Msg == MsgDroppingConnection || a.Msg == MsgClosedBeforeRequest:
				s.Conns = append(s.Conns, ConnEvent{Msg: a.Msg, Time: a.Time, Level: a.Level, NodeID: a.NodeID,
					Chain: a.Chain, Addr: a.Addr, Reason: a.Reason, Err: errText, Served: a.Served, File: p, Line: n})
			case a.Msg == MsgRefused || (a.Msg != MsgSigned && a.Outcome == "refuse"):
				s.Refusals = append(s.Refusals, Refusal{Time: a.Time, NodeID: a.NodeID, Chain: a.Chain,
					Reason: a.Reason, Outcome: a.Outcome, Err: errText, File: p, Line: n})
			case a.Msg == MsgSigned:
				if s.Outcomes[a.Chain] == nil {
					s.Outcomes[a.Chain] = map[string]int{}
				}
				s.Outcomes[a.Chain][a.Outcome]++
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return s, err
		}
	}
	sort.SliceStable(s.Conns, func(i, j int) bool { return s.Conns[i].Time.Before(s.Conns[j].Time) })
	return s, nil
}

// RefusalsByReason counts the refusals of chain by reason.
func (s AuditScan) RefusalsByReason(chain string) map[string]int {
	out := map[string]int{}
	for _, r := range s.Refusals {
		if r.Chain == chain {
			out[r.Reason]++
		}
	}
	return out
}

// FormatCounts prints a count map in key order.
func FormatCounts(m map[string]int) string {
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		name := k
		if name == "" {
			name = "(none)"
		}
		parts = append(parts, fmt.Sprintf("%s=%d", name, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, " ")
}
