package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/migrations"
	"github.com/keyd-dev/keyd/verifier"
)

// runner is one run's shared state.
type runner struct {
	env      Env
	opts     Options
	tmp      string
	db       *database
	progress *progress
	log      *slog.Logger
	prefix   string // "[i/n] scenario", for progress lines

	secret     string // the deployment secret (KEYD_SECRET) of everything started
	adminToken string
	dig        *domain.Digester

	keys       *keySet // generated keys, once
	keysLoaded bool    // the database holds exactly keys' snapshot
}

func (r *runner) init() {
	if r.secret == "" {
		r.secret = randomHex(32)
		r.adminToken = "kat_" + randomHex(32)
		r.dig = domain.NewDigester([]byte(r.secret))
	}
}

// tick shows progress within the current scenario.
func (r *runner) tick(format string, args ...any) {
	r.progress.tick(r.prefix+": "+format, args...)
}

func (r *runner) phase(format string, args ...any) {
	r.progress.phase(r.prefix + ": " + fmt.Sprintf(format, args...))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// ---- Postgres ----------------------------------------------------------

// database is the run's own database, keyd_bench_<random>, with the
// migrations applied.
type database struct {
	admin *pgx.ConnConfig // a database on the same server, for CREATE and DROP
	name  string
	url   string // the run's database
	pool  *pgxpool.Pool
}

// createDatabase creates keyd_bench_<random> on the server of serverURL
// (connecting to serverURL's own database, or to "postgres" when that one
// does not exist) and applies the migrations.
func createDatabase(ctx context.Context, serverURL string) (*database, error) {
	cfg, err := pgx.ParseConfig(serverURL)
	if err != nil {
		return nil, fmt.Errorf("the database URL is not valid (set KEYD_DATABASE_URL): %w", err)
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "3D000" {
		cfg = cfg.Copy()
		cfg.Database = "postgres"
		conn, err = pgx.ConnectConfig(ctx, cfg)
	}
	if err != nil {
		return nil, fmt.Errorf("keyd bench needs a Postgres server where it may create a database (set KEYD_DATABASE_URL): connecting to %s:%d as %q: %w",
			cfg.Host, cfg.Port, cfg.User, err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	db := &database{admin: cfg, name: "keyd_bench_" + randomHex(6)}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db.name}.Sanitize()+" TEMPLATE template0"); err != nil {
		return nil, fmt.Errorf("creating the benchmark database %s (the user of KEYD_DATABASE_URL must be allowed to CREATE DATABASE): %w", db.name, err)
	}
	if db.url, err = withDatabase(serverURL, db.name); err != nil {
		db.drop()
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(db.url)
	if err != nil {
		db.drop()
		return nil, err
	}
	pcfg.MaxConns = 48
	if db.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		db.drop()
		return nil, err
	}
	if _, err := migrations.Apply(ctx, db.pool, nil); err != nil {
		db.drop()
		return nil, fmt.Errorf("applying the migrations to %s: %w", db.name, err)
	}
	return db, nil
}

// withDatabase returns the connection string dsn with its database set to
// name (a postgres:// URL or a key=value string).
func withDatabase(dsn, name string) (string, error) {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("the database URL is not valid: %w", err)
		}
		u.Path, u.RawPath = "/"+name, ""
		if q := u.Query(); q.Has("dbname") {
			q.Set("dbname", name)
			u.RawQuery = q.Encode()
		}
		return u.String(), nil
	}
	return dsn + " dbname=" + name, nil
}

// drop closes the pool and drops the database (forcing other sessions off).
func (db *database) drop() {
	if db.pool != nil {
		db.pool.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, db.admin)
	if err != nil {
		return
	}
	defer conn.Close(ctx)
	q := "DROP DATABASE IF EXISTS " + pgx.Identifier{db.name}.Sanitize()
	if _, err := conn.Exec(ctx, q+" WITH (FORCE)"); err != nil {
		_, _ = conn.Exec(ctx, q) // PostgreSQL before 13
	}
}

// resetDB empties the read models and the checkpoints.
func (r *runner) resetDB(ctx context.Context) error {
	r.keysLoaded = false
	_, err := r.db.pool.Exec(ctx, `TRUNCATE keys, audit_events, permissions, verification_keys, projection_checkpoints`)
	return err
}

// ---- NATS --------------------------------------------------------------

// world is one scenario's embedded NATS server (its own store directory)
// with the KEYD_EVENTS stream, and an in-process connection to it.
type world struct {
	ns      *server.Server
	nc      *nats.Conn
	js      jetstream.JetStream
	url     string
	closers []func()
}

