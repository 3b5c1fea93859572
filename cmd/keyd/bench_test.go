package main

import (
	"bufio"
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/bench"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestBenchQuick runs `keyd bench --quick --json FILE` through Main on tiny
// sizes (every scenario, against real NATS, Postgres and a keyd serve
// process) and checks that each scenario wrote one JSON line with the
// contract's fields, that the table lists them, and that the run left no
// database and no temporary directory behind. It keeps the benchmarks
// from rotting; the figures themselves are not checked.
//
// It stays serial: it sets TMPDIR (t.Setenv) and the package's bench hooks,
// which the parallel tests' processes would otherwise see.
func TestBenchQuick(t *testing.T) {
	benchExecutable = mustBuild(t) // a test binary cannot be run as keyd serve
	benchTweak = func(o *bench.Options) {
		o.Keys = 2000
		o.VerifyGoroutines = 8
		o.VerifyDuration = 250 * time.Millisecond
		o.HTTPConns = 4
		o.HTTPDuration = 300 * time.Millisecond
		o.HTTPWarmup = 50 * time.Millisecond
		o.Verifiers = 3
		o.Revocations = 5
		o.CommandClients = 4
		o.CommandDuration = 300 * time.Millisecond
		o.CatchUpEvents = 200
		o.BootRuns = 1
		o.LatencySaturation = 200 * time.Millisecond
		o.LatencyDuration = 300 * time.Millisecond
		o.ScaleSizes = []int{500, 1000}
		o.ScaleVerifyDuration = 150 * time.Millisecond
	}
	t.Cleanup(func() { benchExecutable, benchTweak = "", nil })
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the run keeps the NATS data
	admin := testenv.PostgresAdminURL(t)
	out := filepath.Join(tmp, "results", "bench.jsonl")

	stdout, stderr := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	m := NewMain(stdout, stderr, func(k string) string {
		if k == "KEYD_DATABASE_URL" {
			return admin
		}
		return ""
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	if err := m.Run(ctx, []string{"bench", "--quick", "--json", out}); err != nil {
		t.Fatalf("keyd bench: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	t.Logf("keyd bench --quick on tiny sizes took %s:\n%s", time.Since(start).Round(time.Millisecond), stdout)

	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var line struct {
			Name     *string  `json:"name"`
			Value    *float64 `json:"value"`
			Unit     *string  `json:"unit"`
			Baseline *struct {
				Name  *string  `json:"name"`
				Value *float64 `json:"value"`
			} `json:"baseline"`
			Ratio  *float64       `json:"ratio"`
			Better *string        `json:"better"`
			Params map[string]any `json:"params"`
		}
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if line.Name == nil || line.Value == nil || line.Unit == nil || line.Baseline == nil || line.Baseline.Name == nil ||
			line.Baseline.Value == nil || line.Ratio == nil || line.Better == nil || line.Params == nil {
			t.Fatalf("line %q lacks a field", sc.Text())
		}
		name := *line.Name
		if seen[name] {
			t.Errorf("scenario %s reported twice", name)
		}
		seen[name] = true
		if *line.Value <= 0 || *line.Baseline.Value <= 0 || *line.Unit == "" || *line.Baseline.Name == "" {
			t.Errorf("%s: value %v %q, baseline %q %v: want positive figures with names", name, *line.Value, *line.Unit, *line.Baseline.Name, *line.Baseline.Value)
		}
		if want := *line.Value / *line.Baseline.Value; math.Abs(*line.Ratio-want) > 0.01*want+0.001 {
			t.Errorf("%s: ratio %v, want value/baseline = %v", name, *line.Ratio, want)
		}
		if *line.Better != "lower" && *line.Better != "higher" {
			t.Errorf("%s: better is %q, want lower or higher", name, *line.Better)
		}
		for _, p := range []string{"goal", "goal_met"} {
			if _, ok := line.Params[p]; !ok {
				t.Errorf("%s: params lack %q", name, p)
			}
		}
		if !strings.Contains(stdout.String(), name) {
			t.Errorf("the table does not list %s", name)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, n := range bench.Names() {
		if !seen[n] {
			t.Errorf("no JSON line for scenario %s", n)
		}
	}
	if len(seen) != len(bench.Names()) {
		t.Errorf("%d JSON lines, want %d (one per scenario)", len(seen), len(bench.Names()))
	}

	// Nothing left behind: the database and the temporary directory.
	db := regexp.MustCompile(`keyd_bench_[0-9a-f]+`).FindString(stderr.String())
	if db == "" {
		t.Fatalf("the progress output names no keyd_bench_ database:\n%s", stderr)
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, db).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("database %s still exists after the run", db)
	}
	left, _ := filepath.Glob(filepath.Join(tmp, "keyd-bench-*"))
	if len(left) > 0 {
		t.Errorf("temporary directories left behind: %v", left)
	}
}

// TestBenchHelp: `keyd bench --help` exits 0 (scripts/test.sh runs the
// quick benchmark when it does) and lists every scenario.
func TestBenchHelp(t *testing.T) {
	t.Parallel()
	stdout, stderr := &testenv.SyncBuffer{}, &testenv.SyncBuffer{}
	m := NewMain(stdout, stderr, func(string) string { return "" })
	if err := m.Run(context.Background(), []string{"bench", "--help"}); err != nil {
		t.Fatalf("keyd bench --help: %v", err)
	}
	for _, want := range append(bench.Names(), "--quick", "--json", "--only", "--cpuprofile") {
		if !strings.Contains(stderr.String()+stdout.String(), strings.TrimLeft(want, "-")) {
			t.Errorf("the help does not mention %s:\n%s", want, stderr)
		}
	}
	err := m.Run(context.Background(), []string{"bench", "--only", "no_such_scenario", "--database-url", "postgres://127.0.0.1:1/x"})
	if err == nil || !strings.Contains(err.Error(), "no_such_scenario") {
		t.Errorf("keyd bench --only no_such_scenario: %v, want an error naming it", err)
	}
}
