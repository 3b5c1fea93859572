// Package bench is keyd's benchmark suite (keyd bench): each scenario
// measures one thing keyd promises, and, in the same process and on the same
// data, a baseline that bounds it: the floor underneath (what the
// machinery keyd is built on does without keyd), or the do-it-yourself
// alternative.
//
// Scenarios:
//
//	verify_inprocess        ns per Verifier.Verify on random keys; floor: keyed digest plus one Go map lookup
//	verify_http             POST /v1/keys/verify requests/s; floor: a fixed reply on the same HTTP stack; also a Postgres lookup per request
//	verify_latency          p50/p99/p99.9 of POST /v1/keys/verify at 25/50/90% of the fixed reply's saturation rate (open loop); floor: the fixed reply at the same rates
//	revocation_propagation  revoke command sent → 8 verifiers (one in a keyd serve process) reject the key; floor: a JetStream publish reaching 8 ordered consumers
//	command_throughput      key creations/s over NATS from 32 clients; floor: raw JetStream publishes with the same expected-sequence header
//	projection_catchup      events/s projected into empty read models; floor: the same final rows upserted straight into Postgres
//	projection_burst        lag of the read models behind a sustained burst of creations (2,000/s); floor: an ordered consumer following the same burst
//	verifier_boot           seconds (and heap bytes per key) to boot a verifier from the Postgres snapshot; floor: reading the same rows into nothing
//	verify_scale            boot time, heap bytes per key and Verify ns at 10,000 to 10,000,000 keys; floors: the raw read, digest + map lookup
//
// Everything runs against real servers: an embedded NATS JetStream server
// per scenario (storing in a temporary directory) and a fresh Postgres
// database created for the run and dropped at its end. The caller (keyd
// bench in cmd/keyd) supplies what only the keyd binary knows how to start,
// through Env.
package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/verifier"
)

// Options sizes a run. Build it with QuickOptions or FullOptions, then adjust.
type Options struct {
	Quick bool
	// Only, if not empty, names the scenarios to run.
	Only []string

	// Keys is the number of keys of verify_inprocess, verify_http and
	// verifier_boot.
	Keys int
	// VerifyGoroutines verify at once in verify_inprocess, for
	// VerifyDuration per measurement.
	VerifyGoroutines int
	VerifyDuration   time.Duration
	// HTTPConns keep-alive connections send requests for HTTPDuration per
	// target, after HTTPWarmup.
	HTTPConns    int
	HTTPDuration time.Duration
	HTTPWarmup   time.Duration
	// Verifiers watch each of Revocations revocations (one of them in a
	// keyd serve process).
	Verifiers   int
	Revocations int
	// CommandClients send commands for CommandDuration per side.
	CommandClients  int
	CommandDuration time.Duration
	// CatchUpEvents is the length of the stream projection_catchup replays.
	CatchUpEvents int
	// BurstRate is the creations/s projection_burst appends, for
	// BurstDuration.
	BurstRate     int
	BurstDuration time.Duration
	// BootRuns is how often verifier_boot boots (and reads), best taken.
	BootRuns int
	// LatencySaturation is how long verify_latency loads the fixed reply
	// to find its saturation rate; LatencyDuration how long it sends at
	// each rate, per target.
	LatencySaturation time.Duration
	LatencyDuration   time.Duration
	// ScaleSizes are the key counts of verify_scale, ascending;
	// ScaleVerifyDuration is how long it times Verify (and the floor) at
	// each.
	ScaleSizes          []int
	ScaleVerifyDuration time.Duration
}

// ScaleMax is the largest size of verify_scale, added by keyd bench
// --scale-max (10,000,000 keys take minutes to write into Postgres and
// about 4 GiB of memory).
const ScaleMax = 10_000_000

// FullOptions is the full run (several minutes on 2 cores).
func FullOptions() Options {
	return Options{
		Keys:             1_000_000,
		VerifyGoroutines: 64,
		VerifyDuration:   5 * time.Second,
		HTTPConns:        32,
		HTTPDuration:     10 * time.Second,
		HTTPWarmup:       time.Second,
		Verifiers:        8,
		Revocations:      500,
		CommandClients:   32,
		CommandDuration:  10 * time.Second,
		CatchUpEvents:    100_000,
		BurstRate:        2000,
		BurstDuration:    10 * time.Second,
		BootRuns:         3,

		LatencySaturation:   3 * time.Second,
		LatencyDuration:     6 * time.Second,
		ScaleSizes:          []int{10_000, 1_000_000},
		ScaleVerifyDuration: 3 * time.Second,
	}
}

