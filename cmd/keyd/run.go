package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// Main is the keyd program: it parses the subcommand and its configuration,
// builds everything explicitly, runs it and closes it.
type Main struct {
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string

	// Started, when set, receives the running App (tests use it to learn the
	// addresses chosen).
	Started func(*App)
}

// NewMain returns a Main writing to the given streams.
func NewMain(stdout, stderr io.Writer, getenv func(string) string) *Main {
	return &Main{Stdout: stdout, Stderr: stderr, Getenv: getenv}
}

const usage = `keyd: API keys for your product's customers, event-sourced on NATS JetStream.

Usage:
  keyd dev                   everything in one process (embedded NATS, Postgres read models, HTTP)
  keyd serve                 the production process (NATS and Postgres from configuration)
  keyd migrate               apply the Postgres migrations and exit
  keyd projections rebuild   rebuild the read models from the stream, then swap them in
  keyd verifier-credential   print the credential embedded verifiers need (KEYD_VERIFIER_CREDENTIAL)
  keyd bench                 the benchmark scenarios beside their baselines (--quick: within a minute)

Run "keyd <command> -h" for the flags of a command; every flag has a KEYD_* environment variable.
`

// Run runs the subcommand in args until ctx ends (or it finishes).
func (m *Main) Run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		fmt.Fprint(m.Stderr, usage)
		return errors.New("no command given")
	}
	var err error
	switch args[0] {
	case "dev":
		err = m.runDev(ctx, args[1:])
	case "serve":
		err = m.runServe(ctx, args[1:])
	case "migrate":
		err = m.runMigrate(ctx, args[1:])
	case "verifier-credential":
		err = m.runVerifierCredential(ctx, args[1:])
	case "projections":
		if len(args) < 2 || args[1] != "rebuild" {
			fmt.Fprint(m.Stderr, usage)
			return errors.New(`"keyd projections" needs a subcommand: rebuild`)
		}
		err = m.runRebuild(ctx, args[2:])
	case "bench":
		err = m.runBench(ctx, args[1:])
	case "help", "-h", "--help":
		fmt.Fprint(m.Stdout, usage)
		return nil
	default:
		fmt.Fprint(m.Stderr, usage)
		return fmt.Errorf("unknown command %q", args[0])
	}
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func (m *Main) logger(level string) *slog.Logger {
	var l slog.Level
	switch strings.ToLower(level) {
	case "debug":
		l = slog.LevelDebug
	case "warn":
		l = slog.LevelWarn
	case "error":
		l = slog.LevelError
	default:
		l = slog.LevelInfo
	}
	return slog.New(slog.NewTextHandler(m.Stderr, &slog.HandlerOptions{Level: l}))
}
