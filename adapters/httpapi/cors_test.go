package httpapi

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// lightServer is a Server without NATS or Postgres, for behaviour that
// happens before a route touches either.
func lightServer(opts ...stackOption) *Server {
	s := &Server{
		AdminToken:    adminToken,
		Sessions:      NewSessions([]byte("k"), nil),
		WidgetOrigins: []string{"https://app.example.com", "http://localhost:3000"},
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func serve(h http.Handler, method, path string, hdr ...string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestCORSPreflight(t *testing.T) {
	t.Parallel()
	h := lightServer().Handler()
	for _, path := range []string{
		"/v1/orgs/org_a/keys",
		"/v1/orgs/org_a/keys/key_01J00000000000000000000000",
		"/v1/orgs/org_a/keys/key_01J00000000000000000000000/permissions",
		"/v1/orgs/org_a/keys/key_01J00000000000000000000000/rotate",
		"/v1/orgs/org_a/keys/key_01J00000000000000000000000/revoke",
		"/v1/permissions",
		"/v1/widget/session",
	} {
		rec := serve(h, "OPTIONS", path, "Origin", "https://app.example.com",
			"Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization, content-type")
		if rec.Code != http.StatusNoContent {
			t.Errorf("preflight %s: status %d, want 204", path, rec.Code)
		}
		hh := rec.Header()
		if hh.Get("Access-Control-Allow-Origin") != "https://app.example.com" ||
			!strings.Contains(hh.Get("Access-Control-Allow-Headers"), "Authorization") ||
			!strings.Contains(hh.Get("Access-Control-Allow-Headers"), "Content-Type") ||
			hh.Get("Access-Control-Allow-Methods") != "GET, POST, PUT, PATCH, DELETE" ||
			!strings.Contains(hh.Get("Vary"), "Origin") || hh.Get("Access-Control-Allow-Credentials") != "" {
			t.Errorf("preflight %s: headers %v", path, hh)
		}
	}
	// Another origin: no CORS headers, and a reason.
	rec := serve(h, "OPTIONS", "/v1/orgs/org_a/keys", "Origin", "https://evil.example", "Access-Control-Request-Method", "GET")
	if rec.Code != http.StatusForbidden || rec.Header().Get("Access-Control-Allow-Origin") != "" ||
		!strings.Contains(rec.Body.String(), "--widget-origins") {
		t.Errorf("preflight from another origin: %d %v %s", rec.Code, rec.Header(), rec.Body)
	}
	// Admin-only routes have no preflight.
	for _, path := range []string{"/v1/orgs/org_a/events", "/v1/widget/sessions", "/v1/permissions/p"} {
		rec := serve(h, "OPTIONS", path, "Origin", "https://app.example.com", "Access-Control-Request-Method", "GET")
		if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("preflight %s: %d %v, want 405 without CORS", path, rec.Code, rec.Header())
		}
	}
}

func TestCORSOrigins(t *testing.T) {
	t.Parallel()
	tok, _, err := NewSessions([]byte("k"), nil).Issue("org_a", "u", 60e9)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		local   bool
		origin  string
		allowed bool
	}{
		{"listed", false, "https://app.example.com", true},
		{"listed with port", false, "http://localhost:3000", true},
		{"listed, other scheme", false, "http://app.example.com", false},
		{"listed, trailing slash", false, "https://app.example.com/", false},
		{"subdomain", false, "https://x.app.example.com", false},
		{"suffix trick", false, "https://app.example.com.evil.net", false},
		{"localhost, not enabled", false, "http://localhost:8080", false},
		{"localhost", true, "http://localhost:8080", true},
		{"localhost no port", true, "http://localhost", true},
		{"127.0.0.1", true, "http://127.0.0.1:5173", true},
		{"::1", true, "http://[::1]:5173", true},
		{"https localhost", true, "https://localhost:8443", true},
		{"localhost lookalike", true, "http://localhost.evil.net", false},
		{"other scheme", true, "file://localhost", false},
		{"null", true, "null", false},
		{"with path", true, "http://localhost:8080/x", false},
		{"with user", true, "http://me@localhost:8080", false},
	} {
		h := lightServer(func(s *Server) { s.AllowLocalhostOrigins = c.local }).Handler()
		rec := serve(h, "GET", "/v1/widget/session", "Origin", c.origin, "Authorization", "Bearer "+tok)
		if rec.Code != 200 {
			t.Fatalf("%s: status %d %s", c.name, rec.Code, rec.Body)
		}
		got := rec.Header().Get("Access-Control-Allow-Origin")
		if (got == c.origin) != c.allowed || (got != "" && got != c.origin) {
			t.Errorf("%s: origin %q got Access-Control-Allow-Origin %q, allowed = %v", c.name, c.origin, got, c.allowed)
		}
		if c.allowed && rec.Header().Get("Access-Control-Expose-Headers") != SequenceHeader {
			t.Errorf("%s: Access-Control-Expose-Headers = %q", c.name, rec.Header().Get("Access-Control-Expose-Headers"))
		}
		if !strings.Contains(rec.Header().Get("Vary"), "Origin") {
			t.Errorf("%s: no Vary: Origin", c.name)
		}
	}
}

func TestCORSOnErrorsAndAdminRoutes(t *testing.T) {
	t.Parallel()
	h := lightServer().Handler()
	// A 401 on a widget route is readable by the widget (it starts a new
	// session on it).
	rec := serve(h, "GET", "/v1/orgs/org_a/keys", "Origin", "https://app.example.com")
	if rec.Code != 401 || rec.Header().Get("Access-Control-Allow-Origin") != "https://app.example.com" {
		t.Errorf("401 on a widget route: %d %v", rec.Code, rec.Header())
	}
	// Admin-only routes never answer cross-origin.
	rec = serve(h, "POST", "/v1/widget/sessions", "Origin", "https://app.example.com", "Authorization", "Bearer "+adminToken)
	if rec.Header().Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("admin-only route answered with CORS: %v", rec.Header())
	}
	if code := (reply{Body: rec.Body.Bytes()}).errorCode(); rec.Code != 400 || code != domain.EInvalid {
		t.Errorf("POST /v1/widget/sessions without a body: %d %s", rec.Code, rec.Body)
	}
}
