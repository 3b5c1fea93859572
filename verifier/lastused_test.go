package verifier

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// TestLastUsedFlush: many verifications of a few keys become one statement
// that sets their last_used_at, never backwards; keys not used stay NULL.
func TestLastUsedFlush(t *testing.T) {
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

// TestLastUsedBackground: the background flusher writes within the interval.
func TestLastUsedBackground(t *testing.T) {
	e := newEnv(t)
	k := e.create("org_1", domain.CreateKey{})
	e.project()
	v := e.verifier(func(c *Config) { c.LastUsedInterval = 50 * time.Millisecond })
	verify(t, v, k.Secret)
	waitFor(t, 10*time.Second, "last_used_at to be written", func() bool {
		var n int
		_ = e.pool.QueryRow(e.ctx, `SELECT count(*) FROM keys WHERE last_used_at IS NOT NULL`).Scan(&n)
		return n == 1
	})
}
