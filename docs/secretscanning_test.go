// Package docs holds keyd's documents and the tests that keep what they
// show working.
package docs

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// gitleaksModule is the gitleaks the test runs, pinned; it is built from
// the Go module proxy into a temporary directory (the build cache makes
// later runs quick).
const gitleaksModule = "github.com/zricethezav/gitleaks/v8@v8.30.1"

// fence returns the body of the first fenced block of lang in doc that
// comes after the line containing after.
func fence(t *testing.T, doc, after, lang string) string {
	t.Helper()
	i := strings.Index(doc, after)
	if i < 0 {
		t.Fatalf("secret-scanning.md has no %q", after)
	}
	rest := doc[i:]
	open := "```" + lang + "\n"
	j := strings.Index(rest, open)
	if j < 0 {
		t.Fatalf("secret-scanning.md has no ```%s block after %q", lang, after)
	}
	body := rest[j+len(open):]
	k := strings.Index(body, "```")
	if k < 0 {
		t.Fatalf("unterminated ```%s block after %q", lang, after)
	}
	return body[:k]
}

func readDoc(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("secret-scanning.md")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// samples returns a real keyd key (default prefix) and near misses: strings
// of nearly the shape that are not keys.
func samples(t *testing.T) (key string, misses map[string]string) {
	t.Helper()
	key, err := domain.NewSecret(domain.DefaultPrefix, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	other, err := domain.NewSecret("pk", rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tail := key[len("sk_"):]
	misses = map[string]string{
		"one character short":  "sk_" + tail[:48],
		"one character long":   key + "Q",
		"another prefix":       other,
		"a dash for the _":     "sk-" + tail,
		"inside a longer word": "xsk_" + tail[1:] + "A",
		"a placeholder":        "sk_" + strings.Repeat("x", 49),
	}
	return key, misses
}

// TestKeyRegexp checks the documented regular expression against keys keyd
// makes and against the near misses.
func TestKeyRegexp(t *testing.T) {
	doc := readDoc(t)
	re := regexp.MustCompile(strings.TrimSpace(fence(t, doc, "The regular\nexpression", "")))
	for range 500 {
		k, err := domain.NewSecret(domain.DefaultPrefix, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if got := re.FindString("x " + k + " y"); got != k {
			t.Fatalf("the documented expression finds %q in a line holding %q", got, k)
		}
	}
	_, misses := samples(t)
	for what, s := range misses {
		if what == "a placeholder" {
			continue // the shape is right; gitleaks' entropy threshold drops it
		}
		if m := re.FindString(s); m != "" {
			t.Errorf("the documented expression matches %s: %q", what, s)
		}
	}
}

// TestGitleaksFindsExactlyTheKey runs the real gitleaks with the
// documented rule over a file holding one keyd key and the near misses,
// and checks it reports the key and nothing else.
func TestGitleaksFindsExactlyTheKey(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("building gitleaks needs the go command: %v", err)
	}
	bin := t.TempDir()
	install := exec.Command(goBin, "install", gitleaksModule)
	install.Env = append(os.Environ(), "GOBIN="+bin, "GOFLAGS=")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("go install %s: %v\n%s", gitleaksModule, err, out)
	}
	gitleaks := filepath.Join(bin, "gitleaks")

	doc := readDoc(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "gitleaks.toml")
	if err := os.WriteFile(cfg, []byte(fence(t, doc, "## A gitleaks rule", "toml")), 0o644); err != nil {
		t.Fatal(err)
	}
	key, misses := samples(t)
	var b strings.Builder
	b.WriteString("# deployment notes\n")
	b.WriteString("exporter uses " + key + " for now\n")
	for what, s := range misses {
		b.WriteString(what + ": " + s + "\n")
	}
	scanned := filepath.Join(dir, "scan")
	if err := os.Mkdir(scanned, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(scanned, "notes.txt"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	report := filepath.Join(dir, "report.json")
	cmd := exec.Command(gitleaks, "dir", "--config", cfg, "--no-banner", "--exit-code", "0",
		"--report-format", "json", "--report-path", report, scanned)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gitleaks: %v\n%s", err, out)
	}
	raw, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var findings []struct {
		RuleID    string
		Secret    string
		Match     string
		StartLine int
	}
	if err := json.Unmarshal(raw, &findings); err != nil {
		t.Fatalf("gitleaks report: %v\n%s", err, raw)
	}
	if len(findings) != 1 || findings[0].RuleID != "keyd-api-key" || findings[0].Secret != key || findings[0].StartLine != 2 {
		var got []string
		for _, f := range findings {
			got = append(got, fmt.Sprintf("%s line %d: %s", f.RuleID, f.StartLine, f.Match))
		}
		t.Fatalf("gitleaks found %d: %q; want exactly the key on line 2 (%s…) by rule keyd-api-key\nscanned:\n%s", len(findings), got, key[:8], b.String())
	}
}
