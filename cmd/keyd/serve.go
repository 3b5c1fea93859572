package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/internal/natsconn"
	"github.com/keyd-dev/keyd/migrations"
	"github.com/keyd-dev/keyd/projections"
)

// runServe runs the production process: NATS from --nats-url, Postgres from
// --database-url; any number of them can run side by side.
func (m *Main) runServe(ctx context.Context, args []string) error {
	var c Config
	fs := newFlagSet("serve", &c, append([]string{"nats-url", "http", "database-url", "admin-token", "secret",
		"key-prefix", "stream-replicas", "verifier-max-staleness", "last-used-resolution", "widget-origins", "log-level",
		"nats-reply-prefix", "internal-http", "rate-limit"}, natsAuthFlags...)...)
	fs.SetOutput(m.Stderr)
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	if c.AdminToken == "" {
		return errors.New("keyd serve needs an admin token: set KEYD_ADMIN_TOKEN (or --admin-token)")
	}
	if err := checkAdminToken(c.AdminToken); err != nil {
		return err
	}
	if c.RateLimit < 0 {
		return fmt.Errorf("--rate-limit must be 0 (no limit) or more requests a second, got %g", c.RateLimit)
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
	// Two connections: the event store's (JetStream, the only one that
	// publishes keyd.events.>) and the command responder's, which
	// publishes nothing but replies (see natscmd.Responder).
	nc, err := dialNATS(c, "keyd serve "+host, nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(false))
	if err != nil {
		httpLn.Close()
		return err
	}
	cmdNC, err := dialNATS(c, "keyd serve "+host+" commands", nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond), nats.RetryOnFailedConnect(false))
	if err != nil {
		nc.Close()
		httpLn.Close()
		return err
	}
	app := &App{cfg: c, log: log, secret: []byte(c.Secret), NATSURL: natsconn.Redact(nc.ConnectedUrl())}
	defer app.Close()
	if err := app.start(ctx, nc, cmdNC, httpLn); err != nil {
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
	fs := newFlagSet("projections rebuild", &c, append([]string{"nats-url", "database-url", "log-level", "secret"}, natsAuthFlags...)...)
	fs.SetOutput(m.Stderr)
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	nc, err := dialNATS(c, "keyd projections rebuild")
	if err != nil {
		return fmt.Errorf("%w; for keyd dev use the NATS URL it printed", err)
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
	key, err := eventKeyOf(c.Secret, m.Getenv)
	if err != nil {
		return fmt.Errorf("keyd projections rebuild: %w", err)
	}
	start := time.Now()
	if err := projections.Rebuild(ctx, pool, js, key, m.Stdout); err != nil {
		return err
	}
	fmt.Fprintf(m.Stdout, "keyd projections rebuild: done in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// dialNATS connects to c's NATS URL(s) as name, with c's credentials and
// TLS files and then opts. Its errors name the URL without its password or
// token (finding L1), nor do they quote them from the cause, and end with
// what to check (natsHint).
func dialNATS(c Config, name string, opts ...nats.Option) (*nats.Conn, error) {
	auth, err := c.NATSAuth.Options()
	if err != nil {
		return nil, err
	}
	all := append(append([]nats.Option{nats.Name(name)}, auth...), opts...)
	nc, err := nats.Connect(c.NATSURL, all...)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", natsconn.ConnectError("connecting to NATS", c.NATSURL, err), natsHint(err))
	}
	return nc, nil
}

// natsHint says what to check after a failed NATS connection: the
// credentials when the server refused them, the TLS files when TLS failed,
// else the URL.
func natsHint(err error) string {
	var verr *tls.CertificateVerificationError
	var alert tls.AlertError
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		return "the server refused keyd's credentials: check --nats-creds or --nats-nkey (KEYD_NATS_CREDS, KEYD_NATS_NKEY) or the user in the URL"
	case errors.Is(err, nats.ErrSecureConnRequired), errors.Is(err, nats.ErrSecureConnWanted), errors.As(err, &verr), errors.As(err, &alert),
		strings.Contains(err.Error(), "tls:"), strings.Contains(err.Error(), "x509:"):
		return "TLS failed: check --nats-tls-ca, --nats-tls-cert and --nats-tls-key (KEYD_NATS_TLS_CA, KEYD_NATS_TLS_CERT, KEYD_NATS_TLS_KEY)"
	}
	return "set KEYD_NATS_URL"
}
