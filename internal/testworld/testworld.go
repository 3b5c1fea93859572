// Package testworld builds the pieces of keyd that tests of several packages
// start from: a migrated database, a JetStream server with the KEYD_EVENTS
// stream and the event store on it, and a domain.Service appending to it.
//
// It imports domain, eventstore and migrations, so only tests outside those
// packages may use it (a package's internal test cannot import a package
// that imports it). Tests of projections, verifier and the adapters may.
// The services themselves come from internal/testenv.
package testworld

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/migrations"
)

// setupTimeout bounds each set-up step (generous: `go test -race ./...` runs
// several test binaries at once on small machines).
const setupTimeout = time.Minute

// MigratedPool returns a pool on a fresh database (testenv.PostgresURL) with
// keyd's migrations applied, and the database's URL (to open more pools, as
// another process would). The pool is closed, then the database dropped, in
// t.Cleanup.
func MigratedPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	dsn := testenv.PostgresURL(t)
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("testworld: open %s: %v", dsn, err)
	}
	t.Cleanup(pool.Close) // before PostgresURL drops the database (LIFO)
	if _, err := migrations.Apply(ctx, pool, nil); err != nil {
		t.Fatalf("testworld: migrations: %v", err)
	}
	return pool, dsn
}

// Secret is the deployment secret of the test worlds: their event stores
// sign with the event key pair derived from it (Signer), as keyd's do with
// KEYD_SECRET. Tests that build a verifier credential use it too.
var Secret = []byte("testworld deployment secret: keys the digests and signs the events")

// Signer is the event signer of Secret.
var Signer = domain.NewEventSigner(Secret)

// Events is a JetStream with keyd's event stream: the server (nil from
// EventStreamOn), a client connection, its JetStream context, the
// KEYD_EVENTS stream and the event store appending to it, signing with
// Signer; EventKey checks its events (for the readers: projector, rebuild,
// verifier).
type Events struct {
	Server   *server.Server
	Conn     *nats.Conn
	JS       jetstream.JetStream
	Stream   jetstream.Stream
	Store    *eventstore.JetStream
	EventKey domain.EventKey
}

// EventStream starts an in-process JetStream server (testenv.JetStream) and
// creates KEYD_EVENTS on it as keyd does (eventstore.EnsureStream, one
// replica). Everything is shut down in t.Cleanup.
func EventStream(t testing.TB) *Events {
	t.Helper()
	srv, nc := testenv.JetStream(t)
	e := EventStreamOn(t, nc, nil)
	e.Server = srv
	return e
}

// EventStreamOn creates the event stream over an existing connection: as
// keyd does when cfg is nil, else with cfg (e.g. eventstore.StreamConfig(1)
// with DenyPurge off, for tests that purge).
func EventStreamOn(t testing.TB, nc *nats.Conn, cfg *jetstream.StreamConfig) *Events {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("testworld: jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	var st jetstream.Stream
	if cfg == nil {
		st, err = eventstore.EnsureStream(ctx, js, 1)
	} else {
		st, err = js.CreateOrUpdateStream(ctx, *cfg)
	}
	if err != nil {
		t.Fatalf("testworld: create the event stream: %v", err)
	}
	return &Events{Conn: nc, JS: js, Stream: st, Store: eventstore.NewJetStream(js, nc, st, eventstore.WithSigner(Signer)),
		EventKey: Signer.PublicKey()}
}

// Service returns a domain.Service appending to e's store, with a digester
// over secret, the real clock and crypto/rand: the command side as keyd
// wires it, without an idempotency store.
func (e *Events) Service(secret []byte) *domain.Service {
	return &domain.Service{
		Store:    e.Store,
		Digester: domain.NewDigester(secret),
		Now:      time.Now,
		Rand:     rand.Reader,
	}
}

// LastSeq returns the stream's last sequence (0 when it is empty), read
// from the server.
func (e *Events) LastSeq(t testing.TB) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	info, err := e.Stream.Info(ctx)
	if err != nil {
		t.Fatalf("testworld: stream info: %v", err)
	}
	return info.State.LastSeq
}
