package httpapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// queryCounter counts the queries a pool sends to Postgres.
type queryCounter struct{ n atomic.Int64 }

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.n.Add(1)
	return ctx
}
func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestMinSequenceWaitsShareOneWatcher (finding M4: 1,500 parked
// min_sequence waits each polled Postgres, and other tenants' reads slowed
// from 1.7 ms to 144 ms): 1,500 waits parked at once (15 sessions × 100)
// cause about one query per watchInterval, not one per wait; a 101st wait
// of one token is rate_limited; and another tenant's reads meanwhile never
// wait for a Postgres connection.
func TestMinSequenceWaitsShareOneWatcher(t *testing.T) {
	t.Parallel()
	base := newStack(t)
	base.createKey("org_b", "b's key")

	cfg, err := pgxpool.ParseConfig(base.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	counter := &queryCounter{}
	cfg.ConnConfig.Tracer = counter
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	srv := &Server{Runner: base.srv.Runner, Reads: postgres.NewReadModel(pool, nil), AdminToken: adminToken,
		Sessions: base.sessions, Log: base.srv.Log, MinSequenceWait: 30 * time.Second, SessionRate: -1}
	h := httptest.NewServer(srv.Handler())
	t.Cleanup(h.Close)
	s := &stack{t: t, http: h}

	const sessions, perSession = 15, MaxWaitsPerToken
	tokens := make([]string, sessions)
	for i := range tokens {
		tokens[i] = base.session("org_a", "u")
	}
	ctx, cancel := context.WithCancel(context.Background())
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: -1}}
	var wg sync.WaitGroup
	var refusedEarly atomic.Int64
	for _, tok := range tokens {
		for range perSession {
			wg.Go(func() {
				req, _ := http.NewRequestWithContext(ctx, "GET", h.URL+"/v1/orgs/org_a/keys?min_sequence=999999999", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				if res, err := client.Do(req); err == nil {
					if res.StatusCode != http.StatusServiceUnavailable {
						refusedEarly.Add(1)
					}
					res.Body.Close()
				}
			})
		}
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	parked := func() int {
		srv.limits.waits.mu.Lock()
		defer srv.limits.waits.mu.Unlock()
		n := 0
		for _, v := range srv.limits.waits.used {
			n += v
		}
		return n
	}
	testenv.WaitFor(t, 20*time.Second, "1,500 min_sequence waits to park", func() bool { return parked() == sessions*perSession })

	// A 101st wait of one token is refused at once.
	r := s.mustFail(t, domain.ERateLimited, "GET", "/v1/orgs/org_a/keys?min_sequence=999999999", tokens[0], nil)
	if r.Header.Get("Retry-After") == "" {
		t.Error("the refused wait has no Retry-After")
	}

	// Every connection the pool may open, opened now: from here on an
	// empty acquire is one that waited for another query to finish.
	conns := make([]*pgxpool.Conn, pool.Config().MaxConns)
	for i := range conns {
		if conns[i], err = pool.Acquire(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range conns {
		c.Release()
	}

	// Queries while 1,500 waits stay parked for a second.
	before, emptyBefore := counter.n.Load(), pool.Stat().EmptyAcquireCount()
	const window = time.Second
	deadline := time.Now().Add(window)
	probes := 0
	for time.Now().Before(deadline) {
		// Another tenant's reads, meanwhile.
		s.must(t, 200, "GET", "/v1/orgs/org_b/keys", adminToken, nil)
		probes++
		time.Sleep(20 * time.Millisecond)
	}
	queries := counter.n.Load() - before
	probeQueries := int64(2 * probes) // each listing reads the applied sequence and the keys
	watcherQueries := queries - probeQueries
	if limit := int64(2 * window / watchInterval); watcherQueries > limit {
		t.Errorf("%d parked waits caused %d queries in %s; want at most %d (one watcher, one query per %s)",
			parked(), watcherQueries, window, limit, watchInterval)
	}
	if watcherQueries < 1 {
		t.Errorf("the watcher sent no query in %s", window)
	}
	// Parked waits hold no connection: if they did, nearly every probe
	// would find the pool empty. An occasional empty acquire is the
	// watcher's own query meeting a probe (or the pool replacing a
	// connection) on a loaded machine, not a parked wait.
	if empty := pool.Stat().EmptyAcquireCount() - emptyBefore; empty > int64(probes)/10 {
		t.Errorf("other tenants' reads waited %d times (of %d reads) for a Postgres connection while the waits were parked", empty, probes)
	}
	if n := refusedEarly.Load(); n != 0 {
		t.Errorf("%d of the parked waits were answered early", n)
	}
	if got := parked(); got != sessions*perSession {
		t.Errorf("%d waits parked after the probes, want %d", got, sessions*perSession)
	}
}

// TestSequenceWatcherWakesWaiters: a wait returns as soon as the watcher
// sees its sequence applied, times out as unavailable, and the watcher
// stops once no one waits.
func TestSequenceWatcherWakesWaiters(t *testing.T) {
	t.Parallel()
	var applied atomic.Uint64
	var reads atomic.Int64
	w := &sequenceWatcher{applied: func(context.Context) (uint64, error) { reads.Add(1); return applied.Load(), nil }}
	done := make(chan error, 1)
	go func() { _, err := w.wait(context.Background(), 5, 10*time.Second); done <- err }()
	time.Sleep(20 * time.Millisecond)
	applied.Store(5)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait did not return once its sequence was applied")
	}
	if seq, err := w.wait(context.Background(), 3, time.Second); err != nil || seq != 5 {
		t.Errorf("an applied sequence: %d, %v; want 5 at once", seq, err)
	}
	if _, err := w.wait(context.Background(), 9, 30*time.Millisecond); domain.ErrorCode(err) != domain.EUnavailable {
		t.Errorf("timeout: %v, want unavailable", err)
	}
	testenv.WaitFor(t, time.Second, "the watcher to stop", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return !w.running
	})
	n := reads.Load()
	time.Sleep(50 * time.Millisecond)
	if reads.Load() != n {
		t.Error("the watcher still reads with no one waiting")
	}
}
