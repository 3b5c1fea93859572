package widget

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"sync/atomic"
)

// DemoCookie is the cookie that opens the demo page once its one-time
// link was used.
const DemoCookie = "keyd_demo"

// DemoAccess guards keyd dev's demo page, which hands out widget sessions
// (finding L3 of the security review: anyone who could reach it got one).
// The demo URL keyd dev prints carries a one-time token (?token=…);
// opening it sets a cookie (HttpOnly, SameSite=Lax, for /widget/demo only)
// and redirects to the plain page, which that browser may then open and
// refresh (?session=json) for as long as the process runs. Without the
// cookie, or with a token already used, the page answers 403. Each keyd dev
// process makes its own token and cookie.
type DemoAccess struct {
	token, cookie string
	used          atomic.Bool
}

// NewDemoAccess returns a DemoAccess with a fresh random token and cookie
// value (128 bits each). Errors: the system's random source failing.
func NewDemoAccess() (*DemoAccess, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return &DemoAccess{token: hex.EncodeToString(b[:16]), cookie: hex.EncodeToString(b[16:])}, nil
}

// Token is the one-time token, for the printed URL: /widget/demo?token=<Token>.
func (d *DemoAccess) Token() string { return d.token }

// Wrap serves h to requests with the cookie, exchanges an unused token
// for the cookie, and refuses everything else with 403.
func (d *DemoAccess) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer")
		if c, err := r.Cookie(DemoCookie); err == nil && equal(c.Value, d.cookie) {
			h.ServeHTTP(w, r)
			return
		}
		if tok := r.URL.Query().Get("token"); tok != "" && equal(tok, d.token) && d.used.CompareAndSwap(false, true) {
			http.SetCookie(w, &http.Cookie{Name: DemoCookie, Value: d.cookie, Path: r.URL.Path,
				HttpOnly: true, SameSite: http.SameSiteLaxMode})
			http.Redirect(w, r, r.URL.Path, http.StatusSeeOther)
			return
		}
		http.Error(w, "The widget demo opens only from the one-time link keyd dev printed at start "+
			"(Widget demo: …/widget/demo?token=…), in the browser that first opened it. "+
			"Restart keyd dev for a new link.", http.StatusForbidden)
	})
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }
