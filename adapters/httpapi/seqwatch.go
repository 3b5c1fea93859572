package httpapi

import (
	"context"
	"sync"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// watchInterval is how often the shared watcher reads the read models'
// applied sequence while any request waits for one.
const watchInterval = 5 * time.Millisecond

// sequenceWatcher is the one watcher of the read models' applied sequence
// that every min_sequence wait of a process shares (finding M4: each wait
// used to poll Postgres on its own). While at least one request waits, one
// goroutine reads the applied sequence every watchInterval and wakes the
// waits it satisfies; with none waiting it stops. So the number of
// Postgres queries waits cause depends on time, not on how many wait.
type sequenceWatcher struct {
	// applied reads the applied sequence (ReadModel.AppliedSequence).
	applied func(ctx context.Context) (uint64, error)

	mu      sync.Mutex
	last    uint64 // the highest applied sequence read so far
	err     error  // the last read's error, nil after a good read
	waiters map[*seqWaiter]struct{}
	running bool
}

type seqWaiter struct {
	want uint64
	done chan struct{} // closed once want is applied
}

// wait waits until the read models have applied want, for at most max,
// and returns the applied sequence. Errors: unavailable when max passes
// first (with the applied sequence seen last); ctx.Err() when ctx ends.
func (w *sequenceWatcher) wait(ctx context.Context, want uint64, max time.Duration) (uint64, error) {
	w.mu.Lock()
	if w.last >= want {
		last := w.last
		w.mu.Unlock()
		return last, nil
	}
	sw := &seqWaiter{want: want, done: make(chan struct{})}
	if w.waiters == nil {
		w.waiters = map[*seqWaiter]struct{}{}
	}
	w.waiters[sw] = struct{}{}
	if !w.running {
		w.running = true
		go w.run()
	}
	w.mu.Unlock()

	timer := time.NewTimer(max)
	defer timer.Stop()
	var err error
	select {
	case <-sw.done:
	case <-ctx.Done():
		err = ctx.Err()
	case <-timer.C:
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.waiters, sw)
	if w.last >= want {
		return w.last, nil
	}
	if err != nil {
		return w.last, err
	}
	if w.err != nil {
		return w.last, domain.Classify(w.err, readModels)
	}
	return w.last, domain.Errorf(domain.EUnavailable, "read model has applied sequence %d, not yet %d; retry", w.last, want)
}

// run reads the applied sequence every watchInterval, first at once,
// until no one waits.
func (w *sequenceWatcher) run() {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		seq, err := w.applied(ctx)
		cancel()
		w.mu.Lock()
		w.err = err
		if err == nil && seq > w.last {
			w.last = seq
		}
		for sw := range w.waiters {
			if sw.want <= w.last {
				close(sw.done)
				delete(w.waiters, sw)
			}
		}
		if len(w.waiters) == 0 {
			w.running = false
			w.mu.Unlock()
			return
		}
		w.mu.Unlock()
		time.Sleep(watchInterval)
	}
}
