package bench

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"runtime"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/verifier"
)

// runVerifyScale: at each of opts.ScaleSizes key counts, a verifier is
// booted from a snapshot of that many keys (best of two boots, beside the
// best of two raw reads of the same rows), its heap per key measured, and
// Verify timed on random keys beside the digest + map floor. Value: the
// boot at the largest size; baseline: its raw read. Met: every size boots
// within 1.5x its raw read and holds under 300 bytes per key.
func runVerifyScale(ctx context.Context, r *runner) (Result, error) {
	r.init()
	params := map[string]any{
		"sizes":    r.opts.ScaleSizes,
		"measured": "per size: boot = best of 2 Verifier.Start from the Postgres snapshot, raw = best of 2 reads of the same rows into nothing; bytes = heap after GC with the verifier alive minus before; verify/floor ns = wall time per operation from VerifyGoroutines goroutines on random keys, 3 alternating rounds, median",
	}
	met := true
	var value, floor float64
	for _, n := range r.opts.ScaleSizes {
		sz := thousands(int64(n))
		ks := r.keys
		if ks == nil || len(ks.secrets) != n {
			r.phase("generating %s secrets", sz)
			ks = genKeys(n, r.dig)
		}
		// Only the snapshot: the listing is not read here.
		if err := r.copyKeys(ctx, ks, false); err != nil {
			return Result{}, err
		}
		r.keysLoaded = false // the database no longer holds opts.Keys' listing
		var bestBoot, bestRaw time.Duration
		var bytesPerKey, verifyNs, floorNs float64
		for run := range 2 {
			r.phase("%s keys: raw read, run %d of 2", sz, run+1)
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
			w, err := r.newWorld(ctx, fmt.Sprintf("verify_scale_%d_%d", n, run))
			if err != nil {
				return Result{}, err
			}
			runtime.GC()
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			r.phase("%s keys: verifier boot, run %d of 2", sz, run+1)
			v, took, err := r.bootVerifier(ctx, w, discardLastUsed)
			if err != nil {
				w.close()
				return Result{}, err
			}
			runtime.GC()
			runtime.ReadMemStats(&after)
			if run == 0 || took < bestBoot {
				bestBoot = took
			}
			bytesPerKey = max(bytesPerKey, float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/float64(n))
			if got := v.Status().Keys; got != n {
				v.Close()
				w.close()
				return Result{}, fmt.Errorf("the verifier holds %d keys, want %d", got, n)
			}
			if run == 1 {
				verifyNs, floorNs, err = r.verifyAndFloor(ctx, v.Verify, ks, sz)
			}
			v.Close()
			w.close()
			if err != nil {
				return Result{}, err
			}
		}
		key := fmt.Sprintf("%d_", n)
		params[key+"boot_s"] = round(bestBoot.Seconds(), 3)
		params[key+"raw_read_s"] = round(bestRaw.Seconds(), 3)
		params[key+"boot_ratio"] = round(bestBoot.Seconds()/bestRaw.Seconds(), 3)
		params[key+"bytes_per_key"] = round(bytesPerKey, 1)
		params[key+"verify_ns"] = round(verifyNs, 1)
		params[key+"floor_ns"] = round(floorNs, 1)
		params[key+"verify_ratio"] = round(verifyNs/floorNs, 3)
		if bestBoot.Seconds() > 1.5*bestRaw.Seconds() || bytesPerKey >= 300 {
			met = false
		}
		value, floor = round(bestBoot.Seconds(), 3), round(bestRaw.Seconds(), 3)
	}
	largest := r.opts.ScaleSizes[len(r.opts.ScaleSizes)-1]
	res := Result{
		Name: "verify_scale", Value: value, Unit: fmt.Sprintf("s (boot, %s keys)", thousands(int64(largest))),
		Baseline: Baseline{Name: "raw read of the same rows", Value: floor},
		Better:   "lower",
		Goal:     "at every size: boot ≤ 1.5x the raw read and < 300 bytes/key",
		Params:   params,
		Met:      met,
	}
	return res, nil
}

// verifyAndFloor times verify on random keys of ks beside the floor (the
// keyed digest and one Go map lookup of the same digests), three rounds
// each, taking turns; it returns the medians, ns per operation.
func (r *runner) verifyAndFloor(ctx context.Context, verify func(context.Context, string, ...string) (verifier.Result, error), ks *keySet, label string) (float64, float64, error) {
	n := len(ks.secrets)
	floor := make(map[domain.Digest]*floorEntry, n)
	entries := make([]floorEntry, n)
	for i := range ks.digests {
		floor[ks.digests[i]] = &entries[i]
	}
	secrets, dig, bg := ks.secrets, r.dig, context.Background()
	res, err := r.alternate(ctx, r.opts.VerifyGoroutines, 3, r.opts.ScaleVerifyDuration, []namedOp{
		{label + " keys: Verify, random keys", func(rng *mrand.Rand) bool {
			_, err := verify(bg, secrets[rng.IntN(n)])
			return err == nil
		}},
		{label + " keys: floor, random keys", func(rng *mrand.Rand) bool { return floor[dig.Digest(secrets[rng.IntN(n)])] != nil }},
	})
	if err != nil {
		return 0, 0, err
	}
	return res[0].median, res[1].median, nil
}
