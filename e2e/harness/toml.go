package harness

import (
	"fmt"
	"strings"
)

// setTOML replaces the value of key in [section] ("" for the top level) of a
// cometbft config.toml, keeping every comment and the layout of the file.
// A key that is not found is an error rather than appended: cometbft renames
// keys between versions, and a setting that silently does not apply (a slow
// timeout, a default port) makes the test flaky in ways that are hard to see.
func setTOML(doc, section, key, value string) (string, error) {
	lines := strings.Split(doc, "\n")
	cur := ""
	for i, line := range lines {
		t := strings.TrimSpace(line)
		if strings.HasPrefix(t, "[") {
			cur = strings.Trim(t, "[] ")
			continue
		}
		if cur != section || strings.HasPrefix(t, "#") {
			continue
		}
		name, _, ok := strings.Cut(t, "=")
		if !ok || strings.TrimSpace(name) != key {
			continue
		}
		lines[i] = key + " = " + value
		return strings.Join(lines, "\n"), nil
	}
	where := "top level"
	if section != "" {
		where = "[" + section + "]"
	}
	return "", fmt.Errorf("config.toml: no key %q at %s", key, where)
}

// tomlSetting is one edit of config.toml.
type tomlSetting struct {
	section, key, value string
}

func applyTOML(doc string, settings []tomlSetting) (string, error) {
	var err error
	for _, s := range settings {
		if doc, err = setTOML(doc, s.section, s.key, s.value); err != nil {
			return "", err
		}
	}
	return doc, nil
}

func tomlString(s string) string { return fmt.Sprintf("%q", s) }
