package bench

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/verifier"
)

// floorEntry is what the floor map points to (never dereferenced: the
// floor is the digest and the lookup only).
type floorEntry struct{ _ [8]byte }

// runVerifyInProcess: a verifier booted from the Postgres snapshot of
// opts.Keys keys answers Verify on random keys from many goroutines; the
// floor is the keyed digest plus one lookup in a plain Go map of the same
// digests, with the same goroutines and the same key picks.
func runVerifyInProcess(ctx context.Context, r *runner) (Result, error) {
	ks, err := r.loadKeys(ctx)
	if err != nil {
		return Result{}, err
	}
	w, err := r.newWorld(ctx, "verify_inprocess")
	if err != nil {
		return Result{}, err
	}
	defer w.close()
	r.phase("booting a verifier from the snapshot")
	// Last uses are recorded in memory as always; their batches are
	// dropped instead of written to Postgres (which would share the 2
	// cores with Verify here; verify_http keeps the write).
	v, boot, err := r.bootVerifier(ctx, w, discardLastUsed)
	if err != nil {
		return Result{}, err
	}
	defer v.Close()
	n := len(ks.secrets)
	if got := v.Status().Keys; got != n {
		return Result{}, fmt.Errorf("the verifier holds %d keys, want %d", got, n)
	}
	if err := checkVerdicts(ctx, v, ks); err != nil {
		return Result{}, err
	}

	secrets := ks.secrets
	floor := make(map[domain.Digest]*floorEntry, n)
	entries := make([]floorEntry, n)
	for i := range ks.digests {
		floor[ks.digests[i]] = &entries[i]
	}
	dig := r.dig
	bg := context.Background()
	verifyAny := func(rng *mrand.Rand) bool {
		_, err := v.Verify(bg, secrets[rng.IntN(n)])
		return err == nil
	}
	floorAny := func(rng *mrand.Rand) bool { return floor[dig.Digest(secrets[rng.IntN(n)])] != nil }
	hot := min(n, 1000)
	verifyHot := func(rng *mrand.Rand) bool {
		_, err := v.Verify(bg, secrets[rng.IntN(hot)])
		return err == nil
	}
	floorHot := func(rng *mrand.Rand) bool { return floor[dig.Digest(secrets[rng.IntN(hot)])] != nil }

	g, d := r.opts.VerifyGoroutines, r.opts.VerifyDuration
	// Verify and its floor take turns, several rounds each, so that
	// whatever else the machine does weighs on both alike; medians.
	const rounds = 5
	random, err := r.alternate(ctx, g, rounds, d, []namedOp{
		{"Verify, random keys", verifyAny}, {"floor, random keys", floorAny}})
	if err != nil {
		return Result{}, err
	}
	hotRes, err := r.alternate(ctx, g, rounds, d/3, []namedOp{
		{"Verify, 1,000 hot keys", verifyHot}, {"floor, 1,000 hot keys", floorHot}})
	if err != nil {
		return Result{}, err
	}
	verifyNs, floorNs, hotNs, hotFloorNs := random[0].median, random[1].median, hotRes[0].median, hotRes[1].median
	verifyOps, floorOps := random[0].ops, random[1].ops
	res := Result{
		Name: "verify_inprocess", Value: round(verifyNs, 1), Unit: "ns/op",
		Baseline: Baseline{Name: "digest + map lookup", Value: round(floorNs, 1)},
		Better:   "lower",
		Goal:     "ratio ≤ 1.5",
		Params: map[string]any{
			"keys":         n,
			"goroutines":   g,
			"duration_s":   d.Seconds(),
			"rounds":       rounds,
			"rounds_ns":    random[0].rounds,
			"floor_rounds": random[1].rounds,
			"ops":          verifyOps,
			"floor_ops":    floorOps,
			"hot_ns":       round(hotNs, 1),
			"hot_floor_ns": round(hotFloorNs, 1),
			"boot_seconds": round(boot.Seconds(), 3),
			"last_use":     "recorded in memory per verification; flushed batches discarded",
			"key_mix":      "1,000 orgs, 12 permission sets, 10% with metadata, 10% expiring in 5 years, 2% revoked",
		},
	}
	res.Met = res.Value <= 1.5*res.Baseline.Value
	return res, nil
}

// checkVerdicts checks the verifier's verdicts on the first keys.
func checkVerdicts(ctx context.Context, v *verifier.Verifier, ks *keySet) error {
	for i := range min(len(ks.secrets), 2000) {
		res, err := v.Verify(ctx, ks.secrets[i])
		if err != nil {
			return fmt.Errorf("verify key %d: %w", i, err)
		}
		want := verifier.CodeValid
		if keyRevoked(i) {
			want = verifier.CodeRevoked
		}
		if res.Code != want {
			return fmt.Errorf("verify key %d: %s, want %s", i, res.Code, want)
		}
	}
	return nil
}

type namedOp struct {
	name string
	op   func(*mrand.Rand) bool
}

type alternated struct {
	median float64   // ns per operation, median of the rounds
	rounds []float64 // ns per operation of each round
	ops    int64     // operations, all rounds
}

// alternate measures the ops in turn, rounds times each, d in all per op.
func (r *runner) alternate(ctx context.Context, goroutines, rounds int, d time.Duration, ops []namedOp) ([]alternated, error) {
	out := make([]alternated, len(ops))
	for round := range rounds {
		for i, o := range ops {
			ns, n, err := r.parallel(ctx, fmt.Sprintf("%s (round %d of %d)", o.name, round+1, rounds), goroutines, d/time.Duration(rounds), o.op)
			if err != nil {
				return nil, err
			}
			out[i].rounds = append(out[i].rounds, round1(ns))
			out[i].ops += n
		}
	}
	for i := range out {
		s := slices.Clone(out[i].rounds)
		slices.Sort(s)
		out[i].median = s[len(s)/2]
	}
	return out, nil
}

