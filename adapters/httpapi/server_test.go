package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestUnknownRouteAndMethod(t *testing.T) {
	t.Parallel()
	h := lightServer().Handler()
	for _, c := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/nope", 404, ""},
		{"GET", "/v1/orgs/org_a", 404, ""},
		{"GET", "/v1/keys/verify", 405, "POST"},
		{"DELETE", "/v1/orgs/org_a/keys", 405, "GET, HEAD, OPTIONS, POST"},
		{"POST", "/v1/permissions", 405, "GET, HEAD, OPTIONS"},
		{"GET", "/v1/permissions/p", 405, "DELETE, PUT"},
		{"POST", "/healthz", 405, "GET, HEAD"},
	} {
		rec := serve(h, c.method, c.path, "Authorization", "Bearer "+adminToken)
		var e domain.ErrorBody
		if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
			t.Errorf("%s %s: body %q is not a JSON error", c.method, c.path, rec.Body)
		}
		if rec.Code != c.status || rec.Header().Get("Content-Type") != "application/json" || rec.Header().Get("Allow") != c.allow {
			t.Errorf("%s %s: %d %v, want %d, Allow %q", c.method, c.path, rec.Code, rec.Header(), c.status, c.allow)
		}
		if c.status == 404 && e.Error.Code != domain.ENotFound {
			t.Errorf("%s %s: code %q", c.method, c.path, e.Error.Code)
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	ready, detail := true, map[string]any{"nats": "ok", "postgres": "ok"}
	h := lightServer(func(s *Server) {
		s.Ready = func(ctx context.Context) (bool, map[string]any) {
			if _, ok := ctx.Deadline(); !ok {
				t.Error("Ready called without a deadline")
			}
			return ready, detail
		}
	}).Handler()
	rec := serve(h, "GET", "/healthz")
	if rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != `{"status":"ok"}` {
		t.Errorf("/healthz: %d %s", rec.Code, rec.Body)
	}
	rec = serve(h, "GET", "/readyz")
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"postgres":"ok"`) || !strings.Contains(rec.Body.String(), `"status":"ok"`) {
		t.Errorf("/readyz ready: %d %s", rec.Code, rec.Body)
	}
	ready, detail = false, map[string]any{"postgres": "connection refused"}
	rec = serve(h, "GET", "/readyz")
	if rec.Code != 503 || !strings.Contains(rec.Body.String(), `"postgres":"connection refused"`) ||
		!strings.Contains(rec.Body.String(), `"status":"unavailable"`) || rec.Header().Get("Content-Type") != "application/json" {
		t.Errorf("/readyz not ready: %d %s", rec.Code, rec.Body)
	}
	if rec := serve(lightServer().Handler(), "GET", "/readyz"); rec.Code != 200 {
		t.Errorf("/readyz without Ready: %d", rec.Code)
	}
}

func TestMetricsByRoutePattern(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	h := lightServer(func(s *Server) { s.Metrics = m }).Handler()
	tok, _, _ := NewSessions([]byte("k"), nil).Issue("org_a", "u", time.Minute)
	serve(h, "GET", "/v1/widget/session", "Authorization", "Bearer "+tok)
	serve(h, "GET", "/v1/orgs/org_secretive/keys/key_01J00000000000000000000000")
	serve(h, "GET", "/nope/key_01J00000000000000000000000")
	rec := serve(h, "GET", "/metrics")
	body := rec.Body.String()
	for _, want := range []string{
		`keyd_http_requests_total{method="GET",route="GET /v1/widget/session",status="200"} 1`,
		`keyd_http_requests_total{method="GET",route="GET /v1/orgs/{org}/keys/{key_id}",status="401"} 1`,
		`keyd_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`keyd_http_request_duration_seconds_count{method="GET",route="GET /v1/widget/session"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, "key_01J") || strings.Contains(body, "org_secretive") {
		t.Error("/metrics labels contain ids from paths")
	}
	if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/metrics Content-Type %q", ct)
	}
}

func TestExtraRoutesAndPanics(t *testing.T) {
	t.Parallel()
	logs := &testenv.SyncBuffer{}
	h := lightServer(func(s *Server) {
		s.Log = slog.New(slog.NewJSONHandler(logs, nil))
		s.Extra = func(mux *http.ServeMux) {
			mux.HandleFunc("POST /v1/extra", func(w http.ResponseWriter, r *http.Request) {
				if _, ok := r.Context().Deadline(); !ok {
					t.Error("extra route without a request deadline")
				}
				writeJSON(w, 200, map[string]bool{"valid": false})
			})
			mux.HandleFunc("GET /boom", func(http.ResponseWriter, *http.Request) { panic("boom") })
		}
	}).Handler()
	if rec := serve(h, "POST", "/v1/extra"); rec.Code != 200 {
		t.Errorf("extra route: %d %s", rec.Code, rec.Body)
	}
	rec := serve(h, "GET", "/boom")
	if rec.Code != 500 || (reply{Body: rec.Body.Bytes()}).errorCode() != domain.EInternal || strings.Contains(rec.Body.String(), "boom") {
		t.Errorf("panic: %d %s", rec.Code, rec.Body)
	}
	if !strings.Contains(logs.String(), "panicked") {
		t.Errorf("the panic was not logged: %s", logs)
	}
}

func TestServeShutsDownGracefully(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	s := lightServer(func(s *Server) {
		s.Extra = func(mux *http.ServeMux) {
			mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
				close(started)
				<-release
				writeJSON(w, 200, map[string]string{"status": "done"})
			})
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx, ln) }()

	got := make(chan string, 1)
	go func() {
		res, err := http.Get("http://" + ln.Addr().String() + "/slow")
		if err != nil {
			got <- err.Error()
			return
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		got <- string(b)
	}()
	<-started
	cancel()
	// New connections are refused while the request in flight finishes.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 100*time.Millisecond)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("still accepting connections after shutdown began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(release)
	if b := <-got; !strings.Contains(b, "done") {
		t.Errorf("request in flight got %q", b)
	}
	if err := <-served; err != nil {
		t.Errorf("Serve = %v, want nil", err)
	}
}

func TestServeReportsListenerErrors(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	err = lightServer().Serve(context.Background(), ln)
	if err == nil || errors.Is(err, http.ErrServerClosed) {
		t.Errorf("Serve on a closed listener = %v", err)
	}
}

func TestNoAdminToken(t *testing.T) {
	t.Parallel()
	h := lightServer(func(s *Server) { s.AdminToken = "" }).Handler()
	for _, hdr := range []string{"Bearer ", "Bearer x"} {
		if rec := serve(h, "GET", "/v1/permissions", "Authorization", hdr); rec.Code != 401 {
			t.Errorf("%q with no admin token configured: %d", hdr, rec.Code)
		}
	}
}

// TestSecretsStayInTheirReplies runs every route and checks that a key's
// secret appears in the reply to its create or rotate and nowhere else: in
// no other reply body, header or log line.
func TestSecretsStayInTheirReplies(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read")
	tok := s.session("org_a", "u")
	created := s.createKey("org_a", "k", "posts:read")
	var rot domain.RotateKeyResult
	rotReply := s.must(t, 200, "POST", "/v1/orgs/org_a/keys/"+created.Key.ID+"/rotate", tok, `{"grace_period_seconds": 60}`)
	rotReply.json(t, &rot)
	base := "/v1/orgs/org_a/keys/" + rot.Key.ID
	var rev domain.KeyResult
	s.must(t, 200, "PUT", base+"/permissions", adminToken, `{"permissions": []}`)
	s.must(t, 200, "PATCH", base, tok, `{"metadata": {"a": "b"}}`)
	s.must(t, 200, "POST", base+"/revoke", adminToken, `{}`).json(t, &rev)
	q := "?min_sequence=" + u64(rev.Sequence)
	s.must(t, 200, "GET", "/v1/orgs/org_a/keys"+q, tok, nil)
	s.must(t, 200, "GET", base+q, tok, nil)
	s.must(t, 200, "GET", "/v1/orgs/org_a/keys/"+created.Key.ID+q, adminToken, nil)
	s.must(t, 200, "GET", "/v1/orgs/org_a/events"+q, adminToken, nil)
	s.must(t, 200, "GET", "/v1/permissions"+q, tok, nil)
	s.mustFail(t, domain.EInvalid, "POST", "/v1/orgs/org_a/keys", adminToken, `{"name": "`+created.Secret+`", "colour": 1}`)
	if r := s.do(t, "GET", "/metrics", "", nil); r.Status != 200 {
		t.Errorf("/metrics: %d", r.Status)
	}
	// An unreachable database is unavailable (503, retry) and logged
	// (without the request's token).
	rec := serve(newBrokenReads(t, s), "GET", "/v1/orgs/org_a/keys", "Authorization", "Bearer "+tok)
	if rec.Code != 503 || (reply{Body: rec.Body.Bytes()}).errorCode() != domain.EUnavailable ||
		strings.Contains(rec.Body.String(), "127.0.0.1") {
		t.Errorf("a failing read model: %d %s", rec.Code, rec.Body)
	}

	s.http.Close()
	logs := s.logs.String()
	if !strings.Contains(logs, "http request failed") {
		t.Errorf("the internal error was not logged: %s", logs)
	}
	for _, secret := range []string{created.Secret, rot.Secret, adminToken, tok} {
		if strings.Contains(logs, secret) {
			t.Errorf("the log contains a secret or token:\n%s", logs)
		}
	}
	n := 0
	for _, b := range s.bodies {
		for _, secret := range []string{created.Secret, rot.Secret} {
			if !strings.Contains(b, secret) {
				continue
			}
			n++
			var c domain.CreateKeyResult
			var r domain.RotateKeyResult
			okCreate := json.Unmarshal([]byte(b), &c) == nil && c.Secret == created.Secret && c.Key.ID == created.Key.ID
			okRotate := json.Unmarshal([]byte(b), &r) == nil && r.Secret == rot.Secret && r.Key.ID == rot.Key.ID && r.Previous.ID != ""
			if !okCreate && !okRotate {
				t.Errorf("a reply other than create's or rotate's contains a secret: %s", b)
			}
		}
	}
	if n != 2 {
		t.Errorf("the secrets appeared in %d replies, want 2 (create, rotate)", n)
	}
	if bytes.Contains(rotReply.Body, []byte(created.Secret)) {
		t.Error("the rotate reply contains the old secret")
	}
}

// newBrokenReads returns the handler of a Server like s's whose read model
// is on a database that does not answer.
func newBrokenReads(t *testing.T, s *stack) http.Handler {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), "postgres://keyd@127.0.0.1:1/none?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return (&Server{
		Runner: s.srv.Runner, Reads: postgres.NewReadModel(pool, nil), AdminToken: adminToken,
		Sessions: s.sessions, Log: s.srv.Log,
	}).Handler()
}

// TestMetricsMethodLabelIsBounded: made-up methods share one label, so a
// client cannot grow /metrics without bound.
func TestMetricsMethodLabelIsBounded(t *testing.T) {
	t.Parallel()
	m := metrics.New()
	h := lightServer(func(s *Server) { s.Metrics = m }).Handler()
	for i := range 50 {
		serve(h, "X"+strings.Repeat("Y", i), "/nope")
	}
	body := serve(h, "GET", "/metrics").Body.String()
	if strings.Contains(body, `method="XY`) || !strings.Contains(body, `method="other"`) {
		t.Fatalf("made-up methods reached the labels:\n%.2000s", body)
	}
}
