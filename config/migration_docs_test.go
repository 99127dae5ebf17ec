package config

import (
	"reflect"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// docs/migration.md tells a cosmos/kms user that kms-ha reads the same
// kms.yaml plus a cluster block: its "after" example is its "before"
// example plus cluster, and loads.
func TestMigrationCosmosKMSBeforeAfter(t *testing.T) {
	var before, after string
	for _, b := range yamlBlocks(t, "../docs/migration.md") {
		switch first, _, _ := strings.Cut(b.text, "\n"); first {
		case "# cosmos/kms: ~/.kms/kms.yaml":
			before = b.text
		case "# kms-ha: ~/.kms-ha/kms.yaml":
			after = b.text
		}
	}
	if before == "" || after == "" {
		t.Fatal("docs/migration.md lost its cosmos/kms before/after examples (first lines `# cosmos/kms: ~/.kms/kms.yaml`, `# kms-ha: ~/.kms-ha/kms.yaml`)")
	}
	var b, a map[string]any
	if err := yaml.Unmarshal([]byte(before), &b); err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal([]byte(after), &a); err != nil {
		t.Fatal(err)
	}
	if _, ok := b["cluster"]; ok {
		t.Fatal("the cosmos/kms example has a cluster block")
	}
	if _, ok := a["cluster"]; !ok {
		t.Fatal("the kms-ha example has no cluster block")
	}
	delete(a, "cluster")
	if !reflect.DeepEqual(a, b) {
		t.Errorf("the kms-ha example is not the cosmos/kms one plus cluster:\nbefore %v\nafter  %v", b, a)
	}
	if _, err := Parse([]byte(after), homeWithIdentity(t)); err != nil {
		t.Errorf("the kms-ha example does not load: %v", err)
	}
}
