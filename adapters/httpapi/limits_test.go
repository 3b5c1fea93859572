package httpapi

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// lockedClock is a settable clock safe for concurrent handlers.
type lockedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *lockedClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *lockedClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// counterValue reads a counter.
func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// from sends a request from the client address addr.
func from(h http.Handler, addr, method, path string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	req.RemoteAddr = addr
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func codeOf(t *testing.T, rec *httptest.ResponseRecorder) string {
	t.Helper()
	var e domain.ErrorBody
	_ = json.Unmarshal(rec.Body.Bytes(), &e)
	return e.Error.Code
}

// TestAuthFailureLimit (finding L5: the admin token could be guessed at
// 19k tries a second, unseen): failed authentications are counted by
// reason and, past AuthFailureLimit within AuthFailureWindow from one
// address, every authentication from it (the right token too) is
// rate_limited with Retry-After until the window ends; other addresses are
// not affected; the failures are logged at most once a second.
func TestAuthFailureLimit(t *testing.T) {
	t.Parallel()
	clk := &lockedClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	logs := &testenv.SyncBuffer{}
	m := metrics.New()
	srv := lightServer(func(s *Server) {
		s.Now, s.Metrics = clk.Now, m
		s.Log = slog.New(slog.NewJSONHandler(logs, nil))
	})
	h := srv.Handler()
	const attacker, other = "198.51.100.7:40000", "203.0.113.9:1234"
	for i := range AuthFailureLimit {
		if rec := from(h, attacker, "GET", "/v1/permissions", "Authorization", "Bearer guess-"+strconv.Itoa(i)); rec.Code != 401 {
			t.Fatalf("guess %d: status %d, want 401", i, rec.Code)
		}
	}
	for _, tok := range []string{"guess-more", adminToken} {
		rec := from(h, "198.51.100.7:40001", "GET", "/v1/widget/session", "Authorization", "Bearer "+tok)
		if rec.Code != http.StatusTooManyRequests || codeOf(t, rec) != domain.ERateLimited {
			t.Fatalf("after %d failures, %q: status %d %s, want 429 rate_limited", AuthFailureLimit, tok, rec.Code, rec.Body)
		}
		if ra, err := strconv.Atoi(rec.Header().Get("Retry-After")); err != nil || ra < 1 || ra > int(AuthFailureWindow/time.Second) {
			t.Errorf("Retry-After = %q, want 1..%d seconds", rec.Header().Get("Retry-After"), int(AuthFailureWindow/time.Second))
		}
	}
	if rec := from(h, other, "GET", "/v1/widget/session", "Authorization", "Bearer "+adminToken); rec.Code != http.StatusForbidden {
		t.Errorf("another address with the admin token: status %d, want 403 (authenticated, wrong route)", rec.Code)
	}
	if got := counterValue(t, m.AuthFailures.WithLabelValues(metrics.AuthInvalid)); got != AuthFailureLimit {
		t.Errorf("keyd_auth_failures_total{reason=invalid} = %v, want %d", got, AuthFailureLimit)
	}
	if got := counterValue(t, m.RateLimited.WithLabelValues(metrics.LimitAuthFailures)); got != 2 {
		t.Errorf("keyd_http_rate_limited_total{limit=auth_failures} = %v, want 2", got)
	}
	if n := strings.Count(logs.String(), "http authentication failed"); n != 1 {
		t.Errorf("%d failures within one second logged %d lines, want 1:\n%s", AuthFailureLimit, n, logs)
	}
	// IPv6 clients are counted by their /64.
	for i := range AuthFailureLimit {
		from(h, "[2001:db8:1:2::"+strconv.Itoa(i+1)+"]:5555", "GET", "/v1/permissions", "Authorization", "Bearer x")
	}
	if rec := from(h, "[2001:db8:1:2:ffff::1]:5555", "GET", "/v1/permissions", "Authorization", "Bearer "+adminToken); rec.Code != http.StatusTooManyRequests {
		t.Errorf("another address of the same /64: status %d, want 429", rec.Code)
	}
	clk.Add(AuthFailureWindow)
	if rec := from(h, attacker, "GET", "/v1/widget/session", "Authorization", "Bearer "+adminToken); rec.Code != http.StatusForbidden {
		t.Errorf("after the window, the admin token: status %d %s, want 403 (authenticated)", rec.Code, rec.Body)
	}
	clk.Add(time.Second)
	from(h, attacker, "GET", "/v1/permissions")
	if n := strings.Count(logs.String(), `"not_logged_since_last":`); n < 2 || !strings.Contains(logs.String(), `"reason":"missing"`) {
		t.Errorf("a failure a second later is logged again, with its reason:\n%s", logs)
	}
}

// TestSessionRateLimit (finding M4: nothing limited a token's requests): a
// widget session may make SessionRate requests a second (a second's worth
// at once), then rate_limited with Retry-After; other sessions and the
// admin token are not limited by it.
func TestSessionRateLimit(t *testing.T) {
	t.Parallel()
	clk := &lockedClock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	m := metrics.New()
	srv := lightServer(func(s *Server) { s.Now, s.Metrics, s.SessionRate = clk.Now, m, 10 })
	srv.Sessions = NewSessions([]byte("k"), clk.Now)
	h := srv.Handler()
	a := mustIssue(t, srv.Sessions, "org_a", "u", time.Hour)
	b := mustIssue(t, srv.Sessions, "org_a", "u", time.Hour)
	get := func(tok string) *httptest.ResponseRecorder {
		return from(h, "192.0.2.1:1", "GET", "/v1/widget/session", "Authorization", "Bearer "+tok)
	}
	for i := range 10 {
		if rec := get(a); rec.Code != 200 {
			t.Fatalf("request %d: status %d %s", i, rec.Code, rec.Body)
		}
	}
	rec := get(a)
	if rec.Code != http.StatusTooManyRequests || codeOf(t, rec) != domain.ERateLimited || rec.Header().Get("Retry-After") != "1" {
		t.Fatalf("11th request in a second: status %d, Retry-After %q, %s; want 429 rate_limited, Retry-After 1", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	if rec := get(b); rec.Code != 200 {
		t.Errorf("another session: status %d", rec.Code)
	}
	for i := range 100 {
		if rec := from(h, "192.0.2.1:1", "GET", "/v1/widget/session", "Authorization", "Bearer "+adminToken); rec.Code != http.StatusForbidden {
			t.Fatalf("admin request %d: status %d, want 403 (authenticated, never rate_limited)", i, rec.Code)
		}
	}
	clk.Add(100 * time.Millisecond)
	if rec := get(a); rec.Code != 200 {
		t.Errorf("a tenth of a second later (one token refilled): status %d", rec.Code)
	}
	if rec := get(a); rec.Code != http.StatusTooManyRequests {
		t.Errorf("and then: status %d, want 429", rec.Code)
	}
	if got := counterValue(t, m.RateLimited.WithLabelValues(metrics.LimitToken)); got != 2 {
		t.Errorf("keyd_http_rate_limited_total{limit=token} = %v, want 2", got)
	}

	// --rate-limit 0 is no limit.
	free := lightServer(func(s *Server) { s.SessionRate = -1 })
	tok := mustIssue(t, free.Sessions, "org_a", "u", time.Hour)
	for i := range 500 {
		if rec := from(free.Handler(), "192.0.2.1:1", "GET", "/v1/widget/session", "Authorization", "Bearer "+tok); rec.Code != 200 {
			t.Fatalf("unlimited, request %d: status %d", i, rec.Code)
		}
	}
}

// TestTokenBucketsStayBounded: the per-session table does not grow past
// maxTracked; idle buckets go first.
func TestTokenBucketsStayBounded(t *testing.T) {
	t.Parallel()
	clk := &lockedClock{t: time.Unix(0, 0)}
	b := newTokenBuckets(1, clk.Now)
	for i := range maxTracked + 10 {
		b.take(strconv.Itoa(i))
	}
	if n := len(b.buckets); n > maxTracked+1 {
		t.Errorf("%d buckets held, want at most %d", n, maxTracked+1)
	}
	clk.Add(2 * time.Second)
	b.take("fresh")
	if n := len(b.buckets); n != 1 {
		t.Errorf("after every bucket refilled, a newcomer left %d buckets, want 1", n)
	}
}

// TestInternalSurfaces (finding L2: /readyz and /metrics told anyone
// internal errors, ids and counts): with InternalSurfaces the API has no
// /metrics and its /readyz says only {"status"}; InternalHandler serves
// both in full.
func TestInternalSurfaces(t *testing.T) {
	t.Parallel()
	ready := func(context.Context) (bool, map[string]any) {
		return false, map[string]any{"projection": map[string]any{"error": "ERROR: invalid byte sequence (SQLSTATE 22021) in keyd.events.keys.org_a.key_1"}}
	}
	split := lightServer(func(s *Server) { s.Metrics, s.Ready, s.InternalSurfaces = metrics.New(), ready, true })
	if rec := serve(split.Handler(), "GET", "/metrics"); rec.Code != 404 {
		t.Errorf("public /metrics: status %d, want 404", rec.Code)
	}
	rec := serve(split.Handler(), "GET", "/readyz")
	if rec.Code != 503 || strings.TrimSpace(rec.Body.String()) != `{"status":"unavailable"}` {
		t.Errorf("public /readyz: %d %s, want 503 {\"status\":\"unavailable\"} only", rec.Code, rec.Body)
	}
	in := split.InternalHandler()
	if rec := serve(in, "GET", "/metrics"); rec.Code != 200 || !strings.Contains(rec.Body.String(), "keyd_auth_failures_total") {
		t.Errorf("internal /metrics: %d, lacks keyd_auth_failures_total", rec.Code)
	}
	if rec := serve(in, "GET", "/readyz"); rec.Code != 503 || !strings.Contains(rec.Body.String(), "SQLSTATE") {
		t.Errorf("internal /readyz: %d %s, want the detail", rec.Code, rec.Body)
	}
	if rec := serve(in, "GET", "/v1/permissions", "Authorization", "Bearer "+adminToken); rec.Code != 404 {
		t.Errorf("internal listener serves the API: %d", rec.Code)
	}
	// Without InternalSurfaces, v1's surfaces are unchanged.
	one := lightServer(func(s *Server) { s.Metrics, s.Ready = metrics.New(), ready })
	if rec := serve(one.Handler(), "GET", "/metrics"); rec.Code != 200 {
		t.Errorf("/metrics without an internal listener: %d", rec.Code)
	}
	if rec := serve(one.Handler(), "GET", "/readyz"); !strings.Contains(rec.Body.String(), "projection") {
		t.Errorf("/readyz without an internal listener: %s, want the detail", rec.Body)
	}
}

// TestLoopbackHostsOnly (finding L3: DNS rebinding let any web page drive
// keyd dev): with LoopbackHostsOnly every route, extra ones included,
// answers 403 permission_denied unless Host is localhost, 127.0.0.1 or
// [::1], with any port.
func TestLoopbackHostsOnly(t *testing.T) {
	t.Parallel()
	srv := lightServer(func(s *Server) {
		s.LoopbackHostsOnly = true
		s.Extra = func(mux *http.ServeMux) {
			mux.HandleFunc("GET /widget/demo", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("demo")) })
		}
	})
	h := srv.Handler()
	for _, host := range []string{"attacker.example", "attacker.example:8080", "127.0.0.1.nip.io", "localhost.attacker.example", "10.0.0.1:8080", "[::2]:80", ""} {
		for _, path := range []string{"/healthz", "/widget/demo", "/v1/widget/session"} {
			req := httptest.NewRequest("GET", path, nil)
			req.Host = host
			req.Header.Set("Authorization", "Bearer "+adminToken)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusForbidden || codeOf(t, rec) != domain.EForbidden {
				t.Errorf("Host %q %s: %d %s, want 403 permission_denied", host, path, rec.Code, rec.Body)
			}
		}
	}
	for _, host := range []string{"localhost", "LOCALHOST:8080", "127.0.0.1", "127.0.0.1:18631", "[::1]", "[::1]:8080"} {
		req := httptest.NewRequest("GET", "/widget/demo", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Errorf("Host %q: %d %s, want 200", host, rec.Code, rec.Body)
		}
	}
	// Off, any Host is served (keyd serve runs behind proxies and names).
	req := httptest.NewRequest("GET", "/healthz", nil)
	req.Host = "keyd.example.com"
	rec := httptest.NewRecorder()
	lightServer().Handler().ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Errorf("without LoopbackHostsOnly: %d", rec.Code)
	}
}
