package main

import (
	"context"
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
