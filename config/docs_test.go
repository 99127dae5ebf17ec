package config

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cometbft/cometbft/crypto/ed25519"
	"gopkg.in/yaml.v3"

	"github.com/kms-ha/kms-ha/transport"
)

// The kms.yaml examples of the README and docs/ load, so the docs cannot
// drift from the schema and its validation.
//
// The rule: every fenced ```yaml block in README.md and docs/*.md whose
// top level names a kms.yaml section (cluster, chains, validators, keys,
// grpc, metrics, log) is an example.
//   - A block with a cluster section is a whole kms.yaml and loads as it
//     is.
//   - A block without one is a fragment: each section it has replaces that
//     section of docsBase, a minimal valid kms.yaml for chain cosmoshub-4,
//     and the result must load.
//
// The test home holds the identity.json `kms-ha init` writes; other files
// an example names may be absent (backends report those at start, not at
// load). Placeholders the docs write for a value the reader fills in are
// replaced by a real value of that kind (docsPlaceholders).
const docsBase = `
cluster:
  node_id: node1
  raft_addr: 10.0.0.11:7001
  api_addr: 10.0.0.11:7101
chains:
  - id: cosmoshub-4
validators:
  - chain_id: cosmoshub-4
    addr: tcp://10.0.1.5:26659
    identity_key: identity.json
keys:
  - chain_ids: [cosmoshub-4]
    key_file: /secrets/priv_validator_key.json
`

// docsPlaceholders matches the docs' placeholders for a libp2p peer id,
// e.g. 12D3KooW...VALIDATOR_PEER_ID...
var docsPlaceholders = regexp.MustCompile(`12D3KooW\.\.\.[A-Z_]+\.\.\.`)

var kmsYAMLSections = map[string]bool{"cluster": true, "chains": true, "validators": true, "keys": true,
	"grpc": true, "metrics": true, "log": true}

func TestDocsExamplesLoad(t *testing.T) {
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"../README.md"}, files...)
	pid, err := transport.PeerID(ed25519.GenPrivKey())
	if err != nil {
		t.Fatal(err)
	}
	whole, fragments := 0, 0
	for _, f := range files {
		for _, b := range yamlBlocks(t, f) {
			var top map[string]any
			if err := yaml.Unmarshal([]byte(b.text), &top); err != nil {
				t.Errorf("%s: not YAML: %v", b.where, err)
				continue
			}
			if !namesASection(top) {
				continue
			}
			text := docsPlaceholders.ReplaceAllString(b.text, pid)
			if _, ok := top["cluster"]; ok {
				whole++
			} else {
				fragments++
				text = mergeIntoBase(t, b.where, text)
			}
			if _, err := Parse([]byte(text), homeWithIdentity(t)); err != nil {
				t.Errorf("%s: the example does not load: %v\n%s", b.where, err, text)
			}
		}
	}
	if whole == 0 || fragments == 0 {
		t.Fatalf("found %d whole kms.yaml examples and %d fragments; the extraction is broken", whole, fragments)
	}
	t.Logf("%d whole kms.yaml examples and %d fragments load", whole, fragments)
}

func namesASection(top map[string]any) bool {
	for k := range top {
		if kmsYAMLSections[k] {
			return true
		}
	}
	return false
}

// mergeIntoBase returns docsBase with each section of the fragment
// replacing the base's.
func mergeIntoBase(t *testing.T, where, fragment string) string {
	t.Helper()
	var base, frag map[string]any
	if err := yaml.Unmarshal([]byte(docsBase), &base); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(fragment), &frag); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	for k, v := range frag {
		base[k] = v
	}
	out, err := yaml.Marshal(base)
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	return string(out)
}

type yamlBlock struct{ where, text string }

var fenceRe = regexp.MustCompile("^(\\s*)```(\\S*)\\s*$")

// yamlBlocks returns the fenced ```yaml blocks of a markdown file, with the
// fence's indentation (a block inside a list item) removed.
func yamlBlocks(t *testing.T, path string) []yamlBlock {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var blocks []yamlBlock
	var cur *bytes.Buffer
	var indent, where string
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		m := fenceRe.FindStringSubmatch(line)
		switch {
		case cur == nil && m != nil && m[2] == "yaml":
			cur, indent, where = &bytes.Buffer{}, m[1], fmt.Sprintf("%s:%d", filepath.Base(path), n)
		case cur == nil && m != nil:
			// Another language's block: skip to its end.
			for sc.Scan() {
				n++
				if fm := fenceRe.FindStringSubmatch(sc.Text()); fm != nil && fm[2] == "" {
					break
				}
			}
		case cur != nil && m != nil && m[2] == "":
			blocks = append(blocks, yamlBlock{where, cur.String()})
			cur = nil
		case cur != nil:
			cur.WriteString(strings.TrimPrefix(line, indent) + "\n")
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s: unterminated ```yaml block", where)
	}
	return blocks
}

// TestDocsClusterDefaults: the defaults docs/configuration.md gives for
// the cluster section are the ones a kms.yaml without them gets.
func TestDocsClusterDefaults(t *testing.T) {
	home := homeWithIdentity(t)
	c, err := Parse([]byte(docsBase), home)
	if err != nil {
		t.Fatal(err)
	}
	cl := c.Cluster
	rel := func(p string) string { r, _ := filepath.Rel(home, p); return r }
	want := map[string]string{
		"data_dir": rel(cl.DataDir), "tls_ca": rel(cl.TLSCA), "tls_cert": rel(cl.TLSCert), "tls_key": rel(cl.TLSKey),
		"heartbeat_timeout": cl.HeartbeatTimeout.String(), "election_timeout": cl.ElectionTimeout.String(),
		"leader_lease_timeout": cl.LeaderLeaseTimeout.String(), "commit_timeout": cl.CommitTimeout.String(),
		"apply_timeout": cl.ApplyTimeout.String(), "snapshot_interval": cl.SnapshotInterval.String(),
		"snapshot_threshold": fmt.Sprint(cl.SnapshotThreshold), "max_import_jump": fmt.Sprint(cl.MaxImportJump),
		"validator_handover_after": cl.HandoverAfter().String(),
	}
	data, err := os.ReadFile("../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `([a-z_]+)` \\| `([^`]+)` \\|")
	got := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(data), -1) {
		if _, ok := want[m[1]]; ok {
			if d, err := time.ParseDuration(m[2]); err == nil {
				m[2] = d.String()
			}
			got[m[1]] = m[2]
		}
	}
	for field, v := range want {
		if got[field] != v {
			t.Errorf("docs/configuration.md: cluster.%s defaults to %q, the code to %q", field, got[field], v)
		}
	}
}
