package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/migrations"
	"github.com/keyd-dev/keyd/projections"
)

// runServe runs the production process: NATS from --nats-url, Postgres from
// --database-url; any number of them can run side by side.
func (m *Main) runServe(ctx context.Context, args []string) error {
	var c Config
	fs := newFlagSet("serve", &c, "nats-url", "http", "database-url", "admin-token", "secret",
		"key-prefix", "stream-replicas", "verifier-max-staleness", "widget-origins", "log-level", "leak-signing-keys")
	fs.SetOutput(m.Stderr)
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	if c.AdminToken == "" {
		return errors.New("keyd serve needs an admin token: set KEYD_ADMIN_TOKEN (or --admin-token)")
	}
	if len(c.AdminToken) < 16 {
		return errors.New("the admin token must be at least 16 characters")
	}
	if len(c.Secret) < 32 {
		return errors.New("keyd serve needs a deployment secret of at least 32 bytes: set KEYD_SECRET (or --secret); every keyd process of a deployment must share it")
	}
	if c.StreamReplicas < 1 || c.StreamReplicas > 5 {
		return fmt.Errorf("--stream-replicas must be 1 to 5, got %d", c.StreamReplicas)
	}
	log := m.logger(c.LogLevel)
	httpLn, err := listenWithFallback(c.HTTP, true)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	nc, err := nats.Connect(c.NATSURL, nats.Name("keyd serve "+host), nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(false))
	if err != nil {
		httpLn.Close()
		return fmt.Errorf("connecting to NATS at %s: %w (set KEYD_NATS_URL)", c.NATSURL, err)
	}
	app := &App{cfg: c, log: log, secret: []byte(c.Secret), NATSURL: nc.ConnectedUrlRedacted()}
	defer app.Close()
	if err := app.start(ctx, nc, httpLn); err != nil {
		httpLn.Close()
		return err
	}
	log.Info("keyd serve is running", "http", "http://"+app.HTTPAddr, "nats", app.NATSURL)
	if m.Started != nil {
		m.Started(app)
	}
	<-ctx.Done()
	log.Info("keyd serve: shutting down")
	return nil
}

// runMigrate applies the migrations and exits.
func (m *Main) runMigrate(ctx context.Context, args []string) error {
	var c Config
	fs := newFlagSet("migrate", &c, "database-url", "log-level")
	fs.SetOutput(m.Stderr)
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	pool, err := postgres.Open(ctx, c.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	applied, err := migrations.Apply(ctx, pool, m.logger(c.LogLevel))
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintln(m.Stdout, "keyd migrate: the database is up to date")
	}
	for _, v := range applied {
		fmt.Fprintln(m.Stdout, "keyd migrate: applied", v)
	}
	return nil
}

// runRebuild replays the stream into fresh read models and swaps them in.
func (m *Main) runRebuild(ctx context.Context, args []string) error {
	var c Config
	fs := newFlagSet("projections rebuild", &c, "nats-url", "database-url", "log-level")
	fs.SetOutput(m.Stderr)
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	nc, err := nats.Connect(c.NATSURL, nats.Name("keyd projections rebuild"))
	if err != nil {
		return fmt.Errorf("connecting to NATS at %s: %w (set KEYD_NATS_URL; for keyd dev use the NATS URL it printed)", c.NATSURL, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	pool, err := postgres.Open(ctx, c.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if _, err := migrations.Apply(ctx, pool, m.logger(c.LogLevel)); err != nil {
		return err
	}
	start := time.Now()
	if err := projections.Rebuild(ctx, pool, js, m.Stdout); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "keyd projections rebuild: done in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}
