package httpapi

import (
	"errors"
	"math"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// The HTTP edge's limits (finding M4, L5 of the security review). Each
// answers rate_limited (429) with Retry-After.
const (
	// DefaultSessionRate is the default of Server.SessionRate: requests per
	// second one widget session may make (the burst is one second's worth).
	DefaultSessionRate = 50
	// AuthFailureLimit failed authentications from one client address
	// within AuthFailureWindow refuse every authentication from it until
	// the window ends.
	AuthFailureLimit  = 20
	AuthFailureWindow = 10 * time.Second
	// MaxWaitsPerToken bounds the min_sequence waits one token (one widget
	// session, or the admin token) has parked at once.
	MaxWaitsPerToken = 100

	// maxTracked bounds each limiter's table (session ids, client
	// addresses); past it, idle entries are dropped and, if none is idle,
	// the newcomers share one entry.
	maxTracked = 100_000
)

// retryAfterError is a rate_limited error with the time after which the
// client may retry; writeErrorBody sends it as Retry-After.
type retryAfterError struct {
	err   *domain.Error
	after time.Duration
}

func (e *retryAfterError) Error() string { return e.err.Error() }
func (e *retryAfterError) Unwrap() error { return e.err }

// rateLimited returns a rate_limited error saying why, to retry after d.
func rateLimited(d time.Duration, format string, args ...any) error {
	return &retryAfterError{err: domain.Errorf(domain.ERateLimited, format, args...), after: d}
}

// setRetryAfter sets Retry-After (whole seconds, at least 1) when err is
// a rateLimited error.
func setRetryAfter(h http.Header, err error) {
	var ra *retryAfterError
	if errors.As(err, &ra) {
		h.Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(ra.after.Seconds())))))
	}
}

// overflowKey is the entry newcomers share when a table is full.
const overflowKey = "\x00overflow"

// tokenBuckets is a token bucket per key (a widget session id): rate
// tokens a second, at most burst held. Its table is bounded by maxTracked:
// a bucket that has refilled completely is the same as none, so those are
// dropped first.
type tokenBuckets struct {
	rate, burst float64
	now         func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newTokenBuckets(rate float64, now func() time.Time) *tokenBuckets {
	return &tokenBuckets{rate: rate, burst: max(1, rate), now: now, buckets: map[string]*bucket{}}
}

// take spends one token of key's bucket. It returns 0 when it could, else
// how long until a token is there.
func (t *tokenBuckets) take(key string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	b := t.buckets[key]
	if b == nil {
		if len(t.buckets) >= maxTracked {
			t.evict(now)
		}
		if len(t.buckets) >= maxTracked {
			key = overflowKey
			b = t.buckets[key]
		}
		if b == nil {
			b = &bucket{tokens: t.burst, last: now}
			t.buckets[key] = b
		}
	}
	b.tokens = min(t.burst, b.tokens+now.Sub(b.last).Seconds()*t.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) / t.rate * float64(time.Second))
}

// evict drops the buckets that have refilled completely.
func (t *tokenBuckets) evict(now time.Time) {
	full := time.Duration(t.burst / t.rate * float64(time.Second))
	for k, b := range t.buckets {
		if now.Sub(b.last) >= full {
			delete(t.buckets, k)
		}
	}
}

// failureLimiter counts failed authentications per client address in
// fixed windows: AuthFailureLimit failures within one AuthFailureWindow
// block the address until the window ends. Its table is bounded by
// maxTracked (ended windows are dropped first).
type failureLimiter struct {
	limit  int
	window time.Duration
	now    func() time.Time

	mu      sync.Mutex
	windows map[string]*failWindow
}

type failWindow struct {
	start time.Time
	n     int
}

func newFailureLimiter(now func() time.Time) *failureLimiter {
	return &failureLimiter{limit: AuthFailureLimit, window: AuthFailureWindow, now: now, windows: map[string]*failWindow{}}
}

// blocked returns how long addr stays blocked (0: it is not).
func (f *failureLimiter) blocked(addr string) time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.windows[addr]
	if w == nil {
		if len(f.windows) < maxTracked {
			return 0
		}
		if w = f.windows[overflowKey]; w == nil {
			return 0
		}
	}
	if left := w.start.Add(f.window).Sub(f.now()); w.n >= f.limit && left > 0 {
		return left
	}
	return 0
}

// fail records a failed authentication from addr.
func (f *failureLimiter) fail(addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	w := f.windows[addr]
	if w == nil {
		if len(f.windows) >= maxTracked {
			for k, old := range f.windows {
				if now.Sub(old.start) >= f.window {
					delete(f.windows, k)
				}
			}
		}
		if len(f.windows) >= maxTracked {
			addr = overflowKey
			w = f.windows[addr]
		}
		if w == nil {
			w = &failWindow{start: now}
			f.windows[addr] = w
		}
	}
	if now.Sub(w.start) >= f.window {
		w.start, w.n = now, 0
	}
	w.n++
}

// waitSlots bounds the min_sequence waits parked at once per token.
type waitSlots struct {
	max int

	mu   sync.Mutex
	used map[string]int
}

// acquire takes a slot for key; false when key holds max already.
func (w *waitSlots) acquire(key string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.used == nil {
		w.used = map[string]int{}
	}
	if w.used[key] >= w.max {
		return false
	}
	w.used[key]++
	return true
}

func (w *waitSlots) release(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.used[key]--; w.used[key] <= 0 {
		delete(w.used, key)
	}
}

// clientAddress is the address failed authentications are counted by:
// the connection's remote IP (keyd takes no forwarding header on trust),
// IPv6 addresses by their /64, since one client usually holds a whole /64.
func clientAddress(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return host
	}
	if ip.To4() != nil {
		return ip.String()
	}
	return ip.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// everySecond lets one thing through per second and counts what it holds
// back: the failed-authentication log, which a client must not be able to
// flood.
type everySecond struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether to log now and, if so, how many were held back
// since the last line.
func (e *everySecond) allow(now time.Time) (ok bool, suppressed int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if now.Sub(e.last) < time.Second {
		e.suppressed++
		return false, 0
	}
	e.last, suppressed, e.suppressed = now, e.suppressed, 0
	return true, suppressed
}
