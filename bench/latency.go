package bench

import (
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// latencyLoads are the fractions of the fixed reply's saturation rate at
// which verify_latency sends requests; latencyGoalLoad is the one its goal
// is set at.
var latencyLoads = []float64{0.25, 0.50, 0.90}

const latencyGoalLoad = 0.50

// runVerifyLatency: latency at fixed request rates. The fixed-reply route
// (verify_http's floor) is first loaded closed-loop to find its saturation
// rate on this machine now; then keyd's POST /v1/keys/verify and the
// fixed-reply route each get requests on a fixed schedule (open loop) at
// 25%, 50% and 90% of that rate, from HTTPConns keep-alive connections, each
// latency measured from the request's scheduled time, so that a stall
// counts for every request it holds up (no coordinated omission). keyd
// writes last uses to Postgres as it does in production. Value: keyd's p99
// at 50%; baseline: the fixed reply's p99 at the same rate.
func runVerifyLatency(ctx context.Context, r *runner) (Result, error) {
	ks, err := r.loadKeys(ctx)
	if err != nil {
		return Result{}, err
	}
	w, err := r.newWorld(ctx, "verify_latency")
	if err != nil {
		return Result{}, err
	}
	defer w.close()
	r.phase("booting a verifier from the snapshot")
	v, _, err := r.bootVerifier(ctx, w, nil) // last uses written to keys.last_used_at, as keyd does
	if err != nil {
		return Result{}, err
	}
	defer v.Close()
	base, stop, err := r.serveVerify(ctx, v, ks, nil)
	if err != nil {
		return Result{}, err
	}
	defer stop()
	conns := r.opts.HTTPConns
	keydClient, closeKeyd := newHTTPClient(conns)
	defer closeKeyd()
	fixedClient, closeFixed := newHTTPClient(conns)
	defer closeFixed()

	sat, err := r.httpLoad(ctx, fixedClient, base+fixedPath, "fixed reply, saturation (closed loop)", ks.secrets, checkVerify, r.opts.HTTPWarmup, r.opts.LatencySaturation)
	if err != nil {
		return Result{}, err
	}
	// keyd's route is warmed as much.
	if _, err := r.httpLoad(ctx, keydClient, base+"/v1/keys/verify", "keyd verify, warm-up", ks.secrets, checkVerify, 0, r.opts.HTTPWarmup); err != nil {
		return Result{}, err
	}
	if err := v.FlushLastUsed(ctx); err != nil {
		return Result{}, err
	}
	params := map[string]any{
		"keys":           len(ks.secrets),
		"conns":          conns,
		"saturation_rps": round(sat.rps, 0),
		"duration_s":     r.opts.LatencyDuration.Seconds(),
		"loads":          latencyLoads,
		"measured":       "open loop: requests sent on a fixed schedule from conns keep-alive connections; latency from the scheduled send time to the reply read, so time waiting for a free connection counts",
		"last_use":       "written to keys.last_used_at by the verifier, as keyd does; leftovers flushed after each keyd round, untimed",
		"client":         "in-process net/http, random keys",
	}
	var value, floor float64
	for _, load := range latencyLoads {
		rate := load * sat.rps
		var keyd, fixed latencies
		// Two rounds each, taking turns.
		for round := range 2 {
			d := r.opts.LatencyDuration / 2
			lat, err := r.openLoop(ctx, keydClient, base+"/v1/keys/verify", fmt.Sprintf("keyd verify at %.0f%% (%s req/s), round %d of 2", 100*load, human(rate), round+1), ks.secrets, rate, d)
			if err != nil {
				return Result{}, err
			}
			keyd = append(keyd, lat...)
			if err := v.FlushLastUsed(ctx); err != nil {
				return Result{}, err
			}
			lat, err = r.openLoop(ctx, fixedClient, base+fixedPath, fmt.Sprintf("fixed reply at %.0f%% (%s req/s), round %d of 2", 100*load, human(rate), round+1), ks.secrets, rate, d)
			if err != nil {
				return Result{}, err
			}
			fixed = append(fixed, lat...)
		}
		keyd, fixed = keyd.sorted(), fixed.sorted()
		pct := fmt.Sprintf("%.0f", 100*load)
		params["rate_"+pct+"_rps"] = round(rate, 0)
		params["keyd_"+pct+"_p50_ms"] = ms(keyd.pct(0.50))
		params["keyd_"+pct+"_p99_ms"] = ms(keyd.pct(0.99))
		params["keyd_"+pct+"_p999_ms"] = ms(keyd.pct(0.999))
		params["fixed_"+pct+"_p50_ms"] = ms(fixed.pct(0.50))
		params["fixed_"+pct+"_p99_ms"] = ms(fixed.pct(0.99))
		params["fixed_"+pct+"_p999_ms"] = ms(fixed.pct(0.999))
		params["requests_"+pct] = len(keyd) + len(fixed)
		if load == latencyGoalLoad {
			value, floor = ms(keyd.pct(0.99)), ms(fixed.pct(0.99))
		}
	}
	res := Result{
		Name: "verify_latency", Value: value, Unit: "ms (p99 at 50%)",
		Baseline: Baseline{Name: "fixed reply, same stack, same rate, p99", Value: floor},
		Better:   "lower",
		Goal:     "ratio ≤ 2 at 50% of the fixed reply's saturation rate",
		Params:   params,
	}
	res.Met = value <= 2*floor
	return res, nil
}

// openLoop posts verify requests of random keys of secrets to url at rate
// per second for d: request i is due at start + i/rate and is sent by the
// first of HTTPConns connections free at or after that time; its latency
// runs from when it was due to when its reply was read. Every reply must be
// 200; every 256th is checked with checkVerify.
func (r *runner) openLoop(ctx context.Context, client *http.Client, url, label string, secrets []string, rate float64, d time.Duration) (latencies, error) {
	conns := r.opts.HTTPConns
	interval := time.Duration(float64(time.Second) / rate)
	total := int64(d / interval)
	var next atomic.Int64
	var failed atomic.Bool
	var firstErr error
	var errOnce sync.Once
	samples := make([]latencies, conns)
	start := time.Now().Add(5 * time.Millisecond)
	var wg sync.WaitGroup
	for c := range conns {
		wg.Go(func() {
			rng := mrand.New(mrand.NewPCG(uint64(c)+1, uint64(time.Now().UnixNano())))
			p := r.newPoster(ctx, client, url)
			lat := make(latencies, 0, total/int64(conns)+16)
			for !failed.Load() && ctx.Err() == nil {
				i := next.Add(1) - 1
				if i >= total {
					break
				}
				due := start.Add(time.Duration(i) * interval)
				if wait := time.Until(due); wait > 0 {
					time.Sleep(wait)
				}
				reply, err := p.post(secrets[rng.IntN(len(secrets))])
				if err == nil && i%256 == 0 {
					err = checkVerify(reply)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
					failed.Store(true)
					break
				}
				lat = append(lat, time.Since(due))
			}
			samples[c] = lat
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	r.phase("%s: %d connections for %s", label, conns, d)
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-time.After(100 * time.Millisecond):
			r.tick("%s: %s of %s requests", label, thousands(min(next.Load(), total)), thousands(total))
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if firstErr != nil {
		return nil, firstErr
	}
	var all latencies
	for _, s := range samples {
		all = append(all, s...)
	}
	return all, nil
}
