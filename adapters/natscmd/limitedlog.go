package natscmd

import (
	"sync"
	"time"
)

// logInterval is the least time between two log lines of one limitedLog.
const logInterval = time.Second

// limitedLog lets one log line through per logInterval and counts the
// others, so that a client sending thousands of bad requests costs a line a
// second, not a line a request (finding L6). The zero value is ready.
type limitedLog struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a line may be logged at now and, if so, how many
// were held back since the last one (the count then starts over).
func (l *limitedLog) allow(now time.Time) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < logInterval {
		l.suppressed++
		return false, 0
	}
	l.last, suppressed, l.suppressed = now, l.suppressed, 0
	return true, suppressed
}
