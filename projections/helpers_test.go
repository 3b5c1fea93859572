package projections

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/internal/testworld"
	"github.com/keyd-dev/keyd/migrations"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// env is one test's world: a migrated database, a JetStream server with the
// KEYD_EVENTS stream, and a domain service appending to it.
type env struct {
	t      testing.TB
	ctx    context.Context
	dsn    string
	pool   *pgxpool.Pool
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	svc    *domain.Service
	dg     *domain.Digester
	w      *testworld.Events
}

func newEnv(t testing.TB) *env {
	return newEnvWithStream(t, eventstore.StreamConfig(1))
}

// newEnvWithStream creates the stream with cfg (tests that purge need
// DenyPurge off).
func newEnvWithStream(t testing.TB, cfg jetstream.StreamConfig) *env {
	t.Helper()
	return newEnvOn(t, &cfg)
}

// newKeydEnv creates the stream as keyd does (eventstore.EnsureStream: it
// records the signing marker, so unsigned messages are set aside).
func newKeydEnv(t testing.TB) *env {
	t.Helper()
	return newEnvOn(t, nil)
}

func newEnvOn(t testing.TB, cfg *jetstream.StreamConfig) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx}
	e.pool, e.dsn = testworld.MigratedPool(t)
	_, e.nc = testenv.JetStream(t)
	w := testworld.EventStreamOn(t, e.nc, cfg)
	e.js, e.stream, e.w = w.JS, w.Stream, w
	e.svc = w.Service([]byte("projections test deployment secret"))
	e.dg = e.svc.Digester
	return e
}

// newPool opens another pool on the test database (another "process").
func (e *env) newPool() *pgxpool.Pool {
	e.t.Helper()
	pool, err := pgxpool.New(e.ctx, e.dsn)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(pool.Close)
	return pool
}

func (e *env) projector(pool *pgxpool.Pool) *Projector {
	p := NewProjector(pool, e.js, testenv.Logger(e.t))
	p.EventKey = testEventKey
	p.StandbyPoll = 50 * time.Millisecond
	return p
}

// running is a Run in progress.
type running struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
	err    error         // Run's result, once done is closed
}

// start runs p until the test ends or stop is called.
func (e *env) start(p *Projector) *running {
	ctx, cancel := context.WithCancel(e.ctx)
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		r.err = p.Run(ctx)
		close(r.done)
	}()
	e.t.Cleanup(func() { r.stop(e.t) })
	return r
}

// stop cancels Run and waits for it; Run must then return nil unless it
// had already stopped by itself.
func (r *running) stop(t testing.TB) {
	select {
	case <-r.done:
		return
	default:
	}
	r.cancel()
	<-r.done
	if r.err != nil {
		t.Errorf("Run after cancel: %v", r.err)
	}
}

// wait waits for Run to return by itself and returns its result.
func (r *running) wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case <-r.done:
		return r.err
	case <-time.After(timeout):
		t.Fatalf("Run did not return within %s", timeout)
		return nil
	}
}

func (e *env) lastSeq() uint64 {
	e.t.Helper()
	info, err := e.stream.Info(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// records returns the stream's records from..to (inclusive).
func (e *env) records(from, to uint64) []domain.Record {
	e.t.Helper()
	var out []domain.Record
	for seq := from; seq <= to; seq++ {
		m, err := e.stream.GetMsg(e.ctx, seq)
		if err != nil {
			e.t.Fatalf("get message %d: %v", seq, err)
		}
		out = append(out, domain.Record{Subject: m.Subject, Sequence: m.Sequence, Data: m.Data})
	}
	return out
}

// apply applies recs to tables in one transaction.
func (e *env) apply(tables Tables, recs []domain.Record) uint64 {
	e.t.Helper()
	var applied uint64
	err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
		var err error
		applied, err = ApplyBatch(e.ctx, tx, tables, recs)
		return err
	})
	if err != nil {
		e.t.Fatalf("ApplyBatch: %v", err)
	}
	return applied
}

// scratchTables creates empty tables shaped like the live ones.
func (e *env) scratchTables(suffix string) Tables {
	e.t.Helper()
	tables := suffixed(DefaultTables, suffix)
	for i, name := range tables.list() {
		live := DefaultTables.list()[i]
		if _, err := e.pool.Exec(e.ctx, `CREATE TABLE `+ident(name)+` (LIKE `+ident(live)+` INCLUDING ALL)`); err != nil {
			e.t.Fatal(err)
		}
	}
	return tables
}

