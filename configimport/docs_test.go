package configimport

import (
	"bufio"
	"bytes"
	"os"
	"strings"
	"testing"
)

// docs/migration.md shows a tmkms.toml and a horcrux config.yaml and what
// `kms-ha config import` prints for them: the import must print exactly
// that.
func TestMigrationDocExamples(t *testing.T) {
	blocks := fencedBlocks(t, "../docs/migration.md")
	find := func(lang, prefix string) string {
		t.Helper()
		for _, b := range blocks {
			if b.lang == lang && strings.HasPrefix(b.text, prefix) {
				return b.text
			}
		}
		t.Fatalf("docs/migration.md has no ```%s block starting with %q", lang, prefix)
		return ""
	}
	tm, err := TMKMS([]byte(find("toml", "[[chain]]")), "tmkms.toml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	checkDocOutput(t, tm, find("yaml", "# kms.yaml sections translated from tmkms.toml"))
	hx, err := Horcrux([]byte(find("yaml", "signMode:")), "config.yaml", HorcruxOptions{ChainID: "cosmoshub-4",
		KeyFile: "/secrets/priv_validator_key.json", Home: "/home/horcrux/.horcrux"})
	if err != nil {
		t.Fatal(err)
	}
	checkDocOutput(t, hx, find("yaml", "# kms.yaml sections translated from config.yaml"))
}

func checkDocOutput(t *testing.T, r *Result, doc string) {
	t.Helper()
	out, err := r.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != doc {
		t.Errorf("docs/migration.md shows another output of --from %s than the import prints; the import prints:\n%s", r.From, out)
	}
	if len(r.Refused) != 0 {
		t.Errorf("the --from %s example refuses %v", r.From, r.Refused)
	}
	if _, err := loadWithCluster(t, out); err != nil {
		t.Errorf("the --from %s example does not load with a cluster block: %v", r.From, err)
	}
}

type fenced struct{ lang, text string }

func fencedBlocks(t *testing.T, path string) []fenced {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []fenced
	var cur *fenced
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && strings.HasPrefix(trimmed, "```"):
			cur = &fenced{lang: strings.TrimPrefix(trimmed, "```")}
		case cur != nil && trimmed == "```":
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		}
	}
	return out
}
