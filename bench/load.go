package bench

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// loadResult is a closed-loop load's figures.
type loadResult struct {
	rps float64 // operations per second
	n   int64
	el  time.Duration
	lat latencies // sorted
}

// merge adds another measurement of the same load.
func (l loadResult) merge(o loadResult) loadResult {
	l.n += o.n
	l.el += o.el
	l.lat = append(l.lat, o.lat...).sorted()
	l.rps = float64(l.n) / l.el.Seconds()
	return l
}

// closedLoop runs clients workers, each doing one operation at a time as
// fast as they are answered: warm (not measured), then d measured. worker(c)
// returns client c's operation, called with 0, 1, 2...; its time is the
// latency. The first error stops the load and is returned.
func (r *runner) closedLoop(ctx context.Context, label, unit string, clients int, warm, d time.Duration, worker func(c int) func(i int) error) (loadResult, error) {
	ops := make([]func(int) error, clients)
	for c := range ops {
		ops[c] = worker(c)
	}
	counters := make([]int, clients)
	phase := func(d time.Duration, record bool) (loadResult, error) {
		var stop atomic.Bool
		var count atomic.Int64
		var firstErr error
		var errOnce sync.Once
		samples := make([]latencies, clients)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for c := range clients {
			wg.Go(func() {
				var lat latencies
				if record {
					lat = make(latencies, 0, 1<<12)
				}
				op := ops[c]
				<-start
				for !stop.Load() {
					t := time.Now()
					err := op(counters[c])
					el := time.Since(t)
					counters[c]++
					if err != nil {
						errOnce.Do(func() { firstErr = err })
						stop.Store(true)
						break
					}
					if record {
						lat = append(lat, el)
					}
					count.Add(1)
				}
				samples[c] = lat
			})
		}
		t0 := time.Now()
		close(start)
		for {
			left := d - time.Since(t0)
			if left <= 0 || ctx.Err() != nil || stop.Load() {
				break
			}
			if record {
				el := time.Since(t0)
				r.tick("%s: %.1fs of %.1fs, %s %s", label, el.Seconds(), d.Seconds(), human(float64(count.Load())/el.Seconds()), unit)
			}
			time.Sleep(min(left, 100*time.Millisecond))
		}
		stop.Store(true)
		wg.Wait()
		el := time.Since(t0)
		if err := ctx.Err(); err != nil {
			return loadResult{}, err
		}
		if firstErr != nil {
			return loadResult{}, firstErr
		}
		var all latencies
		for _, s := range samples {
			all = append(all, s...)
		}
		n := count.Load()
		return loadResult{rps: float64(n) / el.Seconds(), n: n, el: el, lat: all.sorted()}, nil
	}
	if warm > 0 {
		r.phase("%s: %d clients, warm-up", label, clients)
		if _, err := phase(warm, false); err != nil {
			return loadResult{}, err
		}
	}
	r.phase("%s: %d clients for %s", label, clients, d)
	return phase(d, true)
}
