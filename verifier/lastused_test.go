package verifier

import (
	"context"
	"crypto/rand"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/internal/testworld"
)

// TestLastUsedFlush: many verifications of a few keys become one statement
// that sets their last_used_at, never backwards; keys not used stay NULL.
func TestLastUsedFlush(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k1 := e.create("org_1", domain.CreateKey{})
	k2 := e.create("org_1", domain.CreateKey{})
	k3 := e.create("org_1", domain.CreateKey{})
	revoked := e.create("org_1", domain.CreateKey{})
	e.revoke("org_1", revoked.Key.ID)
	e.project() // the listing rows last_used_at goes to
	var clock fakeClock
	t1 := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	clock.Set(t1)
	v := e.verifier(withClock(clock.Now))

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				verify(t, v, k1.Secret)
				verify(t, v, k2.Secret)
				verify(t, v, revoked.Secret) // not a use
			}
		})
	}
	wg.Wait()
	if err := v.FlushLastUsed(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := v.used.statements.Load(); got != 1 {
		t.Errorf("statements = %d, want 1", got)
	}
	want := map[string]*time.Time{k1.Key.ID: &t1, k2.Key.ID: &t1, k3.Key.ID: nil, revoked.Key.ID: nil}
	checkLastUsed(t, e, want)

	// Nothing new: no statement.
	if err := v.FlushLastUsed(e.ctx); err != nil {
		t.Fatal(err)
	}
	if got := v.used.statements.Load(); got != 1 {
		t.Errorf("statements after an empty flush = %d, want 1", got)
	}

	// A later use moves it forward; an earlier one (another verifier's
	// clock) does not move it back.
	t2 := t1.Add(time.Minute)
	clock.Set(t2)
	verify(t, v, k1.Secret)
	if err := v.FlushLastUsed(e.ctx); err != nil {
		t.Fatal(err)
	}
	want[k1.Key.ID] = &t2
	checkLastUsed(t, e, want)
	if _, err := e.pool.Exec(e.ctx, `UPDATE keys SET last_used_at = $1 WHERE key_id = $2`, t2.Add(time.Hour), k2.Key.ID); err != nil {
		t.Fatal(err)
	}
	clock.Set(t2.Add(time.Second))
	verify(t, v, k2.Secret)
	if err := v.FlushLastUsed(e.ctx); err != nil {
		t.Fatal(err)
	}
	later := t2.Add(time.Hour)
	want[k2.Key.ID] = &later
	checkLastUsed(t, e, want)
}

func checkLastUsed(t *testing.T, e *env, want map[string]*time.Time) {
	t.Helper()
	for id, w := range want {
		var got *time.Time
		if err := e.pool.QueryRow(e.ctx, `SELECT last_used_at FROM keys WHERE key_id = $1`, id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		switch {
		case w == nil && got != nil:
			t.Errorf("%s: last_used_at = %s, want NULL", id, got)
		case w != nil && (got == nil || !got.Equal(*w)):
			t.Errorf("%s: last_used_at = %v, want %s", id, got, w)
		}
	}
}

// TestOnLastUsed: with OnLastUsed the batches go there, sorted by key id,
// and a failed batch is kept for the next flush.
func TestOnLastUsed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k1 := e.create("org_1", domain.CreateKey{})
	k2 := e.create("org_1", domain.CreateKey{})
	var got [][]LastUsed
	fail := true
	v := e.verifier(withoutPool, func(c *Config) {
		c.OnLastUsed = func(_ context.Context, used []LastUsed) error {
			got = append(got, used)
			if fail {
				fail = false
				return context.DeadlineExceeded
			}
			return nil
		}
	})
	verify(t, v, k2.Secret)
	verify(t, v, k1.Secret)
	if err := v.FlushLastUsed(e.ctx); err == nil {
		t.Fatal("first flush: no error")
	}
	if err := v.FlushLastUsed(e.ctx); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[1]) != 2 || got[1][0].KeyID >= got[1][1].KeyID {
		t.Fatalf("batches = %v, want the same two keys twice, sorted", got)
	}
}

// TestLastUsedResolution: a key verified twice within the resolution is
// written once; verified again once the resolution has passed since its
// recorded use, it is written again, with the later time. The default
// resolution is a minute.
func TestLastUsedResolution(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org_1", domain.CreateKey{})
	for _, c := range []struct {
		name       string
		resolution time.Duration
		window     time.Duration // what the resolution is in effect
	}{
		{"10s", 10 * time.Second, 10 * time.Second},
		{"default", 0, DefaultLastUsedResolution},
	} {
		t.Run(c.name, func(t *testing.T) {
			var clock fakeClock
			t0 := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
			clock.Set(t0)
			var writes []LastUsed
			v := e.verifier(withoutPool, withClock(clock.Now), func(cfg *Config) {
				cfg.LastUsedResolution = c.resolution
				cfg.OnLastUsed = func(_ context.Context, used []LastUsed) error {
					writes = append(writes, used...)
					return nil
				}
			})
			step := func(at time.Time, want []time.Time) {
				t.Helper()
				clock.Set(at)
				verify(t, v, k.Secret)
				writes = nil
				if err := v.FlushLastUsed(e.ctx); err != nil {
					t.Fatal(err)
				}
				if len(writes) != len(want) {
					t.Fatalf("at +%s: writes %v, want %v", at.Sub(t0), writes, want)
				}
				for i, w := range writes {
					if w.KeyID != k.Key.ID || !w.At.Equal(want[i]) {
						t.Fatalf("at +%s: writes %v, want %v", at.Sub(t0), writes, want)
					}
				}
			}
			step(t0, []time.Time{t0})
			step(t0.Add(c.window/2), nil)                         // within the window: no write
			step(t0.Add(c.window-time.Millisecond), nil)          // still within
			step(t0.Add(c.window), []time.Time{t0.Add(c.window)}) // the window has passed
			step(t0.Add(c.window+time.Second), nil)
		})
	}
}

