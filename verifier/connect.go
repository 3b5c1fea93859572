package verifier

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// Option configures Connect.
type Option func(*connectOptions)

type connectOptions struct {
	cfg      Config
	natsOpts []nats.Option
}

// WithLogger sets the logger (default: none).
func WithLogger(l *slog.Logger) Option { return func(o *connectOptions) { o.cfg.Log = l } }

// WithMaxStaleness sets Config.MaxStaleness.
func WithMaxStaleness(d time.Duration) Option {
	return func(o *connectOptions) { o.cfg.MaxStaleness = d }
}

// WithLastUsed sets Config.LastUsedInterval and Config.OnLastUsed (nil: write
// to the database).
func WithLastUsed(interval time.Duration, onLastUsed func(ctx context.Context, used []LastUsed) error) Option {
	return func(o *connectOptions) { o.cfg.LastUsedInterval, o.cfg.OnLastUsed = interval, onLastUsed }
}

// WithNATSOptions adds options to the NATS connection (credentials, TLS,
// a name...). They apply after Connect's own.
func WithNATSOptions(opts ...nats.Option) Option {
	return func(o *connectOptions) { o.natsOpts = append(o.natsOpts, opts...) }
}

// Connect is the whole set-up for a program that embeds a verifier: it
// dials NATS at natsURL (reconnecting forever, every 250ms) and Postgres at
// databaseURL (keyd's database; "" to boot by replaying the stream and not
// track last use), builds a verifier whose digests use deploymentSecret
// (keyd's KEYD_SECRET), and starts it. It returns once the verifier has
// caught up with the stream. ctx bounds the connecting and the boot only;
// the verifier runs until Close, which also closes both connections.
func Connect(ctx context.Context, natsURL, databaseURL string, deploymentSecret []byte, opts ...Option) (*Verifier, error) {
	if len(deploymentSecret) == 0 {
		return nil, errors.New("verifier: the deployment secret is empty (keyd's KEYD_SECRET)")
	}
	var o connectOptions
	for _, opt := range opts {
		opt(&o)
	}
	natsOpts := append([]nats.Option{
		nats.Name("keyd verifier"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
	}, o.natsOpts...)
	nc, err := nats.Connect(natsURL, natsOpts...)
	if err != nil {
		return nil, fmt.Errorf("verifier: connecting to NATS at %s: %w", natsURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("verifier: JetStream: %w", err)
	}
	var pool *pgxpool.Pool
	if databaseURL != "" {
		if pool, err = pgxpool.New(ctx, databaseURL); err != nil {
			nc.Close()
			return nil, fmt.Errorf("verifier: the database URL: %w", err)
		}
	}
	cfg := o.cfg
	cfg.Pool, cfg.JS, cfg.Conn, cfg.Digester = pool, js, nc, domain.NewDigester(deploymentSecret)
	v := New(cfg)
	if pool != nil {
		v.closers = append(v.closers, pool.Close)
	}
	v.closers = append(v.closers, nc.Close)
	if err := v.start(ctx, context.WithoutCancel(ctx)); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}
