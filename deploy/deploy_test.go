// Package deploy holds the deployment material (deploy/grafana,
// deploy/prometheus, deploy/systemd, deploy/kubernetes). It has no Go code
// of its own: these tests check that the material agrees with the binary it
// deploys (metric names, kms.yaml) and with the tools that read it
// (promtool, systemd-analyze). The Kubernetes manifests are decoded with the
// Kubernetes API types in their own module, deploy/kubernetes, so that the
// kms-ha binary never links k8s.io.
package deploy_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/kms-ha/kms-ha/metrics"
)

const (
	rulesFile     = "prometheus/kms-ha.rules.yml"
	rulesTestFile = "prometheus/kms-ha.rules.test.yml"
	dashboardFile = "grafana/kms-ha.json"
)

// ruleFile is the part of a Prometheus rule file these tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert  string `yaml:"alert"`
			Record string `yaml:"record"`
			Expr   string `yaml:"expr"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(b, &rf); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	if len(rf.Groups) == 0 {
		t.Fatalf("%s: no rule groups", rulesFile)
	}
	return rf
}

// dashboardQueries returns every PromQL expression of the dashboard: the
// panels' targets and the template variables' queries.
func dashboardQueries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(d)
	if len(out) == 0 {
		t.Fatalf("%s: no queries found", dashboardFile)
	}
	return out
}

var metricNameRe = regexp.MustCompile(`\bkmsha_[a-zA-Z0-9_]+`)

// registered reports whether name is a metric family of reg. A family
// shows in Gather only once it has a series, and a labelled vector has
// none until it is first used; so a name not gathered is probed: the
// registry refuses a new collector whose name it already describes.
func registered(reg *prometheus.Registry, gathered map[string]bool, name string) bool {
	if gathered[name] {
		return true
	}
	probe := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: "deploy_test probe"})
	if err := reg.Register(probe); err != nil {
		return true
	}
	reg.Unregister(probe)
	return false
}

// TestMetricNamesExist: every kmsha_ metric the dashboard and the alert
// rules query is registered by metrics.New(). A histogram's _bucket, _sum
// and _count series count as its name.
func TestMetricNamesExist(t *testing.T) {
	used := map[string][]string{} // metric name -> where
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			for _, n := range metricNameRe.FindAllString(r.Expr, -1) {
				used[n] = append(used[n], rulesFile+" "+r.Alert+r.Record)
			}
		}
	}
	for _, q := range dashboardQueries(t) {
		for _, n := range metricNameRe.FindAllString(q, -1) {
			used[n] = append(used[n], dashboardFile)
		}
	}
	reg := metrics.New().Registry()
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gathered := map[string]bool{}
	for _, f := range fams {
		gathered[f.GetName()] = true
	}
	var missing []string
	for name, where := range used {
		ok := registered(reg, gathered, name)
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, cut := strings.CutSuffix(name, suffix); cut && !ok {
				ok = registered(reg, gathered, base)
			}
		}
		if !ok {
			slices.Sort(where)
			missing = append(missing, name+" (used in "+strings.Join(slices.Compact(where), ", ")+")")
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("%d metric name(s) used by the dashboard or the alert rules are not registered by metrics.New():\n  %s",
			len(missing), strings.Join(missing, "\n  "))
	}
	if len(used) < 10 {
		t.Errorf("found only %d metric names in the dashboard and rules; the extraction is broken", len(used))
	}
}

func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatalf("promtool not found on PATH: run scripts/install-promtool.sh (make deps installs it; Debian package prometheus)")
	}
	return p
}

// TestPromtoolCheckRules: the rule file is valid for Prometheus, and its
// unit tests (an alert fires when it should and not before) pass.
func TestPromtoolCheckRules(t *testing.T) {
	pt := promtool(t)
	if out, err := exec.Command(pt, "check", "rules", rulesFile).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules %s: %v\n%s", rulesFile, err, out)
	}
	cmd := exec.Command(pt, "test", "rules", filepath.Base(rulesTestFile))
	cmd.Dir = filepath.Dir(rulesTestFile)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool test rules %s: %v\n%s", rulesTestFile, err, out)
	}
}

// TestDashboardQueriesParse: every dashboard query is valid PromQL. Grafana's
// variables are replaced by values, the queries written as recording rules
// into a temporary rule file, and promtool checks that file.
func TestDashboardQueriesParse(t *testing.T) {
	pt := promtool(t)
	repl := strings.NewReplacer("$__rate_interval", "5m", "$job", ".*", "$chain", ".*")
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, q := range dashboardQueries(t) {
		if strings.HasPrefix(q, "label_values(") { // Grafana's own function, not PromQL
			q = strings.TrimSuffix(strings.TrimPrefix(q, "label_values("), ")")
			q = q[:strings.LastIndex(q, ",")]
		}
		rules = append(rules, rule{Record: "dashboard:q" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), Expr: repl.Replace(q)})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(pt, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("a dashboard query is not valid PromQL: %v\n%s", err, out)
	}
}

// TestDashboardLayout: the rows the issue asks for are there, and every
// panel has a title, the datasource variable and at least one query.
func TestDashboardLayout(t *testing.T) {
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource *struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	if d.UID == "" {
		t.Error("dashboard has no uid")
	}
	var rows []string
	titles := map[string]bool{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			rows = append(rows, p.Title)
			continue
		}
		if p.Title == "" || titles[p.Type+p.Title] {
			t.Errorf("panel %q: empty or duplicate title", p.Title)
		}
		titles[p.Type+p.Title] = true
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource is not the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 || p.Targets[0].Expr == "" {
			t.Errorf("panel %q: no query", p.Title)
		}
	}
	for _, want := range []string{"Status", "Signatures, misses and refusals", "Latency", "Raft"} {
		if !slices.Contains(rows, want) {
			t.Errorf("dashboard has no row %q (rows: %v)", want, rows)
		}
	}
}
