package bench

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// The scenarios themselves run in cmd/keyd's TestBenchQuick, against real
// servers; these are the pieces that need none.

func TestBenchPercentiles(t *testing.T) {
	var l latencies
	for i := 100; i >= 1; i-- {
		l = append(l, time.Duration(i)*time.Millisecond)
	}
	s := l.sorted()
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.50, 50 * time.Millisecond}, {0.99, 99 * time.Millisecond}, {1, 100 * time.Millisecond}, {0.001, time.Millisecond}} {
		if got := s.pct(c.q); got != c.want {
			t.Errorf("pct(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if s.max() != 100*time.Millisecond || l[0] != 100*time.Millisecond {
		t.Errorf("max %v; sorted must not change the sample", s.max())
	}
	if (latencies{}).pct(0.99) != 0 || (latencies{7}).pct(0.99) != 7 {
		t.Error("pct of an empty or one-element sample")
	}
	if got := ms(1234567 * time.Nanosecond); got != 1.235 {
		t.Errorf("ms = %v, want 1.235", got)
	}
}

func TestBenchResultJSONAndTable(t *testing.T) {
	r := Result{Name: "verify_inprocess", Value: 900, Unit: "ns/op", Baseline: Baseline{Name: "floor", Value: 300},
		Better: "lower", Goal: "ratio ≤ 1.5", Params: map[string]any{"keys": 10}}
	r.finish()
	if r.Ratio != 3 || r.Params["goal"] != "ratio ≤ 1.5" || r.Params["goal_met"] != false {
		t.Fatalf("finish: %+v", r)
	}
	var buf bytes.Buffer
	if err := WriteJSONLines(&buf, []Result{r, r}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d lines, want 2", len(lines))
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "value", "unit", "baseline", "ratio", "better", "params"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON lacks %q: %s", k, lines[0])
		}
	}
	if len(m) != 7 {
		t.Errorf("JSON has %d members, want 7: %s", len(m), lines[0])
	}
	buf.Reset()
	if err := WriteTable(&buf, []Result{r}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SCENARIO", "verify_inprocess", "900 ns/op", "floor: 300", "3.00x (lower is better)", "ratio ≤ 1.5"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the table lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestBenchHuman(t *testing.T) {
	for v, want := range map[float64]string{1234567: "1,234,567", 512: "512", 12.34: "12.3", 1.234: "1.23", 0.01234: "0.0123", -4321: "-4,321"} {
		if got := human(v); got != want {
			t.Errorf("human(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestBenchWithDatabase(t *testing.T) {
	for in, want := range map[string]string{
		"postgres://u:p@h:5432/keyd?sslmode=disable": "postgres://u:p@h:5432/keyd_bench_x?sslmode=disable",
		"postgresql://h/":           "postgresql://h/keyd_bench_x",
		"host=h user=u dbname=keyd": "host=h user=u dbname=keyd dbname=keyd_bench_x",
	} {
		got, err := withDatabase(in, "keyd_bench_x")
		if err != nil || got != want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestBenchUnknownScenario(t *testing.T) {
	_, err := Run(t.Context(), Env{}, Options{Only: []string{"verify_inprocess", "nope"}}, nil)
	if err == nil || !strings.Contains(err.Error(), `"nope"`) {
		t.Fatalf("Run with an unknown scenario: %v", err)
	}
}
