package widget

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestDemoAccess (finding L3: the demo page gave a widget session to
// anyone who could reach it): only the one-time token of the printed URL
// opens it, once, by setting a cookie; the cookie then opens the page and
// its session refresh; nothing else does.
func TestDemoAccess(t *testing.T) {
	t.Parallel()
	d, err := NewDemoAccess()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Token()) != 32 {
		t.Errorf("token %q is not 128 bits of hex", d.Token())
	}
	served := 0
	h := d.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { served++; _, _ = w.Write([]byte("page")) }))
	get := func(target string, cookies ...*http.Cookie) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		for _, c := range cookies {
			req.AddCookie(c)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	for _, target := range []string{"/widget/demo", "/widget/demo?session=json", "/widget/demo?token=" + strings.Repeat("0", 32)} {
		if rec := get(target); rec.Code != http.StatusForbidden {
			t.Errorf("GET %s: %d, want 403", target, rec.Code)
		}
	}
	if rec := get("/widget/demo", &http.Cookie{Name: DemoCookie, Value: d.Token()}); rec.Code != http.StatusForbidden {
		t.Errorf("the token as the cookie: %d, want 403", rec.Code)
	}
	rec := get("/widget/demo?token=" + d.Token())
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/widget/demo" {
		t.Fatalf("the one-time URL: %d, Location %q; want 303 to /widget/demo", rec.Code, rec.Header().Get("Location"))
	}
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 || cookies[0].Name != DemoCookie || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteLaxMode {
		t.Fatalf("cookies %+v, want one HttpOnly SameSite=Lax %s", cookies, DemoCookie)
	}
	if rec := get("/widget/demo?token=" + d.Token()); rec.Code != http.StatusForbidden {
		t.Errorf("the one-time URL again: %d, want 403", rec.Code)
	}
	for _, target := range []string{"/widget/demo", "/widget/demo?session=json"} {
		if rec := get(target, cookies[0]); rec.Code != 200 || rec.Body.String() != "page" {
			t.Errorf("GET %s with the cookie: %d %q", target, rec.Code, rec.Body)
		}
	}
	if served != 2 {
		t.Errorf("the page was served %d times, want 2 (with the cookie only)", served)
	}
	other, _ := NewDemoAccess()
	if other.Token() == d.Token() {
		t.Error("two DemoAccess share a token")
	}
}
