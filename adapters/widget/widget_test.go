package widget

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestScriptHandlerServesTheScript(t *testing.T) {
	t.Parallel()
	h := ScriptHandler()

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/widget/keyd-api-keys.js", nil))
	if rec.Code != http.StatusOK {
		t.Fatalf("status = %d, want 200", rec.Code)
	}
	if got := rec.Header().Get("Content-Type"); got != "text/javascript; charset=utf-8" {
		t.Errorf("Content-Type = %q", got)
	}
	if got := rec.Header().Get("Cache-Control"); got != "public, max-age=300" {
		t.Errorf("Cache-Control = %q", got)
	}
	etag := rec.Header().Get("ETag")
	if !strings.HasPrefix(etag, `"`) || len(etag) < 10 {
		t.Errorf("ETag = %q, want a strong quoted tag", etag)
	}
	if rec.Body.String() != string(script) || !strings.Contains(rec.Body.String(), "customElements.define") {
		t.Errorf("body is not the embedded widget script")
	}

	// Revalidation by ETag.
	req := httptest.NewRequest(http.MethodGet, "/widget/keyd-api-keys.js", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
		t.Errorf("If-None-Match: status = %d, body %d bytes; want 304 and no body", rec.Code, rec.Body.Len())
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/widget/keyd-api-keys.js", nil))
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Errorf("HEAD: status = %d, body %d bytes", rec.Code, rec.Body.Len())
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/widget/keyd-api-keys.js", nil))
	if rec.Code != http.StatusMethodNotAllowed || rec.Header().Get("Allow") == "" {
		t.Errorf("POST: status = %d, Allow = %q; want 405 with Allow", rec.Code, rec.Header().Get("Allow"))
	}
}

// The labels, attributes and events that the contract, the docs and the browser
// tests rely on. Labels are checked as string literals in the source.
func TestScriptHasEveryRequiredLabel(t *testing.T) {
	t.Parallel()
	src := string(script)
	literals := []string{
		"Create API key", "Name", "Expires", "Never", "30 days", "90 days", "1 year", "Create",
		"Copy", "Done", "Rotate", "Immediately", "1 hour", "24 hours", "7 days", "Rotate key",
		"Edit permissions", "Save", "Revoke", "Revoke key", "Retry", "Previous page", "Next page", "Cancel",
		"Roles", "Resources", "Owner", "Search keys", "Search", "Clear filters", "Member user id", "Your API keys",
		"Your session has expired. Refresh the page to continue.",
		"Copy this key now and keep it somewhere safe. It will not be shown again.",
		"keyd-session-expired", "session-token", "api-base", "org-id", "keyd-api-keys",
		"Key", "Permissions", "Created", "Last used", "Status", "Active", "Revoked", "Expired",
	}
	for _, l := range literals {
		if !strings.Contains(src, "'"+l+"'") {
			t.Errorf("script lacks the string literal %q", l)
		}
	}
	fragments := []string{
		"--keyd-font", "--keyd-accent", "--keyd-radius", "--keyd-bg", "--keyd-fg",
		"--keyd-muted", "--keyd-border", "--keyd-danger", "prefers-color-scheme", "@container",
		":focus-visible", "role: 'alert'", "'aria-live'", "attachShadow({ mode: 'open' })",
		"document.currentScript", "/v1/permissions", "/v1/widget/session", "/v1/orgs/",
		"min_sequence", "next_cursor", "grace_period_seconds", "expires_at", "Authorization",
		"'Bearer '", "composed: true", "bubbles: true", "navigator.clipboard", "execCommand('copy')",
		"status === 'active'", "limit: String(PAGE_SIZE)", "const PAGE_SIZE = 10", "/v1/roles",
		"owner_id", "owner_type", "'permission'", "role: 'search'", "cursor",
	}
	for _, f := range fragments {
		if !strings.Contains(src, f) {
			t.Errorf("script lacks %q", f)
		}
	}
}

func TestScriptNeverParsesMarkup(t *testing.T) {
	t.Parallel()
	src := string(script)
	for _, bad := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "DOMParser", "createContextualFragment"} {
		if strings.Contains(src, bad) {
			t.Errorf("script uses %s; server data must only be set as text", bad)
		}
	}
}