func (r *runner) newWorld(ctx context.Context, name string) (*world, error) {
	ns, err := r.env.StartNATS(filepath.Join(r.tmp, "nats-"+name))
	if err != nil {
		return nil, fmt.Errorf("starting the embedded NATS server: %w", err)
	}
	w := &world{ns: ns, url: ns.ClientURL()}
	if w.nc, err = nats.Connect(w.url, nats.InProcessServer(ns), nats.Name("keyd bench")); err != nil {
		w.close()
		return nil, err
	}
	if w.js, err = jetstream.New(w.nc); err != nil {
		w.close()
		return nil, err
	}
	if _, err := eventstore.EnsureStream(ctx, w.js, 1); err != nil {
		w.close()
		return nil, err
	}
	return w, nil
}

// connect opens a TCP connection to the world's server.
func (w *world) connect(name string) (*nats.Conn, error) {
	nc, err := nats.Connect(w.url, nats.Name(name))
	if err != nil {
		return nil, err
	}
	w.onClose(nc.Close)
	return nc, nil
}

// streamLast returns the last sequence of KEYD_EVENTS.
func (w *world) streamLast(ctx context.Context) (uint64, error) {
	stream, err := w.js.Stream(ctx, domain.StreamName)
	if err != nil {
		return 0, err
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return 0, err
	}
	return info.State.LastSeq, nil
}

func (w *world) onClose(f func()) { w.closers = append(w.closers, f) }

func (w *world) close() {
	for i := len(w.closers) - 1; i >= 0; i-- {
		w.closers[i]()
	}
	if w.nc != nil {
		w.nc.Close()
	}
	w.ns.Shutdown()
	w.ns.WaitForShutdown()
}

// ---- the verification snapshot ----------------------------------------

// keySet is the generated keys of the verification scenarios: n secrets
// and their digests. The database holds their rows in keys and
// verification_keys, under checkpoint 0 (they come from no stream, so
// every fresh stream continues the snapshot).
type keySet struct {
	secrets []string
	digests []domain.Digest
}

// The mix of generated keys: 1,000 organizations, a dozen permission sets,
// one key in ten with metadata, one in ten with an expiry (years away), one
// in fifty revoked.
var permSets = [][]string{
	{}, {"posts:read"}, {"posts:read", "posts:write"}, {"billing:read"},
	{"billing:read", "billing:write", "posts:read"}, {"admin"}, {"posts:read", "users:read"},
	{"users:read", "users:write"}, {"deploy"}, {"deploy", "posts:read"}, {"metrics:read"}, {"events:read", "metrics:read"},
}

func keyRevoked(i int) bool { return i%50 == 11 }

// loadKeys makes sure the database holds the snapshot of opts.Keys keys
// (generating them the first time) and returns them.
func (r *runner) loadKeys(ctx context.Context) (*keySet, error) {
	r.init()
	if r.keys != nil && r.keysLoaded {
		return r.keys, nil
	}
	n := r.opts.Keys
	if r.keys == nil {
		r.phase("generating %s secrets", thousands(int64(n)))
		r.keys = genKeys(n, r.dig)
	}
	if err := r.copyKeys(ctx, r.keys, true); err != nil {
		return nil, err
	}
	r.keysLoaded = true
	return r.keys, nil
}

