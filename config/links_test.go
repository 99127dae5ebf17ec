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
	"unicode"
)

// Guides move between the README and docs/, and a link to a section that
// moved would otherwise go dead without anyone noticing: every relative
// link and anchor of README.md and docs/*.md must name an existing file
// and, for a markdown file, an existing heading.

var (
	// inlineLinkRe matches [text](target) and ![alt](target), with an
	// optional "title".
	inlineLinkRe = regexp.MustCompile(`\]\(\s*<?([^)\s>]*)>?(?:\s+"[^"]*")?\s*\)`)
	// refDefRe matches a reference definition: [label]: target.
	refDefRe    = regexp.MustCompile(`^\s{0,3}\[[^\]]+\]:\s*<?([^\s>]+)>?`)
	headingRe   = regexp.MustCompile(`^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$`)
	codeSpanRe  = regexp.MustCompile("`+[^`]*`+")
	urlSchemeRe = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)
	// headingLinkRe matches a link inside a heading, which renders as its text.
	headingLinkRe = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`)
)

func TestDocsLinksResolve(t *testing.T) {
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"../README.md"}, files...)
	links := 0
	for _, f := range files {
		problems, n := checkLinks(t, f)
		links += n
		for _, p := range problems {
			t.Error(p)
		}
	}
	if links < 20 {
		t.Fatalf("found only %d relative links in README.md and docs/*.md; the extraction is broken", links)
	}
	t.Logf("%d relative links resolve", links)
}

// TestDocsLinksCheckerFails: the checker reports a missing file, a missing
// heading and a heading that only exists inside a code block.
func TestDocsLinksCheckerFails(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("other.md", "# Other\n\n## Reading the cluster's state\n\n```yaml\n# not a heading\n```\n")
	main := write("main.md", strings.Join([]string{
		"# Main",
		"[ok](other.md#reading-the-clusters-state) [ok](#main) [web](https://example.com/x#y)",
		"`[in code](missing.md)`",
		"[gone](missing.md) [no heading](other.md#lost-quorum)",
		"[fenced](other.md#not-a-heading)",
		"[self](#nowhere)",
		"",
		"[ref]: other.md#other",
	}, "\n"))
	problems, n := checkLinks(t, main)
	if n != 7 {
		t.Errorf("counted %d relative links, want 7", n)
	}
	want := []string{"missing.md", "#lost-quorum", "#not-a-heading", "#nowhere"}
	if len(problems) != len(want) {
		t.Fatalf("problems %q, want one for each of %q", problems, want)
	}
	for i, w := range want {
		if !strings.Contains(problems[i], w) {
			t.Errorf("problem %d is %q, want it to name %q", i, problems[i], w)
		}
	}
}

// TestGitHubAnchor pins the slug rules on headings of these docs.
func TestGitHubAnchor(t *testing.T) {
	for heading, want := range map[string]string{
		"Reading the cluster's state":              "reading-the-clusters-state",
		"SignerService (gRPC)":                     "signerservice-grpc",
		"`backend: file`":                          "backend-file",
		"Timeouts: the LAN profile":                "timeouts-the-lan-profile",
		"From a validator's own key file (FilePV)": "from-a-validators-own-key-file-filepv",
		"snake_case and dash-case":                 "snake_case-and-dash-case",
		"Key types × backends":                     "key-types--backends",
		"[Linked](x.md) *heading*":                 "linked-heading",
	} {
		if got := githubAnchor(heading); got != want {
			t.Errorf("githubAnchor(%q) = %q, want %q", heading, got, want)
		}
	}
}

// checkLinks returns a line per relative link of the markdown file at path
// that does not resolve, and how many relative links it checked.
func checkLinks(t *testing.T, path string) (problems []string, links int) {
	t.Helper()
	anchors := map[string]map[string]bool{}
	for _, l := range markdownLinks(t, path) {
		if l.target == "" || urlSchemeRe.MatchString(l.target) {
			continue
		}
		links++
		file, frag, _ := strings.Cut(l.target, "#")
		dest := path
		if file != "" {
			dest = filepath.Join(filepath.Dir(path), filepath.FromSlash(file))
			if _, err := os.Stat(dest); err != nil {
				problems = append(problems, fmt.Sprintf("%s: link to %s: no such file", l.where, l.target))
				continue
			}
		}
		if frag == "" {
			continue
		}
		if !strings.HasSuffix(dest, ".md") {
			problems = append(problems, fmt.Sprintf("%s: link to %s: an anchor into a file that is not markdown", l.where, l.target))
			continue
		}
		if anchors[dest] == nil {
			anchors[dest] = headingAnchors(t, dest)
		}
		if !anchors[dest][frag] {
			problems = append(problems, fmt.Sprintf("%s: link to %s: %s has no heading with anchor #%s",
				l.where, l.target, filepath.Base(dest), frag))
		}
	}
	return problems, links
}

type mdLink struct{ where, target string }

// markdownLinks returns the inline links and reference definitions of a
// markdown file outside fenced code blocks and code spans.
func markdownLinks(t *testing.T, path string) []mdLink {
	t.Helper()
	var links []mdLink
	forEachProseLine(t, path, func(n int, line string) {
		where := fmt.Sprintf("%s:%d", filepath.Base(path), n)
		if m := refDefRe.FindStringSubmatch(line); m != nil {
			links = append(links, mdLink{where, m[1]})
			return
		}
		line = codeSpanRe.ReplaceAllString(line, "")
		for _, m := range inlineLinkRe.FindAllStringSubmatch(line, -1) {
			links = append(links, mdLink{where, m[1]})
		}
	})
	return links
}

// headingAnchors returns the anchors GitHub gives the ATX headings of a
// markdown file: a repeated slug gets -1, -2, ... appended.
func headingAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	anchors := map[string]bool{}
	seen := map[string]int{}
	forEachProseLine(t, path, func(_ int, line string) {
		m := headingRe.FindStringSubmatch(line)
		if m == nil {
			return
		}
		slug := githubAnchor(m[2])
		if k := seen[slug]; k > 0 {
			anchors[fmt.Sprintf("%s-%d", slug, k)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	})
	return anchors
}

// forEachProseLine calls fn with every line of a markdown file that is not
// inside a fenced code block (a "# comment" in a shell or yaml block is no
// heading, and a link in one is no link).
func forEachProseLine(t *testing.T, path string, fn func(n int, line string)) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fence := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimLeft(line, " \t")
		switch {
		case fence == "" && (strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~")):
			fence = trimmed[:3]
		case fence != "" && strings.HasPrefix(trimmed, fence):
			fence = ""
		case fence == "":
			fn(n, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// githubAnchor is GitHub's slug of a heading: the text as rendered (link
// targets and markup dropped), lowercased, every character other than a
// letter, digit, space, '-' or '_' dropped, spaces turned into '-'.
func githubAnchor(heading string) string {
	heading = headingLinkRe.ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}
