package verifier

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func TestMiddleware(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read", "posts:write")
	reader := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:read"}})
	writer := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:read", "posts:write"}})
	revoked := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:write"}})
	e.revoke("org_1", revoked.Key.ID)
	v := e.verifier()

	protected := v.Middleware("posts:write")(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k, ok := FromContext(r.Context())
		if !ok {
			t.Error("handler without a key in its context")
			return
		}
		io.WriteString(w, k.ID)
	}))
	srv := httptest.NewServer(protected)
	t.Cleanup(srv.Close)

	cases := []struct {
		name    string
		headers map[string]string
		status  int
		code    string // error code, or "" for success
		body    string // success body
	}{
		{"no key", nil, 401, domain.EUnauthorized, ""},
		{"bearer", map[string]string{"Authorization": "Bearer " + writer.Secret}, 200, "", writer.Key.ID},
		{"bearer, lower-case scheme", map[string]string{"Authorization": "bearer " + writer.Secret}, 200, "", writer.Key.ID},
		{"x-api-key", map[string]string{"X-API-Key": writer.Secret}, 200, "", writer.Key.ID},
		{"basic auth is not a key", map[string]string{"Authorization": "Basic " + writer.Secret}, 401, domain.EUnauthorized, ""},
		{"malformed", map[string]string{"Authorization": "Bearer " + writer.Secret[:20]}, 401, domain.EUnauthorized, ""},
		{"unknown", map[string]string{"Authorization": "Bearer " + newSecret(t)}, 401, domain.EUnauthorized, ""},
		{"revoked", map[string]string{"Authorization": "Bearer " + revoked.Secret}, 401, domain.EUnauthorized, ""},
		{"lacks the permission", map[string]string{"Authorization": "Bearer " + reader.Secret}, 403, domain.EForbidden, ""},
	}
	for _, c := range cases {
		req, _ := http.NewRequest("GET", srv.URL, nil)
		for k, v := range c.headers {
			req.Header.Set(k, v)
		}
		status, code, body := do(t, req)
		if status != c.status || code != c.code || (c.code == "" && body != c.body) {
			t.Errorf("%s: %d %q %q, want %d %q %q", c.name, status, code, body, c.status, c.code, c.body)
		}
	}

	// A verifier that cannot vouch for keys answers 503.
	cold := New(Config{Digester: e.dig})
	h := cold.Middleware()(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { t.Error("handler reached") }))
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set("Authorization", "Bearer "+writer.Secret)
	h.ServeHTTP(rec, req)
	if rec.Code != 503 || rec.Header().Get("Retry-After") == "" {
		t.Errorf("unavailable verifier: %d %v", rec.Code, rec.Header())
	}

	defer func() {
		if recover() == nil {
			t.Error("Middleware with a bad slug did not panic")
		}
	}()
	v.Middleware("Not A Slug")
}

// do sends req and returns the status, the error code (if any) and the body.
func do(t *testing.T, req *http.Request) (int, string, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 {
		return 200, "", string(b)
	}
	var e struct {
		Error struct{ Code, Message string } `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error.Message == "" {
		t.Errorf("error body %q is not the contract's error shape", b)
	}
	if resp.StatusCode == 401 && resp.Header.Get("WWW-Authenticate") == "" {
		t.Error("401 without WWW-Authenticate")
	}
	return resp.StatusCode, e.Error.Code, ""
}
