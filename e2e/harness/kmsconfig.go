package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// AddValidatorAddrs adds validators entries to the kms.yaml that
// KMSNode.WriteConfig wrote: one per addr, each a copy of the chain's
// existing entry with only its addr replaced. A validator run by several
// cometbft nodes (an active node and hot standbys, all with the same key) is
// configured this way: the leader dials every validators entry.
//
// Copying the entry written by WriteConfig, rather than writing a new one,
// keeps whatever else WriteConfig puts into an entry (identity key, TLS
// settings) identical for every node of the validator.
func (n *KMSNode) AddValidatorAddrs(chainID string, addrs []string) error {
	p := filepath.Join(n.Home, "kms.yaml")
	data, err := os.ReadFile(p)
	if err != nil {
		return err
	}
	out, err := addValidatorAddrs(string(data), chainID, addrs)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	return os.WriteFile(p, []byte(out), 0o644)
}

func addValidatorAddrs(doc, chainID string, addrs []string) (string, error) {
	lines := strings.Split(doc, "\n")
	start := -1
	for i, l := range lines {
		if strings.TrimRight(l, " ") == "validators:" {
			start = i
			break
		}
	}
	if start < 0 {
		return "", fmt.Errorf("no top-level validators: section")
	}
	// The section ends at the next top-level key.
	end := len(lines)
	for i := start + 1; i < len(lines); i++ {
		l := lines[i]
		if l != "" && l[0] != ' ' && l[0] != '#' && l[0] != '-' {
			end = i
			break
		}
	}
	// Entries begin with "- " at the indentation of the first one.
	indent := -1
	var starts []int
	for i := start + 1; i < end; i++ {
		t := strings.TrimLeft(lines[i], " ")
		if !strings.HasPrefix(t, "- ") {
			continue
		}
		in := len(lines[i]) - len(t)
		if indent < 0 {
			indent = in
		}
		if in == indent {
			starts = append(starts, i)
		}
	}
	if len(starts) == 0 {
		return "", fmt.Errorf("validators: section has no entries")
	}
	last := end
	for last > starts[len(starts)-1]+1 && strings.TrimSpace(lines[last-1]) == "" {
		last--
	}
	var entry []string
	for k, s := range starts {
		e := last
		if k+1 < len(starts) {
			e = starts[k+1]
		}
		for _, l := range lines[s:e] {
			if v, ok := yamlValue(l, "chain_id"); ok && v == chainID {
				entry = lines[s:e]
			}
		}
		if entry != nil {
			break
		}
	}
	if entry == nil {
		return "", fmt.Errorf("no validators entry for chain %q", chainID)
	}
	var add []string
	for _, a := range addrs {
		replaced := false
		for _, l := range entry {
			if _, ok := yamlValue(l, "addr"); ok {
				key := l[:strings.Index(l, "addr:")]
				l = key + "addr: " + a
				replaced = true
			}
			add = append(add, l)
		}
		if !replaced {
			return "", fmt.Errorf("validators entry for chain %q has no addr", chainID)
		}
	}
	out := append(append(append([]string{}, lines[:last]...), add...), lines[last:]...)
	return strings.Join(out, "\n"), nil
}

// yamlValue returns the value of "key: value" on one line, with a leading
// "- " allowed and quotes removed.
func yamlValue(line, key string) (string, bool) {
	t := strings.TrimLeft(line, " ")
	t = strings.TrimPrefix(t, "- ")
	t = strings.TrimLeft(t, " ")
	v, ok := strings.CutPrefix(t, key+":")
	if !ok {
		return "", false
	}
	return strings.Trim(strings.TrimSpace(v), `"'`), true
}