// TestLastUsedBackground: the background flusher writes within the interval.
func TestLastUsedBackground(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org_1", domain.CreateKey{})
	e.project()
	v := e.verifier(func(c *Config) { c.LastUsedInterval = 50 * time.Millisecond })
	verify(t, v, k.Secret)
	testenv.WaitFor(t, 10*time.Second, "last_used_at to be written", func() bool {
		var n int
		_ = e.pool.QueryRow(e.ctx, `SELECT count(*) FROM keys WHERE last_used_at IS NOT NULL`).Scan(&n)
		return n == 1
	})
}

// insertKeyRow inserts a row into the key listing, as the projector would,
// with last_used_at at lastUsed (nil: NULL), and returns the key's id, whose
// ULID carries time at.
func insertKeyRow(t *testing.T, pool *pgxpool.Pool, at time.Time, lastUsed *time.Time) string {
	t.Helper()
	ulid, err := domain.NewULID(at, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := domain.KeyIDPrefix + ulid
	_, err = pool.Exec(t.Context(), `INSERT INTO keys
		(key_id, org_id, name, owner_type, owner_id, mask, permissions, status, created_at, last_used_at, metadata, version, last_seq)
		VALUES ($1, 'org_a', 'a key', 'organization', 'org_a', 'sk_…a1B2', '{}', 'active', $2, $3, '{}', 1, 1)`, id, at, lastUsed)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func lastUsedAt(t *testing.T, pool *pgxpool.Pool, id string) *time.Time {
	t.Helper()
	var at *time.Time
	if err := pool.QueryRow(t.Context(), `SELECT last_used_at FROM keys WHERE key_id = $1`, id).Scan(&at); err != nil {
		t.Fatal(err)
	}
	return at
}

// TestWriteLastUsed: the statement of the default flush sets last_used_at,
// never backwards, and ignores keys the listing does not hold.
func TestWriteLastUsed(t *testing.T) {
	t.Parallel()
	pool, _ := testworld.MigratedPool(t)
	ctx := t.Context()
	now := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	t0 := now.Add(-time.Hour)
	never := insertKeyRow(t, pool, t0, nil)
	before := insertKeyRow(t, pool, t0.Add(time.Millisecond), &t0)

	if err := WriteLastUsed(ctx, pool, nil); err != nil {
		t.Fatal(err)
	}
	unknown, err := domain.NewULID(now, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	err = WriteLastUsed(ctx, pool, []LastUsed{ // sorted by key id, as a flush hands them
		{KeyID: never, At: t0.Add(time.Minute)},
		{KeyID: before, At: t0.Add(-time.Minute)},      // older than recorded: ignored
		{KeyID: domain.KeyIDPrefix + unknown, At: now}, // unknown key: ignored
	})
	if err != nil {
		t.Fatal(err)
	}
	if at := lastUsedAt(t, pool, never); at == nil || !at.Equal(t0.Add(time.Minute)) {
		t.Fatalf("last_used_at of %s = %v, want %v", never, at, t0.Add(time.Minute))
	}
	if at := lastUsedAt(t, pool, before); at == nil || !at.Equal(t0) {
		t.Fatalf("last_used_at of %s = %v, want it kept at %v", before, at, t0)
	}
	if err := WriteLastUsed(ctx, pool, []LastUsed{{KeyID: before, At: t0.Add(time.Hour)}}); err != nil {
		t.Fatal(err)
	}
	if at := lastUsedAt(t, pool, before); at == nil || !at.Equal(t0.Add(time.Hour)) {
		t.Fatalf("last_used_at of %s = %v, want %v", before, at, t0.Add(time.Hour))
	}
}

// TestWriteLastUsedConcurrentOverlappingBatches: eight verifiers flush
// batches covering the same keys, each with its own times; the newest time
// wins and no flush fails (no deadlock).
func TestWriteLastUsedConcurrentOverlappingBatches(t *testing.T) {
	t.Parallel()
	pool, _ := testworld.MigratedPool(t)
	ctx := t.Context()
	now := time.Date(2030, 5, 1, 12, 0, 0, 0, time.UTC)
	keys := make([]string, 50)
	for i := range keys {
		keys[i] = insertKeyRow(t, pool, now.Add(-time.Hour+time.Duration(i)*time.Millisecond), nil)
	}
	slices.Sort(keys)

	var wg sync.WaitGroup
	errs := make(chan error, 8*20)
	for v := range 8 {
		wg.Go(func() {
			for round := range 20 {
				var batch []LastUsed
				for i, id := range keys {
					if (i+v+round)%3 != 0 {
						batch = append(batch, LastUsed{KeyID: id, At: now.Add(time.Duration(v*100+round) * time.Second)})
					}
				}
				if err := WriteLastUsed(ctx, pool, batch); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	var newest time.Time
	if err := pool.QueryRow(ctx, `SELECT max(last_used_at) FROM keys`).Scan(&newest); err != nil {
		t.Fatal(err)
	}
	if want := now.Add(719 * time.Second); !newest.Equal(want) {
		t.Fatalf("newest last_used_at %v, want %v", newest, want)
	}
}
