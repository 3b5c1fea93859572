package eventstore

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/nats-io/nats.go/jetstream"
)

// runIdempotency is the shared table test of both idempotency stores.
func runIdempotency(t *testing.T, newStore func(t *testing.T) domain.IdempotencyStore) {
	t0 := time.Date(2030, 1, 2, 3, 4, 5, 6, time.UTC)
	const org, key = "org1", "idem-key-1"
	cases := []struct {
		name string
		fn   func(t *testing.T, ctx context.Context, s domain.IdempotencyStore)
	}{
		{"ReserveThenExisting", func(t *testing.T, ctx context.Context, s domain.IdempotencyStore) {
			rec, ok, err := s.Reserve(ctx, org, key, "k1", t0)
			if err != nil || !ok || rec.KeyID != "k1" || !rec.At.Equal(t0) || rec.Revision == 0 {
				t.Fatalf("first Reserve = %+v, %v, %v", rec, ok, err)
			}
			again, ok, err := s.Reserve(ctx, org, key, "k2", t0.Add(time.Hour))
			if err != nil || ok || again.KeyID != "k1" || !again.At.Equal(t0) || again.Revision != rec.Revision {
				t.Fatalf("second Reserve = %+v, %v, %v; want the first record", again, ok, err)
			}
		}},
		{"ScopedByOrgAndKey", func(t *testing.T, ctx context.Context, s domain.IdempotencyStore) {
			for _, c := range []struct{ org, key, id string }{{org, key, "a"}, {"org2", key, "b"}, {org, key + "x", "c"}, {org, strings.Repeat("é. *>", 100), "d"}} {
				rec, ok, err := s.Reserve(ctx, c.org, c.key, c.id, t0)
				if err != nil || !ok || rec.KeyID != c.id {
					t.Fatalf("Reserve(%s, %.10q) = %+v, %v, %v", c.org, c.key, rec, ok, err)
				}
			}
			if _, _, err := s.Reserve(ctx, "bad.org", key, "x", t0); err == nil {
				t.Fatalf("Reserve with an invalid org id: no error")
			}
		}},
		{"Replace", func(t *testing.T, ctx context.Context, s domain.IdempotencyStore) {
			old, _, err := s.Reserve(ctx, org, key, "k1", t0)
			if err != nil {
				t.Fatal(err)
			}
			ok, err := s.Replace(ctx, org, key, old, "k2", t0.Add(time.Minute))
			if err != nil || !ok {
				t.Fatalf("Replace = %v, %v", ok, err)
			}
			cur, reserved, err := s.Reserve(ctx, org, key, "k3", t0.Add(2*time.Minute))
			if err != nil || reserved || cur.KeyID != "k2" || !cur.At.Equal(t0.Add(time.Minute)) || cur.Revision == old.Revision {
				t.Fatalf("after Replace: %+v, %v, %v", cur, reserved, err)
			}
			// The stale record no longer matches.
			if ok, err := s.Replace(ctx, org, key, old, "k4", t0); err != nil || ok {
				t.Fatalf("Replace of a stale record = %v, %v; want false", ok, err)
			}
			if ok, err := s.Replace(ctx, org, "never-reserved", domain.IdempotencyRecord{KeyID: "x", Revision: cur.Revision}, "k5", t0); err != nil || ok {
				t.Fatalf("Replace of no record = %v, %v; want false", ok, err)
			}
		}},
		{"ConcurrentReplaceOneWins", func(t *testing.T, ctx context.Context, s domain.IdempotencyStore) {
			old, _, err := s.Reserve(ctx, org, key, "k0", t0)
			if err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			wins := make([]bool, 10)
			for i := range wins {
				wg.Go(func() {
					ok, err := s.Replace(ctx, org, key, old, "k", t0)
					if err != nil {
						t.Error(err)
					}
					wins[i] = ok
				})
			}
			wg.Wait()
			n := 0
			for _, w := range wins {
				if w {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d Replaces of one record won, want 1", n)
			}
		}},
		{"Release", func(t *testing.T, ctx context.Context, s domain.IdempotencyStore) {
			if err := s.Release(ctx, org, key, domain.IdempotencyRecord{KeyID: "k1", Revision: 1}); err != nil {
				t.Fatalf("Release of no record: %v", err)
			}
			first, ok, err := s.Reserve(ctx, org, key, "k1", t0)
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			// Taken over (replaced, same key id): the first holder's Release
			// must leave the record.
			if ok, err := s.Replace(ctx, org, key, first, "k1", t0.Add(time.Second)); err != nil || !ok {
				t.Fatalf("Replace = %v, %v", ok, err)
			}
			if err := s.Release(ctx, org, key, first); err != nil {
				t.Fatal(err)
			}
			cur, ok, _ := s.Reserve(ctx, org, key, "k2", t0)
			if ok || cur.KeyID != "k1" {
				t.Fatalf("Release at an old revision removed the record: %+v, %v", cur, ok)
			}
			if err := s.Release(ctx, org, key, cur); err != nil {
				t.Fatal(err)
			}
			if rec, ok, err := s.Reserve(ctx, org, key, "k2", t0); err != nil || !ok || rec.KeyID != "k2" {
				t.Fatalf("Reserve after Release = %+v, %v, %v", rec, ok, err)
			}
		}},
		{"ExpiresAfterWindow", func(t *testing.T, ctx context.Context, s domain.IdempotencyStore) {
			if _, _, err := s.Reserve(ctx, org, key, "k1", t0); err != nil {
				t.Fatal(err)
			}
			if rec, ok, _ := s.Reserve(ctx, org, key, "k2", t0.Add(domain.IdempotencyWindow-time.Second)); ok || rec.KeyID != "k1" {
				t.Fatalf("within the window: %+v, %v", rec, ok)
			}
			later := t0.Add(domain.IdempotencyWindow)
			rec, ok, err := s.Reserve(ctx, org, key, "k2", later)
			if err != nil || !ok || rec.KeyID != "k2" || !rec.At.Equal(later) {
				t.Fatalf("after the window: %+v, %v, %v", rec, ok, err)
			}
			if rec2, ok, _ := s.Reserve(ctx, org, key, "k3", later.Add(time.Hour)); ok || rec2.KeyID != "k2" {
				t.Fatalf("new record within its window: %+v, %v", rec2, ok)
			}
		}},
		{"ConcurrentReserveOneWins", func(t *testing.T, ctx context.Context, s domain.IdempotencyStore) {
			var wg sync.WaitGroup
			recs := make([]domain.IdempotencyRecord, 10)
			oks := make([]bool, 10)
			for i := range recs {
				wg.Go(func() {
					var err error
					recs[i], oks[i], err = s.Reserve(ctx, org, key, "k"+string(rune('a'+i)), t0)
					if err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			winner := ""
			for i, ok := range oks {
				if ok {
					if winner != "" {
						t.Fatalf("two Reserves won")
					}
					winner = recs[i].KeyID
				}
			}
			for i := range recs {
				if recs[i].KeyID != winner {
					t.Fatalf("Reserve %d saw %q, the winner is %q", i, recs[i].KeyID, winner)
				}
			}
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.fn(t, t.Context(), newStore(t))
		})
	}
}

func TestMemoryIdempotency(t *testing.T) {
	t.Parallel()
	runIdempotency(t, func(t *testing.T) domain.IdempotencyStore { return NewMemoryIdempotency() })
}

func TestKVIdempotency(t *testing.T) {
	t.Parallel()
	runIdempotency(t, func(t *testing.T) domain.IdempotencyStore {
		srv := startServer(t, t.TempDir())
		_, js := connect(t, srv.ClientURL())
		s, err := NewKVIdempotency(t.Context(), js, 1)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

func TestKVIdempotencyBucket(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	_, js := connect(t, srv.ClientURL())
	ctx := t.Context()
	if _, err := NewKVIdempotency(ctx, js, 1); err != nil {
		t.Fatal(err)
	}
	if _, err := NewKVIdempotency(ctx, js, 1); err != nil {
		t.Fatalf("second NewKVIdempotency: %v", err)
	}
	kv, err := js.KeyValue(ctx, IdempotencyBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.Config()
	if cfg.TTL != domain.IdempotencyWindow || cfg.History != 1 || cfg.Storage != jetstream.FileStorage || cfg.Replicas != 1 {
		t.Fatalf("bucket config: %+v", cfg)
	}
	// The stored key is the org and a hash; the value names the key id.
	if _, _, err := (&KVIdempotency{kv: kv}).Reserve(ctx, "org1", "secret-ish idempotency key", "k1", time.Now()); err != nil {
		t.Fatal(err)
	}
	keys, err := kv.Keys(ctx)
	if err != nil || len(keys) != 1 || !strings.HasPrefix(keys[0], "org1.") || len(keys[0]) != len("org1.")+64 {
		t.Fatalf("keys = %v, %v", keys, err)
	}
}

// TestKVIdempotencySurvivesRestart: a reservation outlives the server.
func TestKVIdempotencySurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()
	now := time.Now()
	srv := startServer(t, dir)
	_, js := connect(t, srv.ClientURL())
	s, err := NewKVIdempotency(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	first, ok, err := s.Reserve(ctx, "org1", "k", "key_1", now)
	if err != nil || !ok {
		t.Fatalf("Reserve = %v, %v", ok, err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()

	srv2 := startServer(t, dir)
	_, js2 := connect(t, srv2.ClientURL())
	s2, err := NewKVIdempotency(ctx, js2, 1)
	if err != nil {
		t.Fatal(err)
	}
	rec, ok, err := s2.Reserve(ctx, "org1", "k", "key_2", now.Add(time.Minute))
	if err != nil || ok || rec.KeyID != "key_1" || rec.Revision != first.Revision || !rec.At.Equal(first.At) {
		t.Fatalf("Reserve after restart = %+v, %v, %v; want %+v", rec, ok, err, first)
	}
}