func round1(v float64) float64 { return round(v, 1) }

// parallel runs op from goroutines goroutines for d (after a short warm-up)
// and returns the wall time per operation (elapsed / all operations, as
// testing's RunParallel reports it) and the number of operations. op
// returning false is a failure.
func (r *runner) parallel(ctx context.Context, label string, goroutines int, d time.Duration, op func(*mrand.Rand) bool) (float64, int64, error) {
	run := func(d time.Duration, show bool) (time.Duration, int64, int64) {
		var stop atomic.Bool
		var total, fails atomic.Int64
		start := make(chan struct{})
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Go(func() {
				rng := mrand.New(mrand.NewPCG(uint64(g)+1, uint64(time.Now().UnixNano())))
				var n, f int64
				<-start
				for !stop.Load() {
					for range 64 {
						if !op(rng) {
							f++
						}
					}
					n += 64
				}
				total.Add(n)
				fails.Add(f)
			})
		}
		t0 := time.Now()
		close(start)
		for {
			left := d - time.Since(t0)
			if left <= 0 || ctx.Err() != nil {
				break
			}
			if show {
				r.tick("%s: %.1fs of %.1fs", label, time.Since(t0).Seconds(), d.Seconds())
			}
			time.Sleep(min(left, 100*time.Millisecond))
		}
		stop.Store(true)
		wg.Wait()
		return time.Since(t0), total.Load(), fails.Load()
	}
	r.phase("%s (%d goroutines)", label, goroutines)
	run(min(d/5, 100*time.Millisecond), false)
	el, ops, fails := run(d, true)
	if err := ctx.Err(); err != nil {
		return 0, 0, err
	}
	if fails > 0 {
		return 0, 0, fmt.Errorf("%s: %d of %d operations failed", label, fails, ops)
	}
	return float64(el.Nanoseconds()) / float64(ops), ops, nil
}

// runVerifierBoot: boot a verifier from the snapshot of opts.Keys keys
// (Start: snapshot transaction, stream state, consumer, caught up) and
// measure the heap it holds per key; the floor reads the same query's rows
// into nothing. Best of opts.BootRuns each, alternating.
func runVerifierBoot(ctx context.Context, r *runner) (Result, error) {
	ks, err := r.loadKeys(ctx)
	if err != nil {
		return Result{}, err
	}
	n := len(ks.secrets)
	var best, bestRaw time.Duration
	bytesPerKey := 0.0
	var bytesRuns []float64
	for run := range r.opts.BootRuns {
		r.phase("raw read of the snapshot, run %d of %d", run+1, r.opts.BootRuns)
		took, rows, err := rawSnapshotRead(ctx, r)
		if err != nil {
			return Result{}, err
		}
		if rows != n {
			return Result{}, fmt.Errorf("the raw read got %d rows, want %d", rows, n)
		}
		if run == 0 || took < bestRaw {
			bestRaw = took
		}

		r.phase("verifier boot, run %d of %d", run+1, r.opts.BootRuns)
		// A world (NATS server) per boot, closed after it, so that nothing
		// of an earlier verifier is still reachable when the heap is read.
		w, err := r.newWorld(ctx, fmt.Sprintf("verifier_boot_%d", run+1))
		if err != nil {
			return Result{}, err
		}
		runtime.GC()
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		v, took, err := r.bootVerifier(ctx, w, discardLastUsed)
		if err != nil {
			w.close()
			return Result{}, err
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		keys := v.Status().Keys
		v.Close()
		w.close()
		if keys != n {
			return Result{}, fmt.Errorf("the verifier holds %d keys, want %d", keys, n)
		}
		b := float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(n)
		bytesRuns = append(bytesRuns, round(b, 1))
		if run == 0 || took < best {
			best = took
		}
		bytesPerKey = max(bytesPerKey, b)
	}
	res := Result{
		Name: "verifier_boot", Value: round(best.Seconds(), 3), Unit: "s",
		Baseline: Baseline{Name: "raw read of the same rows", Value: round(bestRaw.Seconds(), 3)},
		Better:   "lower",
		Goal:     "ratio ≤ 1.5, < 300 bytes/key",
		Params: map[string]any{
			"keys":               n,
			"runs":               r.opts.BootRuns,
			"bytes_per_key":      round(bytesPerKey, 1),
			"bytes_per_key_runs": bytesRuns,
			"keys_per_sec":       round(float64(n)/best.Seconds(), 0),
			"floor_seconds":      round(bestRaw.Seconds(), 3),
			"measured":           "seconds: best of runs, Verifier.Start from New to caught up; bytes: heap after GC with the verifier alive minus before, largest of runs",
		},
	}
	res.Met = res.Value <= 1.5*res.Baseline.Value && bytesPerKey < 300
	return res, nil
}

// rawSnapshotRead reads the verifier's snapshot query in a REPEATABLE READ
// read-only transaction, as the verifier does, into nothing.
func rawSnapshotRead(ctx context.Context, r *runner) (time.Duration, int, error) {
	start := time.Now()
	tx, err := r.db.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // read-only
	rows, err := tx.Query(ctx, verifier.SnapshotQuery)
	if err != nil {
		return 0, 0, err
	}
	n := 0
	for rows.Next() {
		_ = rows.RawValues()
		n++
	}
	if err := rows.Err(); err != nil {
		return 0, 0, err
	}
	return time.Since(start), n, nil
}
