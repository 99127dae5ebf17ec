package harness

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// Messages kms-ha logs that the harness relies on.
const (
	MsgSigned         = "signed"
	MsgBecameLeader   = "became leader"
	MsgLostLeadership = "lost leadership"
)

// Consensus message steps as kms-ha logs them.
const (
	StepProposal  = 1
	StepPrevote   = 2
	StepPrecommit = 3
)

// SignRecord is one signature released by a kms-ha node.
type SignRecord struct {
	Chain  string
	Height int64
	Round  int64
	Step   int
	SHA    string // sign_bytes_sha256
	NodeID string
	Time   time.Time
	File   string
	Line   int
}

// HRS identifies one vote or proposal slot; the validator must never sign
// two different messages for the same slot.
type HRS struct {
	Chain  string
	Height int64
	Round  int64
	Step   int
}

func (r SignRecord) HRS() HRS { return HRS{r.Chain, r.Height, r.Round, r.Step} }

func (h HRS) String() string {
	return fmt.Sprintf("%s h=%d r=%d %s", h.Chain, h.Height, h.Round, StepName(h.Step))
}

// StepName spells a step number for humans.
func StepName(step int) string {
	switch step {
	case StepProposal:
		return "proposal"
	case StepPrevote:
		return "prevote"
	case StepPrecommit:
		return "precommit"
	}
	return fmt.Sprintf("step%d", step)
}

// LogEvent is a leadership change seen in a node's log.
type LogEvent struct {
	Msg  string
	Time time.Time
	File string
	Line int
}

// LogTail reads a node's JSON log incrementally, so the demo can follow the
// logs while they grow and the test can rescan them at the end.
type LogTail struct {
	Path string

	off  int64
	line int
}

// Scan is what a LogTail poll found.
type Scan struct {
	Signed []SignRecord
	Events []LogEvent
	// Errors are "signed" lines that do not carry the documented attributes.
	// They fail the safety check: a signature the harness cannot attribute to
	// a slot is a signature it cannot prove safe.
	Errors []error
	// ErrorLines counts lines logged at level ERROR.
	ErrorLines int
}

// Poll parses the complete lines appended since the previous poll. A line
// still being written (no newline yet) is left for the next poll.
func (t *LogTail) Poll() (Scan, error) {
	var s Scan
	f, err := os.Open(t.Path)
	if os.IsNotExist(err) {
		return s, nil
	}
	if err != nil {
		return s, err
	}
	defer f.Close()
	if _, err := f.Seek(t.off, io.SeekStart); err != nil {
		return s, err
	}
	data, err := io.ReadAll(f)
	if err != nil {
		return s, err
	}
	end := bytes.LastIndexByte(data, '\n')
	if end < 0 {
		return s, nil
	}
	data = data[:end+1]
	t.off += int64(len(data))
	for _, line := range bytes.Split(data[:end], []byte{'\n'}) {
		t.line++
		t.parseLine(line, &s)
	}
	return s, nil
}

type logHeader struct {
	Time  time.Time `json:"time"`
	Level string    `json:"level"`
	Msg   string    `json:"msg"`
}

type signedAttrs struct {
	Chain  *string `json:"chain"`
	Height *int64  `json:"height"`
	Round  *int64  `json:"round"`
	Step   *int    `json:"step"`
	SHA    *string `json:"sign_bytes_sha256"`
	NodeID *string `json:"node_id"`
}

