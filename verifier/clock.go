package verifier

import (
	"context"
	"sync/atomic"
	"time"
)

// The coarse clock. Reading the real clock (time.Now) costs little alone,
// but the ordered TSC read behind it keeps the CPU from overlapping one
// verification's cache misses with the next one's work: on the hot path it
// was about a third of a Verify. So Verify reads a clock that a background
// goroutine keeps: an atomic, renewed every coarseTick while verifications
// happen. The real clock still decides whenever the coarse one could give
// a different answer that matters:
//
//   - the first verification after an idle spell (when the clock goroutine
//     ticks slowly, see coarseIdleTick) reads the real clock;
//   - staleness: when the coarse reading puts the last contact more than
//     half of MaxStaleness ago, the real clock decides (so the coarse clock
//     would have to lag by half of MaxStaleness to vouch for a stale
//     verifier; it lags by a tick, plus whatever CPU starvation delays the
//     goroutine);
//   - expiry: a key expiring within coarseSlack of the coarse reading is
//     judged on the real clock.
//
// Last use is recorded at the coarse time (its resolution is a minute by
// default).

const (
	coarseTick     = time.Millisecond
	coarseIdleTick = 50 * time.Millisecond
	// coarseSlack: a key whose expiry is this close to the coarse time is
	// judged on the real clock.
	coarseSlack = time.Second
)

// coarseClock is the clock Verify reads; see above.
type coarseClock struct {
	_ [64]byte // nothing before shares the cache line
	// mono is the contact clock (contact.at) at the last tick, ns.
	mono atomic.Int64
	// wallOffset is the Unix time in ns minus mono, as of the last tick:
	// the wall time at mono m is m + wallOffset (the wall clock may be
	// stepped; the next tick follows it).
	wallOffset atomic.Int64
	// idle is set by each tick and cleared by Verify: set at a tick, no
	// verification ran since the one before.
	idle atomic.Bool
	_    [64 - 17]byte // the fields above share one cache line, alone
}

// set records reading t (time.Now) of contact clock c.
func (cc *coarseClock) set(c *contact, t time.Time) {
	m := c.at(t)
	cc.wallOffset.Store(t.UnixNano() - int64(m))
	cc.mono.Store(int64(m))
}

// read returns the coarse contact-clock instant and wall time (Unix ns).
func (cc *coarseClock) read() (time.Duration, int64) {
	m := cc.mono.Load()
	return time.Duration(m), m + cc.wallOffset.Load()
}

// clockLoop keeps v.coarse until ctx ends: every coarseTick while
// verifications happen, every coarseIdleTick otherwise.
func (v *Verifier) clockLoop(ctx context.Context) {
	cc := &v.coarse
	tick := coarseTick
	t := time.NewTimer(tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cc.set(&v.contact, time.Now())
		if cc.idle.Swap(true) {
			tick = coarseIdleTick
		} else {
			tick = coarseTick
		}
		t.Reset(tick)
	}
}
