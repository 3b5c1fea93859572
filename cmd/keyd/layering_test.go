package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDomainImportsNothingOfOurs guards the layering README and DESIGN.md
// promise: domain, the core every other package builds on, depends on no
// other keyd package (not even through a dependency), and imports of
// third-party code only oklog/ulid (ids) and golang.org/x/crypto (what those
// import in turn is their business).
func TestDomainImportsNothingOfOurs(t *testing.T) {
	t.Parallel()
	const (
		module = "github.com/keyd-dev/keyd"
		domain = module + "/domain"
	)
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}|{{.Standard}}|{{join .Imports \" \"}}", domain).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", domain, err, out)
	}
	standard := map[string]bool{}
	var direct []string
	seenDomain := false
	for line := range strings.Lines(strings.TrimSpace(string(out))) {
		f := strings.SplitN(strings.TrimSpace(line), "|", 3)
		if len(f) != 3 {
			t.Fatalf("go list printed %q", line)
		}
		pkg, std, imports := f[0], f[1] == "true", f[2]
		standard[pkg] = std
		switch {
		case pkg == domain:
			seenDomain = true
			direct = strings.Fields(imports)
		case pkg == module || strings.HasPrefix(pkg, module+"/"):
			t.Errorf("domain depends on %s; it must import nothing of ours", pkg)
		}
	}
	if !seenDomain {
		t.Fatalf("go list did not list %s itself:\n%s", domain, out)
	}
	allowed := []string{"github.com/oklog/ulid/", "golang.org/x/crypto/"}
	for _, imp := range direct {
		if standard[imp] || strings.HasPrefix(imp, module+"/") {
			continue // ours was reported above
		}
		ok := false
		for _, a := range allowed {
			ok = ok || strings.HasPrefix(imp+"/", a)
		}
		if !ok {
			t.Errorf("domain imports %s; of third-party code it may import only %v", imp, allowed)
		}
	}
}

// TestTestenvImportsNothingOfOurs: internal/testenv depends on no other keyd
// package, so every package's internal tests may import it without a cycle.
func TestTestenvImportsNothingOfOurs(t *testing.T) {
	t.Parallel()
	const pkg = "github.com/keyd-dev/keyd/internal/testenv"
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", pkg).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
	}
	found := false
	for _, dep := range strings.Fields(string(out)) {
		switch {
		case dep == pkg:
			found = true
		case strings.HasPrefix(dep, "github.com/keyd-dev/keyd/") || dep == "github.com/keyd-dev/keyd":
			t.Errorf("internal/testenv depends on %s; keyd-level helpers belong in internal/testworld", dep)
		}
	}
	if !found {
		t.Fatalf("go list did not list %s itself:\n%s", pkg, out)
	}
}