// QuickOptions is the quick run: every scenario, smaller, within a minute
// on 2 cores.
func QuickOptions() Options {
	return Options{
		Quick:            true,
		Keys:             100_000,
		VerifyGoroutines: 64,
		VerifyDuration:   1500 * time.Millisecond,
		HTTPConns:        32,
		HTTPDuration:     2 * time.Second,
		HTTPWarmup:       300 * time.Millisecond,
		Verifiers:        8,
		Revocations:      100,
		CommandClients:   32,
		CommandDuration:  2 * time.Second,
		CatchUpEvents:    10_000,
		BurstRate:        2000,
		BurstDuration:    3 * time.Second,
		BootRuns:         2,

		LatencySaturation:   500 * time.Millisecond,
		LatencyDuration:     time.Second,
		ScaleSizes:          []int{10_000, 100_000},
		ScaleVerifyDuration: 600 * time.Millisecond,
	}
}

// Env is what the caller provides: how to start an embedded NATS server
// and an in-process keyd the way keyd dev does, the keyd binary, and the
// Postgres server.
type Env struct {
	// DatabaseURL is a Postgres URL whose user may create databases; the
	// run creates keyd_bench_<random> on that server and drops it at the end.
	DatabaseURL string
	// StartNATS starts an embedded JetStream server storing under dir, on
	// a free loopback port.
	StartNATS func(dir string) (*server.Server, error)
	// StartKeyd starts an in-process keyd (command responder, projector,
	// verifier, HTTP) on ns and the database.
	StartKeyd func(ctx context.Context, c KeydConfig) (*Keyd, error)
	// Executable is the keyd binary, run as `keyd serve` for the verifier
	// in another OS process.
	Executable string
	// Progress receives the progress line (stderr).
	Progress io.Writer
	// Log receives the components' logs (nil: discarded).
	Log *slog.Logger
}

// KeydConfig is what StartKeyd needs.
type KeydConfig struct {
	NATS        *server.Server
	DatabaseURL string
	AdminToken  string
	Secret      string
}

// Keyd is a running in-process keyd.
type Keyd struct {
	// NC is its NATS connection (in-process).
	NC *nats.Conn
	// Verifier is its in-memory verifier.
	Verifier *verifier.Verifier
	// HTTPAddr is where its HTTP API listens.
	HTTPAddr string
	// Close stops it.
	Close func()
}

// Result is one scenario's figure, its baseline, and how they compare; it
// is one line of the JSON Lines output.
type Result struct {
	Name     string   `json:"name"`
	Value    float64  `json:"value"`
	Unit     string   `json:"unit"`
	Baseline Baseline `json:"baseline"`
	// Ratio is Value / Baseline.Value.
	Ratio float64 `json:"ratio"`
	// Better says which way Value (and so Ratio) is better: "lower" or
	// "higher".
	Better string         `json:"better"`
	Params map[string]any `json:"params"`

	// Goal is the target, in words ("ratio ≤ 1.5"); Met whether the run
	// reached it. Both are also in Params.
	Goal string `json:"-"`
	Met  bool   `json:"-"`
}

// Baseline is what a scenario's figure is compared with.
type Baseline struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
}

// scenario is one benchmark.
type scenario struct {
	name string
	what string
	run  func(ctx context.Context, r *runner) (Result, error)
}

// scenarios in the order they are reported.
var scenarios = []scenario{
	{"verify_inprocess", "ns per in-process Verify, random keys", runVerifyInProcess},
	{"verify_inprocess_roles", "ns per in-process Verify, keys with 3 roles and 5 resources", runVerifyRoles},
	{"verify_http", "POST /v1/keys/verify requests/s", runVerifyHTTP},
	{"verify_latency", "POST /v1/keys/verify latency at fixed rates (open loop)", runVerifyLatency},
	{"revocation_propagation", "revoke sent → every verifier rejects the key", runRevocation},
	{"role_propagation", "role redefined → every verifier gives the new verdict", runRolePropagation},
	{"command_throughput", "key creations/s over NATS", runCommandThroughput},
	{"projection_catchup", "events/s projected into empty read models", runCatchUp},
	{"projection_burst", "lag of the read models behind a sustained burst of creations", runBurst},
	{"verifier_boot", "seconds to boot a verifier from the Postgres snapshot", runVerifierBoot},
	{"verify_scale", "boot, bytes per key and Verify ns at growing key counts", runVerifyScale},
}

