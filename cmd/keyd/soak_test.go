package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestBenchSoak runs `keyd bench --soak 3s --soak-every 1s` through Main
// and checks that it printed a header and a line of figures per second,
// every operation measured and none failing.
func TestBenchSoak(t *testing.T) {
	admin := testenv.PostgresAdminURL(t)
	stdout, stderr := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	m := NewMain(stdout, stderr, func(k string) string {
		if k == "KEYD_DATABASE_URL" {
			return admin
		}
		return ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Run(ctx, []string{"bench", "--soak", "3s", "--soak-every", "1s"}); err != nil {
		t.Fatalf("keyd bench --soak: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	t.Logf("\n%s", stdout)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) < 4 || !strings.Contains(lines[1], "rss_MB") {
		t.Fatalf("want a title, a header and ≥ 2 lines of figures:\n%s", stdout)
	}
	last := lines[len(lines)-1]
	if strings.Contains(last, "errors") || strings.Contains(last, " 0/0.00/0.00") {
		t.Errorf("the last interval has an operation that failed or did not run: %s", last)
	}
}

// TestBenchSoakFixedKeys runs `keyd bench --soak 3s --soak-every 1s
// --soak-keys 50` and checks that it created the 50 keys first, then
// measured updates (no creates or revokes) with the keys column staying
// at 50, every operation measured and none failing.
func TestBenchSoakFixedKeys(t *testing.T) {
	admin := testenv.PostgresAdminURL(t)
	stdout, stderr := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	m := NewMain(stdout, stderr, func(k string) string {
		if k == "KEYD_DATABASE_URL" {
			return admin
		}
		return ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := m.Run(ctx, []string{"bench", "--soak", "3s", "--soak-every", "1s", "--soak-keys", "50"}); err != nil {
		t.Fatalf("keyd bench --soak --soak-keys: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	t.Logf("\n%s", stdout)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) < 4 || !strings.Contains(lines[0], "50 keys created") {
		t.Fatalf("want a title saying the 50 keys were created, a header and ≥ 2 lines of figures:\n%s", stdout)
	}
	header := lines[1]
	if !strings.Contains(header, "update n/p50/p99") || strings.Contains(header, "create") || strings.Contains(header, "revoke") {
		t.Errorf("want update (and no create or revoke) columns: %s", header)
	}
	for _, l := range lines[2:] {
		if f := strings.Fields(l); len(f) < 9 || f[8] != "50" {
			t.Errorf("the keys column should stay at 50: %s", l)
		}
	}
	last := lines[len(lines)-1]
	if strings.Contains(last, "errors") || strings.Contains(last, " 0/0.00/0.00") {
		t.Errorf("the last interval has an operation that failed or did not run: %s", last)
	}
}

// TestBenchSoakHeapProfile runs `keyd bench --soak 2s --soak-every 1s
// --soak-keys 20 --soak-heapprofile DIR/heap` and checks that it wrote a
// non-empty heap profile per line of figures, DIR/heap-1.pprof and
// DIR/heap-2.pprof.
func TestBenchSoakHeapProfile(t *testing.T) {
	admin := testenv.PostgresAdminURL(t)
	stdout, stderr := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	m := NewMain(stdout, stderr, func(k string) string {
		if k == "KEYD_DATABASE_URL" {
			return admin
		}
		return ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	prefix := filepath.Join(t.TempDir(), "heap")
	if err := m.Run(ctx, []string{"bench", "--soak", "2s", "--soak-every", "1s", "--soak-keys", "20", "--soak-heapprofile", prefix}); err != nil {
		t.Fatalf("keyd bench --soak --soak-heapprofile: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	for _, n := range []string{"1", "2"} {
		fi, err := os.Stat(prefix + "-" + n + ".pprof")
		if err != nil {
			t.Errorf("heap profile %s: %v", n, err)
		} else if fi.Size() == 0 {
			t.Errorf("heap profile %s is empty", n)
		}
	}
}