// dump returns every row of the four tables, as JSON ordered by primary
// key, one table after another, and the checkpoint.
func (e *env) dump(tables Tables) string {
	e.t.Helper()
	var b strings.Builder
	order := []string{"key_id", "seq", "slug", "digest", "org_id", "slug"}
	for i, name := range tables.list() {
		fmt.Fprintf(&b, "-- %d\n", i)
		for _, row := range e.rows(`SELECT row_to_json(t)::text FROM ` + ident(name) + ` t ORDER BY ` + order[i]) {
			b.WriteString(row)
			b.WriteByte('\n')
		}
	}
	fmt.Fprintf(&b, "-- checkpoint %d\n", e.checkpoint(tables.Checkpoint))
	return b.String()
}

func (e *env) rows(q string, args ...any) []string {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, q, args...)
	if err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return out
}

func (e *env) checkpoint(name string) uint64 {
	e.t.Helper()
	cp, _, err := migrations.Checkpoint(e.ctx, e.pool, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return cp
}

func (e *env) count(q string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.pool.QueryRow(e.ctx, q, args...).Scan(&n); err != nil {
		e.t.Fatalf("%s: %v", q, err)
	}
	return n
}

// caughtUp waits until p has applied the whole stream.
func (e *env) caughtUp(p *Projector) {
	e.t.Helper()
	last := e.lastSeq()
	testenv.WaitFor(e.t, 20*time.Second, fmt.Sprintf("the projector to apply sequence %d", last), func() bool {
		s := p.Status()
		if s.Err != nil {
			e.t.Logf("projector error: %v", s.Err)
		}
		return s.Applied >= last
	})
}

// ---- commands --------------------------------------------------------

func (e *env) define(slug, description string) uint64 {
	e.t.Helper()
	r, err := e.svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: slug, Description: description})
	if err != nil {
		e.t.Fatalf("define %s: %v", slug, err)
	}
	return r.Sequence
}

func (e *env) retire(slug string) uint64 {
	e.t.Helper()
	r, err := e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: slug})
	if err != nil {
		e.t.Fatalf("retire %s: %v", slug, err)
	}
	return r.Sequence
}

func (e *env) create(org, name string, perms []string, md map[string]string) domain.CreateKeyResult {
	e.t.Helper()
	r, err := e.svc.CreateKey(e.ctx, org, domain.CreateKey{Name: name, Permissions: perms, Metadata: md})
	if err != nil {
		e.t.Fatalf("create %s: %v", name, err)
	}
	return r
}

func (e *env) revoke(org, keyID string) domain.KeyResult {
	e.t.Helper()
	r, err := e.svc.RevokeKey(e.ctx, org, domain.RevokeKey{KeyID: keyID, Reason: "test"})
	if err != nil {
		e.t.Fatalf("revoke %s: %v", keyID, err)
	}
	return r
}

func (e *env) rename(org, keyID, name string) domain.KeyResult {
	e.t.Helper()
	r, err := e.svc.UpdateKey(e.ctx, org, domain.UpdateKey{KeyID: keyID, Name: &name, Metadata: map[string]string{"renamed": "yes"}})
	if err != nil {
		e.t.Fatalf("update %s: %v", keyID, err)
	}
	return r
}

func (e *env) setPermissions(org, keyID string, perms []string) domain.KeyResult {
	e.t.Helper()
	r, err := e.svc.SetPermissions(e.ctx, org, domain.SetPermissions{KeyID: keyID, Permissions: perms})
	if err != nil {
		e.t.Fatalf("set permissions %s: %v", keyID, err)
	}
	return r
}

func (e *env) rotate(org, keyID string, grace int64) domain.RotateKeyResult {
	e.t.Helper()
	r, err := e.svc.RotateKey(e.ctx, org, domain.RotateKey{KeyID: keyID, GracePeriodSeconds: &grace})
	if err != nil {
		e.t.Fatalf("rotate %s: %v", keyID, err)
	}
	return r
}

// history appends a bit of everything and returns the secrets it made.
func (e *env) history(org string, n int) []string {
	e.t.Helper()
	write := strings.ToLower(org) + ":write" // retired below: one per history
	e.define("posts:read", "Read posts")
	e.define(write, "Write")
	var secrets []string
	for i := range n {
		c := e.create(org, fmt.Sprintf("key %d", i), []string{"posts:read"}, map[string]string{"i": fmt.Sprint(i)})
		secrets = append(secrets, c.Secret)
		switch i % 4 {
		case 1:
			e.rename(org, c.Key.ID, fmt.Sprintf("renamed %d", i))
			e.setPermissions(org, c.Key.ID, []string{"posts:read", write})
		case 2:
			e.revoke(org, c.Key.ID)
		case 3:
			r := e.rotate(org, c.Key.ID, 3600)
			secrets = append(secrets, r.Secret)
		}
	}
	e.retire(write)
	return secrets
}

// testEventKey checks the events of the test worlds' stores.
var testEventKey = testworld.Signer.PublicKey()
