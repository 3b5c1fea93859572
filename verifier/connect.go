package verifier

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/natsconn"
)

// Option configures Connect.
type Option func(*connectOptions)

type connectOptions struct {
	cfg      Config
	auth     natsconn.Auth
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

// NATSAuth names the files the verifier's NATS connection authenticates and
// encrypts with, as keyd serve's --nats-creds, --nats-nkey, --nats-tls-ca,
// --nats-tls-cert and --nats-tls-key do. Every field is optional.
type NATSAuth struct {
	// CredsFile is a .creds file: a user JWT and its nkey seed (operator
	// mode servers).
	CredsFile string
	// NKeyFile is a file holding an nkey user seed (SU…). At most one of
	// CredsFile and NKeyFile.
	NKeyFile string
	// TLSCAFile is a PEM file of the authorities the server's certificate
	// is checked against (default: the system's).
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are a PEM client certificate and its key,
	// for servers that verify clients: both or neither.
	TLSCertFile, TLSKeyFile string
}

// WithNATSAuth authenticates (and encrypts) the NATS connection with the
// files of a. Connect checks them before dialing and fails naming the one at
// fault.
func WithNATSAuth(a NATSAuth) Option {
	return func(o *connectOptions) {
		o.auth = natsconn.Auth{Creds: a.CredsFile, NKey: a.NKeyFile, TLSCA: a.TLSCAFile, TLSCert: a.TLSCertFile, TLSKey: a.TLSKeyFile}
	}
}

// Connect is the whole set-up for a program that embeds a verifier: it
// dials NATS at natsURL (reconnecting forever, every 250ms; see WithNATSAuth
// for credentials files and TLS) and Postgres at
// databaseURL (keyd's database; "" to boot by replaying the stream and not
// track last use), builds a verifier from credential (a verifier credential,
// kvc_…, as `keyd verifier-credential` prints it: KEYD_VERIFIER_CREDENTIAL),
// and starts it. It returns once the verifier has caught up with the stream.
// ctx bounds the connecting and the boot only; the verifier runs until
// Close, which also closes both connections. Errors never show a password
// or token of natsURL, nor the credential.
//
// The credential holds only the digest key and keyd's public event key: the
// verifier checks events' signatures and computes digests, and nothing in it
// can sign events or widget sessions.
func Connect(ctx context.Context, natsURL, databaseURL, credential string, opts ...Option) (*Verifier, error) {
	cred, err := domain.ParseVerifierCredential(credential)
	if err != nil {
		return nil, fmt.Errorf("verifier: KEYD_VERIFIER_CREDENTIAL: %w", err)
	}
	var o connectOptions
	for _, opt := range opts {
		opt(&o)
	}
	authOpts, err := o.auth.Options()
	if err != nil {
		return nil, fmt.Errorf("verifier: %w", err)
	}
	natsOpts := append([]nats.Option{
		nats.Name("keyd verifier"),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
	}, authOpts...)
	natsOpts = append(natsOpts, o.natsOpts...)
	nc, err := nats.Connect(natsURL, natsOpts...)
	if err != nil {
		return nil, natsconn.ConnectError("verifier: connecting to NATS", natsURL, err)
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
	cfg.Pool, cfg.JS, cfg.Conn, cfg.Digester, cfg.EventKey = pool, js, nc, cred.Digester(), cred.EventKey()
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