func TestScriptIsValidJavaScript(t *testing.T) {
	t.Parallel()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("checking the widget script needs Node.js (%v); install it with `apt-get install -y nodejs` (scripts/test.sh does this)", err)
	}
	f := filepath.Join(t.TempDir(), "keyd-api-keys.js")
	if err := os.WriteFile(f, script, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(node, "--check", f).CombinedOutput(); err != nil {
		t.Fatalf("node --check: %v\n%s", err, out)
	}
}

type ctxKey struct{}

func TestDemoHandlerRendersAFreshSessionEachTime(t *testing.T) {
	t.Parallel()
	n := 0
	h := DemoHandler(func(ctx context.Context) (string, string, error) {
		if ctx.Value(ctxKey{}) != "req" {
			t.Errorf("newSession did not get the request context")
		}
		n++
		return fmt.Sprintf("tok-%d", n), "org_1", nil
	})
	get := func(target string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req = req.WithContext(context.WithValue(req.Context(), ctxKey{}, "req"))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}

	for i := 1; i <= 2; i++ {
		rec := get("/widget/demo")
		if rec.Code != http.StatusOK {
			t.Fatalf("status = %d", rec.Code)
		}
		if got := rec.Header().Get("Content-Type"); got != "text/html; charset=utf-8" {
			t.Errorf("Content-Type = %q", got)
		}
		if got := rec.Header().Get("Cache-Control"); got != "no-store" {
			t.Errorf("Cache-Control = %q, want no-store", got)
		}
		body := rec.Body.String()
		for _, want := range []string{
			fmt.Sprintf(`session-token="tok-%d"`, i),
			`org-id="org_1"`,
			`<script src="/widget/keyd-api-keys.js"></script>`,
			"<keyd-api-keys ",
			"Acme Cloud",
			"How to embed",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("GET %d: page lacks %q", i, want)
			}
		}
	}
	if n != 2 {
		t.Errorf("newSession called %d times for 2 requests", n)
	}

	rec := get("/widget/demo?session=json")
	var s struct {
		Token string `json:"token"`
		OrgID string `json:"org_id"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &s); err != nil || s.Token != "tok-3" || s.OrgID != "org_1" {
		t.Errorf("?session=json = %q (%v)", rec.Body.String(), err)
	}
	if rec.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("?session=json is cacheable")
	}
}

func TestDemoHandlerEscapesTheSession(t *testing.T) {
	t.Parallel()
	hostile := `"><script>alert(1)</script>`
	h := DemoHandler(func(context.Context) (string, string, error) { return hostile, hostile + "&", nil })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/widget/demo", nil))
	body := rec.Body.String()
	if strings.Contains(body, "<script>alert(1)") {
		t.Fatalf("hostile session value reached the page unescaped")
	}
	if !strings.Contains(body, `session-token="&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"`) {
		t.Errorf("token not escaped as an attribute value:\n%s", body)
	}
}

func TestDemoHandlerErrors(t *testing.T) {
	t.Parallel()
	h := DemoHandler(func(context.Context) (string, string, error) { return "", "", errors.New("nats is down") })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/widget/demo", nil))
	if rec.Code != http.StatusServiceUnavailable || !strings.Contains(rec.Body.String(), "nats is down") {
		t.Errorf("status = %d, body %q; want 503 naming the cause", rec.Code, rec.Body.String())
	}
	if strings.Contains(rec.Body.String(), "<keyd-api-keys") {
		t.Errorf("a failed session still rendered the page")
	}

	called := false
	h = DemoHandler(func(context.Context) (string, string, error) { called = true; return "t", "o", nil })
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/widget/demo", nil))
	if rec.Code != http.StatusMethodNotAllowed || called {
		t.Errorf("POST: status = %d, session minted = %v; want 405 and no session", rec.Code, called)
	}
}
