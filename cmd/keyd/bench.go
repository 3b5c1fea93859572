package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/bench"
)

// Test knobs: benchTweak adjusts the sizes (tests make them tiny), and
// benchExecutable replaces os.Executable() as the keyd binary run as
// `keyd serve` (a test binary is not keyd).
var (
	benchTweak      func(*bench.Options)
	benchExecutable string
)

// runBench runs the benchmark scenarios with their baselines and prints a
// table (and, with --json, writes JSON Lines).
func (m *Main) runBench(ctx context.Context, args []string) error {
	var c Config
	fs := newFlagSet("bench", &c, "database-url", "log-level")
	quick := fs.Bool("quick", false, "small sizes: every scenario, within a minute on 2 cores")
	jsonPath := fs.String("json", "", "also write the results to this file, one JSON object per scenario (JSON Lines)")
	only := fs.String("only", "", "run only these scenarios (comma-separated names)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file (go tool pprof)")
	scaleMax := fs.Bool("scale-max", false, fmt.Sprintf("verify_scale also at %s keys (minutes to write into Postgres, about 4 GiB of memory)", "10,000,000"))
	soak := fs.Duration("soak", 0, "instead of the scenarios, run a steady mixed load (creates, revokes, verifies, lists) for this long, printing memory, goroutines, fds, connections and latencies per --soak-every")
	soakEvery := fs.Duration("soak-every", time.Minute, "with --soak: how often to print a line of figures")
	soakKeys := fs.Int("soak-keys", 0, "with --soak: first create this many keys, then keep the key set fixed (updates in place of creates and revokes), so that memory should stay flat; 0 lets the key set grow")
	soakHeap := fs.String("soak-heapprofile", "", "with --soak: after each --soak-every line, write the heap profile (after a forced GC) to PREFIX-<line number>.pprof, for go tool pprof -diff_base")
	// The components' info logs would drown the progress line.
	c.LogLevel, fs.Lookup("log-level").DefValue = "warn", "warn"
	fs.SetOutput(m.Stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: keyd bench [--quick] [--json FILE] [--only NAME[,NAME]] [--cpuprofile FILE] [--scale-max]
       keyd bench --soak DURATION [--soak-every DURATION] [--soak-keys N] [--soak-heapprofile PREFIX]

Runs keyd's benchmark scenarios, each beside a baseline measured in the same
process on the same data, and prints a table (progress goes to stderr).
It starts what it needs: an embedded NATS server per scenario (data in a
temporary directory, removed at the end), an in-process keyd, a keyd serve
process, and a fresh Postgres database keyd_bench_<random> on the server of
KEYD_DATABASE_URL, dropped at the end (your data is never touched).

Scenarios:
`)
		bench.Describe(fs.Output())
		fmt.Fprint(fs.Output(), "\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	opts := bench.FullOptions()
	if *quick {
		opts = bench.QuickOptions()
	}
	if *only != "" {
		for n := range strings.SplitSeq(*only, ",") {
			if n = strings.TrimSpace(n); n != "" {
				opts.Only = append(opts.Only, n)
			}
		}
	}
	if *scaleMax {
		opts.ScaleSizes = append(opts.ScaleSizes, bench.ScaleMax)
	}
	if benchTweak != nil {
		benchTweak(&opts)
	}
	exe := benchExecutable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return fmt.Errorf("finding the keyd executable (to run keyd serve): %w", err)
		}
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	log := m.logger(c.LogLevel)
	env := bench.Env{
		DatabaseURL: c.DatabaseURL,
		StartNATS:   startBenchNATS,
		StartKeyd: func(ctx context.Context, k bench.KeydConfig) (*bench.Keyd, error) {
			return startBenchKeyd(ctx, k, Config{
				DatabaseURL: k.DatabaseURL, AdminToken: k.AdminToken, Secret: k.Secret,
				KeyPrefix: "sk", StreamReplicas: 1, VerifierMaxStaleness: 30 * time.Second, LogLevel: c.LogLevel,
			}, m)
		},
		Executable: exe,
		Progress:   m.Stderr,
		Log:        log,
	}
	if *soak > 0 {
		o := bench.DefaultSoakOptions(*soak)
		o.Interval = *soakEvery
		if *soakKeys < 0 {
			return fmt.Errorf("keyd bench: --soak-keys must be 0 or more, not %d", *soakKeys)
		}
		o.Keys = *soakKeys
		o.HeapProfile = *soakHeap
		_, err := bench.Soak(ctx, env, o, m.Stdout)
		return err
	}
	mode := "full"
	if opts.Quick {
		mode = "quick"
	}
	fmt.Fprintf(m.Stdout, "keyd bench (%s)\n", mode)
	start := time.Now()
	results, runErr := bench.Run(ctx, env, opts, func(r bench.Result) {
		fmt.Fprintf(m.Stderr, "keyd bench: %s done: %g %s (baseline %g, ratio %.2f)\n", r.Name, r.Value, r.Unit, r.Baseline.Value, r.Ratio)
	})
	if len(results) > 0 {
		fmt.Fprintln(m.Stdout)
		if err := bench.WriteTable(m.Stdout, results); err != nil {
			return err
		}
		fmt.Fprintf(m.Stdout, "\n%d scenarios in %s.\n", len(results), time.Since(start).Round(time.Second))
	}
	if *jsonPath != "" {
		if err := bench.WriteJSONFile(*jsonPath, results); err != nil {
			return errors.Join(runErr, fmt.Errorf("writing %s: %w", *jsonPath, err))
		}
	}
	return runErr
}

// startBenchNATS starts an embedded JetStream server as keyd dev does, on a
// free loopback port.
func startBenchNATS(dir string) (*server.Server, error) {
	ln, err := listenWithFallback("127.0.0.1:0", false)
	if err != nil {
		return nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // nats-server binds it itself
	return startEmbeddedNATS(dir, "127.0.0.1", port)
}

// startBenchKeyd starts an App on the embedded server (an in-process
// connection, as keyd dev does) and the benchmark's database, with HTTP on
// a free loopback port.
func startBenchKeyd(ctx context.Context, k bench.KeydConfig, c Config, m *Main) (*bench.Keyd, error) {
	nc, err := nats.Connect(k.NATS.ClientURL(), nats.InProcessServer(k.NATS), nats.Name("keyd bench keyd"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, err
	}
	cmdNC, err := nats.Connect(k.NATS.ClientURL(), nats.InProcessServer(k.NATS), nats.Name("keyd bench keyd commands"), nats.MaxReconnects(-1))
	if err != nil {
		nc.Close()
		return nil, err
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		nc.Close()
		cmdNC.Close()
		return nil, err
	}
	app := &App{cfg: c, log: m.logger(c.LogLevel), secret: []byte(c.Secret), NATSURL: k.NATS.ClientURL()}
	if err := app.start(ctx, nc, cmdNC, httpLn); err != nil {
		httpLn.Close()
		app.Close()
		return nil, err
	}
	return &bench.Keyd{NC: nc, Verifier: app.Verifier, HTTPAddr: app.HTTPAddr, Close: app.Close}, nil
}