// copyKeys empties the read models, then writes ks' keys into
// verification_keys (the verifier's snapshot) with COPY, and, if listing,
// into keys (the listing, where last uses are written), under checkpoint 0.
func (r *runner) copyKeys(ctx context.Context, ks *keySet, listing bool) error {
	n := len(ks.secrets)
	if err := r.resetDB(ctx); err != nil {
		return err
	}
	r.phase("COPY of %s keys into the read models", thousands(int64(n)))
	base := time.Now().UTC().Truncate(time.Millisecond).Add(-time.Duration(n) * time.Millisecond)
	expires := base.AddDate(5, 0, 0)
	rng := mrand.NewChaCha8([32]byte{1})
	ids := make([]string, n)
	for i := range ids {
		id, err := domain.NewULID(base.Add(time.Duration(i)*time.Millisecond), rng)
		if err != nil {
			return err
		}
		ids[i] = domain.KeyIDPrefix + id
	}
	org := func(i int) string { return fmt.Sprintf("org_%03d", (i*7919)%1000) }
	meta := func(i int) map[string]string {
		if i%10 == 3 {
			return map[string]string{"team": fmt.Sprintf("team-%d", i%100)}
		}
		return map[string]string{}
	}
	exp := func(i int) *time.Time {
		if i%10 == 7 {
			return &expires
		}
		return nil
	}
	status := func(i int) string {
		if keyRevoked(i) {
			return domain.StatusRevoked
		}
		return domain.StatusActive
	}
	copyRows := func(table string, cols []string, row func(i int) []any) error {
		copied, err := r.db.pool.CopyFrom(ctx, pgx.Identifier{table}, cols,
			pgx.CopyFromFunc(func() func() ([]any, error) {
				i := -1
				return func() ([]any, error) {
					i++
					if i == n {
						return nil, nil
					}
					if i%10_000 == 0 {
						r.tick("COPY into %s: %s of %s rows", table, thousands(int64(i)), thousands(int64(n)))
					}
					return row(i), nil
				}
			}()))
		if err == nil && copied != int64(n) {
			err = fmt.Errorf("COPY into %s: %d rows, want %d", table, copied, n)
		}
		return err
	}
	err := copyRows("verification_keys",
		[]string{"digest", "key_id", "org_id", "owner_type", "owner_id", "name", "permissions", "expires_at", "status", "metadata", "last_seq"},
		func(i int) []any {
			o := org(i)
			return []any{ks.digests[i][:], ids[i], o, "organization", o, fmt.Sprintf("key %d", i),
				permSets[i%len(permSets)], exp(i), status(i), meta(i), int64(0)}
		})
	if err != nil {
		return err
	}
	if listing {
		err = copyRows("keys",
			[]string{"key_id", "org_id", "name", "owner_type", "owner_id", "mask", "permissions", "status",
				"created_at", "expires_at", "revoked_at", "metadata", "version", "last_seq"},
			func(i int) []any {
				o := org(i)
				created := base.Add(time.Duration(i) * time.Millisecond)
				var revoked *time.Time
				if keyRevoked(i) {
					revoked = &created
				}
				return []any{ids[i], o, fmt.Sprintf("key %d", i), "organization", o, domain.Mask(ks.secrets[i]),
					permSets[i%len(permSets)], status(i), created, exp(i), revoked, meta(i), int64(1), int64(0)}
			})
	}
	if err != nil {
		return err
	}
	if _, err := r.db.pool.Exec(ctx, `INSERT INTO projection_checkpoints (name, last_seq) VALUES ($1, 0)`, migrations.ReadModelsProjection); err != nil {
		return err
	}
	r.phase("VACUUM ANALYZE")
	_, err = r.db.pool.Exec(ctx, `VACUUM ANALYZE verification_keys, keys`)
	return err
}

// genKeys draws n secrets (on every CPU) and digests them.
func genKeys(n int, dig *domain.Digester) *keySet {
	ks := &keySet{secrets: make([]string, n), digests: make([]domain.Digest, n)}
	workers := runtime.GOMAXPROCS(0)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			rng := mrand.NewChaCha8([32]byte{byte(w), 7})
			for i := w * n / workers; i < (w+1)*n/workers; i++ {
				s, err := domain.NewSecret("sk", rng)
				if err != nil {
					panic(err) // only for an invalid prefix
				}
				ks.secrets[i], ks.digests[i] = s, dig.Digest(s)
			}
		})
	}
	wg.Wait()
	return ks
}

func (r *runner) closeKeys() { r.keys = nil }

// discardLastUsed is a last-use sink that drops the batches.
func discardLastUsed(context.Context, []verifier.LastUsed) error { return nil }

// bootVerifier starts a verifier on the world's stream and the run's
// database, the way keyd wires its own (no Now: one clock read per
// verification); onLastUsed nil writes last uses to the key listing as keyd
// does (the verifier's own flush), else it is Config.OnLastUsed.
func (r *runner) bootVerifier(ctx context.Context, w *world, onLastUsed func(context.Context, []verifier.LastUsed) error) (*verifier.Verifier, time.Duration, error) {
	v := verifier.New(verifier.Config{
		Pool: r.db.pool, JS: w.js, Conn: w.nc, Digester: r.dig,
		EventKey:     domain.NewVerifierCredential([]byte(r.secret)).EventKey(),
		MaxStaleness: verifier.DefaultMaxStaleness, Log: r.log, OnLastUsed: onLastUsed,
	})
	start := time.Now()
	if err := v.Start(ctx); err != nil {
		v.Close()
		return nil, 0, err
	}
	return v, time.Since(start), nil
}