func (t *LogTail) parseLine(line []byte, s *Scan) {
	line = bytes.TrimSpace(line)
	// Lines that are not JSON objects are the harness's start markers or a Go
	// panic trace; neither carries a signature.
	if len(line) == 0 || line[0] != '{' {
		return
	}
	var h logHeader
	if err := json.Unmarshal(line, &h); err != nil {
		return
	}
	if strings.EqualFold(h.Level, "ERROR") {
		s.ErrorLines++
	}
	switch h.Msg {
	case MsgBecameLeader, MsgLostLeadership:
		s.Events = append(s.Events, LogEvent{Msg: h.Msg, Time: h.Time, File: t.Path, Line: t.line})
	case MsgSigned:
		var a signedAttrs
		err := json.Unmarshal(line, &a)
		if err == nil && (a.Chain == nil || a.Height == nil || a.Round == nil || a.Step == nil || a.SHA == nil || a.NodeID == nil) {
			err = fmt.Errorf("missing one of chain, height, round, step, sign_bytes_sha256, node_id")
		}
		if err == nil && (len(*a.SHA) != 64 || strings.Trim(strings.ToLower(*a.SHA), "0123456789abcdef") != "") {
			err = fmt.Errorf("sign_bytes_sha256 %q is not 64 hex digits", *a.SHA)
		}
		if err != nil {
			s.Errors = append(s.Errors, fmt.Errorf("%s:%d: signed line not as documented: %v: %s", t.Path, t.line, err, line))
			return
		}
		s.Signed = append(s.Signed, SignRecord{
			Chain: *a.Chain, Height: *a.Height, Round: *a.Round, Step: *a.Step,
			SHA: strings.ToLower(*a.SHA), NodeID: *a.NodeID,
			Time: h.Time, File: t.Path, Line: t.line,
		})
	}
}

// ScanLogs parses complete log files from the beginning.
func ScanLogs(paths ...string) (Scan, error) {
	var all Scan
	for _, p := range paths {
		t := &LogTail{Path: p}
		s, err := t.Poll()
		if err != nil {
			return all, err
		}
		all.Signed = append(all.Signed, s.Signed...)
		all.Events = append(all.Events, s.Events...)
		all.Errors = append(all.Errors, s.Errors...)
		all.ErrorLines += s.ErrorLines
	}
	return all, nil
}

// CheckNoDoubleSign is the safety invariant: across all nodes and all time,
// each (chain, height, round, step) has exactly one distinct sign-bytes hash.
// Two nodes logging the same hash for a slot is allowed (a retry of the same
// message); two different hashes is a double sign.
func CheckNoDoubleSign(recs []SignRecord) error {
	bySlot := map[HRS]map[string][]SignRecord{}
	for _, r := range recs {
		m := bySlot[r.HRS()]
		if m == nil {
			m = map[string][]SignRecord{}
			bySlot[r.HRS()] = m
		}
		m[r.SHA] = append(m[r.SHA], r)
	}
	var bad []string
	for slot, hashes := range bySlot {
		if len(hashes) < 2 {
			continue
		}
		var parts []string
		for sha, rs := range hashes {
			var who []string
			for _, r := range rs {
				who = append(who, fmt.Sprintf("%s at %s (%s:%d)", r.NodeID, r.Time.Format("15:04:05.000"), r.File, r.Line))
			}
			parts = append(parts, fmt.Sprintf("%s… by %s", sha[:16], strings.Join(who, ", ")))
		}
		sort.Strings(parts)
		bad = append(bad, fmt.Sprintf("%s: %d different messages signed: %s", slot, len(hashes), strings.Join(parts, "; ")))
	}
	if len(bad) == 0 {
		return nil
	}
	sort.Strings(bad)
	return fmt.Errorf("DOUBLE SIGN: %d slot(s) signed with conflicting messages:\n%s", len(bad), joinLines(bad))
}

// PrecommitSigner returns the node that signed the precommit that committed
// height h, i.e. the precommit in the highest round. ok is false when no
// precommit for h was logged.
func PrecommitSigner(recs []SignRecord, chain string, h int64) (node string, round int64, ok bool) {
	round = -1
	for _, r := range recs {
		if r.Chain == chain && r.Height == h && r.Step == StepPrecommit && r.Round >= round {
			node, round, ok = r.NodeID, r.Round, true
		}
	}
	return node, round, ok
}
