package harness

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
)

// MsgConnected is logged by a node's transport when it has a validator
// connection up.
const MsgConnected = "transport: connected"

// startMarker begins every process start in a node's log (see process.go).
const startMarker = "##### harness: start"

// CheckLeaderOnly checks DESIGN.md's invariant 3 in each node's log: a
// node opens validator connections and releases signatures only inside a
// term of its own leadership, i.e. after "became leader" (logged once its
// barrier returned) and before "lost leadership" (logged once its
// connections are closed) or the process's end. Each harness start marker
// begins a new process, which leads nothing until it says so.
func CheckLeaderOnly(paths ...string) (connects int, err error) {
	for _, p := range paths {
		f, err := os.Open(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return connects, err
		}
		leading := false
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for n := 1; sc.Scan(); n++ {
			line := bytes.TrimSpace(sc.Bytes())
			if bytes.HasPrefix(line, []byte(startMarker)) {
				leading = false
				continue
			}
			var h logHeader
			if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &h) != nil {
				continue
			}
			switch h.Msg {
			case MsgBecameLeader:
				leading = true
			case MsgLostLeadership:
				leading = false
			case MsgConnected, MsgSigned:
				if h.Msg == MsgConnected {
					connects++
				}
				if !leading {
					f.Close()
					return connects, fmt.Errorf("%s:%d: %q while the node was not leader", p, n, h.Msg)
				}
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return connects, err
		}
	}
	return connects, nil
}

// CheckNoRace fails if the race detector reported anything in a log.
func CheckNoRace(paths ...string) error {
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		if i := bytes.Index(data, []byte(RaceReport)); i >= 0 {
			end := min(len(data), i+3000)
			return fmt.Errorf("%s: data race in kms-ha:\n%s", p, data[i:end])
		}
	}
	return nil
}