// runOrder runs the scenarios that share the verification snapshot one
// after the other, so it is loaded once.
var runOrder = []string{"verify_inprocess", "verify_inprocess_roles", "verify_http", "verify_latency", "verifier_boot",
	"revocation_propagation", "role_propagation", "command_throughput", "projection_catchup", "projection_burst", "verify_scale"}

// Names returns the scenario names, in report order.
func Names() []string {
	var out []string
	for _, s := range scenarios {
		out = append(out, s.name)
	}
	return out
}

// Describe writes one line per scenario: its name and what it measures.
func Describe(w io.Writer) {
	for _, s := range scenarios {
		fmt.Fprintf(w, "  %-24s %s\n", s.name, s.what)
	}
}

// Run runs the scenarios opts selects and returns their results in report
// order. After a scenario fails, Run goes on with the next and returns the
// results it has with an error naming every failure. onResult, if set, is
// called after each scenario (for output as the run goes).
func Run(ctx context.Context, env Env, opts Options, onResult func(Result)) ([]Result, error) {
	for _, n := range opts.Only {
		if !slices.Contains(Names(), n) {
			return nil, fmt.Errorf("unknown scenario %q; the scenarios are %s", n, strings.Join(Names(), ", "))
		}
	}
	want := func(n string) bool { return len(opts.Only) == 0 || slices.Contains(opts.Only, n) }
	if env.Log == nil {
		env.Log = slog.New(slog.DiscardHandler)
	}
	p := newProgress(env.Progress)
	defer p.clear()

	tmp, err := os.MkdirTemp("", "keyd-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	p.phase("creating a fresh Postgres database")
	db, err := createDatabase(ctx, env.DatabaseURL)
	if err != nil {
		return nil, err
	}
	defer db.drop()
	p.phase("using database " + db.name + " (dropped at the end)")

	r := &runner{env: env, opts: opts, tmp: tmp, db: db, progress: p, log: env.Log}
	r.init()
	defer r.closeKeys()
	results := map[string]Result{}
	var errs []error
	total := 0
	for _, n := range runOrder {
		if want(n) {
			total++
		}
	}
	i := 0
	for _, n := range runOrder {
		if !want(n) {
			continue
		}
		i++
		if ctx.Err() != nil {
			break
		}
		s := scenarioNamed(n)
		r.prefix = fmt.Sprintf("[%d/%d] %s", i, total, n)
		p.phase(r.prefix)
		start := time.Now()
		res, err := s.run(ctx, r)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n, err))
			p.phase(fmt.Sprintf("%s failed: %v", r.prefix, err))
			continue
		}
		res.finish()
		res.Params["seconds_taken"] = round(time.Since(start).Seconds(), 1)
		results[n] = res
		if onResult != nil {
			p.clear()
			onResult(res)
		}
	}
	if err := ctx.Err(); err != nil {
		errs = []error{fmt.Errorf("interrupted: %w", err)}
	}
	var out []Result
	for _, s := range scenarios {
		if res, ok := results[s.name]; ok {
			out = append(out, res)
		}
	}
	return out, errors.Join(errs...)
}

func scenarioNamed(n string) scenario {
	for _, s := range scenarios {
		if s.name == n {
			return s
		}
	}
	panic("bench: no scenario " + n)
}

// finish computes the ratio and records the goal in the params.
func (res *Result) finish() {
	if res.Baseline.Value != 0 {
		res.Ratio = round(res.Value/res.Baseline.Value, 3)
	}
	if res.Params == nil {
		res.Params = map[string]any{}
	}
	res.Params["goal"] = res.Goal
	res.Params["goal_met"] = res.Met
	res.Params["gomaxprocs"] = runtime.GOMAXPROCS(0)
}

