package projections

import (
	"sync"
	"time"

	"github.com/keyd-dev/keyd/eventstore"
)

// reject reports events the projector set aside (after their batch
// committed): OnRejected for each, and a log line at most once a second
// (with the count of the others since).
func (p *Projector) reject(rs []eventstore.Rejection) {
	for _, r := range rs {
		if p.OnRejected != nil {
			p.OnRejected(r)
		}
		if n, ok := p.rejectLog.allow(time.Now()); ok {
			p.log.Warn("projector: set aside an event keyd did not sign or that breaks its aggregate's history; not applied",
				"projection", p.tables.Checkpoint, "sequence", r.Sequence, "subject", r.Subject, "reason", r.Reason, "also_set_aside", n)
		}
	}
}

// rateLimited lets one event through per second and counts the others.
type rateLimited struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many were suppressed since
// the last line.
func (l *rateLimited) allow(now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < time.Second {
		l.suppressed++
		return 0, false
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return n, true
}
