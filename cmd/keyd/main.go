// Command keyd is the API-key service: `keyd dev` runs everything in one
// process, `keyd serve` is the production process, `keyd migrate` applies
// the Postgres migrations, `keyd projections rebuild` rebuilds the read
// models from the stream, and `keyd bench` measures it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := NewMain(os.Stdout, os.Stderr, os.Getenv)
	if err := m.Run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "keyd:", err)
		os.Exit(1)
	}
}
