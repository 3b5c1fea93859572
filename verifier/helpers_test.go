package verifier

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/internal/testworld"
	"github.com/keyd-dev/keyd/projections"
)

func TestMain(m *testing.M) { testenv.Main(m) }

var testSecret = testworld.Secret // digests and event signatures

// env is one test's world: a fresh database with keyd's schema, a JetStream
// server with KEYD_EVENTS, and the command side (domain.Service) on it.
type env struct {
	t    *testing.T
	ctx  context.Context
	dsn  string
	pool *pgxpool.Pool
	srv  *server.Server
	nc   *nats.Conn
	js   jetstream.JetStream
	dig  *domain.Digester
	svc  *domain.Service
	log  *slog.Logger
	w    *testworld.Events
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv, nc := testenv.JetStream(t)
	return newEnvOn(t, srv, nc, nil)
}

// newEnvOn builds the env on a given server and connection; streamCfg, if
// not nil, creates KEYD_EVENTS with that configuration instead of keyd's.
func newEnvOn(t *testing.T, srv *server.Server, nc *nats.Conn, streamCfg *jetstream.StreamConfig) *env {
	t.Helper()
	e := &env{t: t, ctx: t.Context(), srv: srv, nc: nc, log: testenv.Logger(t)}
	e.pool, e.dsn = testworld.MigratedPool(t)
	w := testworld.EventStreamOn(t, nc, streamCfg)
	e.js, e.w = w.JS, w
	e.svc = w.Service(testSecret)
	e.dig = e.svc.Digester
	return e
}

// publish stores data on subject as a plain NATS client would: signed by
// signer (nil: unsigned), unguarded.
func (e *env) publish(subject string, data []byte, signer *domain.EventSigner) (*jetstream.PubAck, error) {
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	if signer != nil {
		m.Header.Set(domain.SignatureHeader, signer.Sign(subject, data))
	}
	return e.js.PublishMsg(e.ctx, m)
}

// streamLast returns the stream's last sequence.
func (e *env) streamLast() uint64 {
	e.t.Helper()
	st, err := e.js.Stream(e.ctx, domain.StreamName)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := st.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// project runs keyd's projector until the read models reflect the whole
// stream, then stops it. It returns the checkpoint.
func (e *env) project() uint64 {
	e.t.Helper()
	want := e.streamLast()
	p := projections.NewProjector(e.pool, e.js, e.log)
	p.EventKey = testworld.Signer.PublicKey()
	ctx, cancel := context.WithCancel(e.ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	testenv.WaitFor(e.t, 20*time.Second, "the projector to catch up", func() bool { return p.Status().Applied >= want })
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		e.t.Fatalf("projector: %v", err)
	}
	return p.Status().Applied
}

// checkpoint returns the read models' checkpoint.
func (e *env) checkpoint() uint64 {
	e.t.Helper()
	var seq int64
	if err := e.pool.QueryRow(e.ctx, `SELECT last_seq FROM projection_checkpoints WHERE name = 'read_models'`).Scan(&seq); err != nil {
		e.t.Fatal(err)
	}
	return uint64(seq)
}

type cfgOpt func(*Config)

func withoutPool(c *Config)                 { c.Pool = nil }
func withClock(now func() time.Time) cfgOpt { return func(c *Config) { c.Now = now } }

// config returns a verifier configuration for this env.
func (e *env) config(opts ...cfgOpt) Config {
	c := Config{Pool: e.pool, JS: e.js, Conn: e.nc, Digester: e.dig, EventKey: testworld.Signer.PublicKey(), Log: e.log, LastUsedInterval: -1}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// verifier starts a verifier, closed when the test ends.
func (e *env) verifier(opts ...cfgOpt) *Verifier {
	e.t.Helper()
	v := New(e.config(opts...))
	e.t.Cleanup(v.Close)
	if err := v.Start(e.ctx); err != nil {
		e.t.Fatalf("Start: %v", err)
	}
	return v
}

func (e *env) define(slugs ...string) uint64 {
	e.t.Helper()
	var seq uint64
	for _, s := range slugs {
		r, err := e.svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: s, Description: "test " + s})
		if err != nil {
			e.t.Fatal(err)
		}
		seq = r.Sequence
	}
	return seq
}

func (e *env) retire(slug string) uint64 {
	e.t.Helper()
	r, err := e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: slug})
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Sequence
}

func (e *env) create(org string, cmd domain.CreateKey) domain.CreateKeyResult {
	e.t.Helper()
	if cmd.Name == "" {
		cmd.Name = "test key"
	}
	r, err := e.svc.CreateKey(e.ctx, org, cmd)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) revoke(org, keyID string) uint64 {
	e.t.Helper()
	r, err := e.svc.RevokeKey(e.ctx, org, domain.RevokeKey{KeyID: keyID, Reason: "test"})
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Sequence
}

// verify calls v.Verify and fails the test on an error.
func verify(t testing.TB, v *Verifier, secret string, perms ...string) Result {
	t.Helper()
	r, err := v.Verify(context.Background(), secret, perms...)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return r
}

// fakeClock is an injectable clock: real time until set.
type fakeClock struct{ p atomic.Pointer[time.Time] }

func (c *fakeClock) Now() time.Time {
	if t := c.p.Load(); t != nil {
		return *t
	}
	return time.Now()
}

func (c *fakeClock) Set(t time.Time) { c.p.Store(&t) }

func newSecret(t testing.TB) string {
	s, err := domain.NewSecret(domain.DefaultPrefix, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return s
}