// WriteJSONLines writes one JSON object per result, one per line.
func WriteJSONLines(w io.Writer, results []Result) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	for _, r := range results {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSONFile writes the results as JSON Lines to path.
func WriteJSONFile(path string, results []Result) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := WriteJSONLines(f, results); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// WriteTable writes the results as a table: scenario, value, baseline,
// ratio (with the better direction), goal and whether it was met.
func WriteTable(w io.Writer, results []Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tVALUE\tBASELINE\tRATIO\tGOAL\tMET")
	for _, r := range results {
		met := "no"
		if r.Met {
			met = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s %s\t%s: %s\t%.2fx (%s is better)\t%s\t%s\n",
			r.Name, human(r.Value), r.Unit, r.Baseline.Name, human(r.Baseline.Value), r.Ratio, r.Better, r.Goal, met)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range results {
		if d := detail(r); d != "" {
			fmt.Fprintf(w, "  %s: %s\n", r.Name, d)
		}
	}
	return nil
}

// detail is the second line of a result: the figures behind it.
func detail(r Result) string {
	p := r.Params
	switch r.Name {
	case "verify_inprocess":
		return fmt.Sprintf("%v keys, %v goroutines; 1,000 hot keys: %v ns (floor %v ns)",
			p["keys"], p["goroutines"], p["hot_ns"], p["hot_floor_ns"])
	case "verify_http":
		return fmt.Sprintf("%v conns; verify p50/p99 %v/%v ms; without last-use writes %v req/s (%vx); fixed reply %v req/s p50/p99 %v/%v ms; Postgres lookup %v req/s p50/p99 %v/%v ms (verify is %vx it)",
			p["conns"], p["verify_p50_ms"], p["verify_p99_ms"], human(num(p["no_last_use_rps"])), p["no_last_use_ratio"], human(num(p["trivial_rps"])), p["trivial_p50_ms"], p["trivial_p99_ms"],
			human(num(p["postgres_rps"])), p["postgres_p50_ms"], p["postgres_p99_ms"], p["postgres_ratio"])
	case "revocation_propagation":
		return fmt.Sprintf("%v revocations x %v verifiers: p50 %v ms, p99 %v ms, max %v ms (remote keyd serve p99 %v ms); floor p50 %v ms, p99 %v ms, max %v ms; revoke reply p50 %v ms",
			p["revocations"], p["verifiers"], p["p50_ms"], p["p99_ms"], p["max_ms"], p["remote_p99_ms"],
			p["floor_p50_ms"], p["floor_p99_ms"], p["floor_max_ms"], p["reply_p50_ms"])
	case "command_throughput":
		return fmt.Sprintf("%v clients; create p50/p99 %v/%v ms; raw publish p50/p99 %v/%v ms",
			p["clients"], p["p50_ms"], p["p99_ms"], p["floor_p50_ms"], p["floor_p99_ms"])
	case "projection_catchup":
		return fmt.Sprintf("%v events (%v keys created, then revoked): projector %v s, raw upserts %v s",
			p["events"], p["keys"], p["seconds"], p["floor_seconds"])
	case "projection_burst":
		return burstDetail(p)
	case "verify_latency":
		out := fmt.Sprintf("fixed reply saturates at %v req/s;", human(num(p["saturation_rps"])))
		for _, load := range latencyLoads {
			pct := fmt.Sprintf("%.0f", 100*load)
			out += fmt.Sprintf(" at %s%% (%v req/s) keyd p50/p99/p99.9 %v/%v/%v ms, fixed %v/%v/%v ms;", pct, human(num(p["rate_"+pct+"_rps"])),
				p["keyd_"+pct+"_p50_ms"], p["keyd_"+pct+"_p99_ms"], p["keyd_"+pct+"_p999_ms"], p["fixed_"+pct+"_p50_ms"], p["fixed_"+pct+"_p99_ms"], p["fixed_"+pct+"_p999_ms"])
		}
		return strings.TrimSuffix(out, ";")
	case "verify_scale":
		out := ""
		sizes, _ := p["sizes"].([]int)
		for _, n := range sizes {
			k := fmt.Sprintf("%d_", n)
			out += fmt.Sprintf("%s keys: boot %v s (raw %v s, %vx), %v bytes/key, Verify %v ns (floor %v ns, %vx); ", thousands(int64(n)),
				p[k+"boot_s"], p[k+"raw_read_s"], p[k+"boot_ratio"], p[k+"bytes_per_key"], p[k+"verify_ns"], p[k+"floor_ns"], p[k+"verify_ratio"])
		}
		return strings.TrimSuffix(out, "; ")
	case "verifier_boot":
		return fmt.Sprintf("%v keys: %v heap bytes per key (goal < 300), %v keys/s; raw read %v s",
			p["keys"], p["bytes_per_key"], human(num(p["keys_per_sec"])), p["floor_seconds"])
	}
	return rolesDetail(r)
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

// human formats a figure with 3 or 4 significant digits and thousands
// separators.
func human(v float64) string {
	switch a := math.Abs(v); {
	case a >= 1000:
		return thousands(int64(math.Round(v)))
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func thousands(n int64) string {
	s := fmt.Sprint(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

// round rounds v to digits decimals.
func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}
