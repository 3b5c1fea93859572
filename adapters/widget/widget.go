// Package widget serves keyd's drop-in API key manager: the <keyd-api-keys> Web
// Component (GET /widget/keyd-api-keys.js) and, for `keyd dev`, a demo settings page
// that embeds it (GET /widget/demo).
//
// The contract between the widget and keyd:
//
//   - A product embeds it with
//     <script src="https://keyd.example/widget/keyd-api-keys.js"></script> and
//     <keyd-api-keys session-token="…"></keyd-api-keys>, where the token comes from
//     POST /v1/widget/sessions, made by the product's server with the admin token.
//     Attributes: session-token (set it again to refresh an expired session),
//     api-base (default: the origin the script was loaded from) and org-id
//     (optional; without it the widget calls GET /v1/widget/session).
//   - The widget sends `Authorization: Bearer <session token>` to the (W) routes of
//     the HTTP API only: GET /v1/permissions; GET, POST /v1/orgs/{org}/keys;
//     PUT /v1/orgs/{org}/keys/{id}/permissions; POST /v1/orgs/{org}/keys/{id}/rotate
//     and /revoke; plus GET /v1/widget/session, which answers
//     {"org_id", "user_id", "expires_at"} for the token it is called with. After a
//     command it re-lists with min_sequence=<reply sequence> (read-your-writes).
//     Those routes need CORS for the embedding origins (--widget-origins), including
//     the Authorization and Content-Type request headers.
//   - On HTTP 401 the element dispatches a `keyd-session-expired` CustomEvent
//     (bubbles, composed) so the host page can set a fresh session-token.
//   - Secrets from create and rotate are shown once and dropped from the DOM and
//     from memory when the admin closes the panel. Server data is only ever set as
//     text, never parsed as HTML.
package widget

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"html/template"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

//go:embed keyd-api-keys.js
var script []byte

//go:embed demo.html
var demoHTML string

var (
	scriptETag = func() string {
		sum := sha256.Sum256(script)
		return `"` + hex.EncodeToString(sum[:12]) + `"`
	}()
	demoTemplate = template.Must(template.New("demo.html").Parse(demoHTML))
)

// ScriptHandler serves the widget script, cacheable for five minutes and
// revalidated by ETag.
func ScriptHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "use GET to fetch the widget script", http.StatusMethodNotAllowed)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("Cache-Control", "public, max-age=300")
		h.Set("ETag", scriptETag)
		h.Set("X-Content-Type-Options", "nosniff")
		// A public static file: let pages load it with crossorigin/integrity too.
		h.Set("Access-Control-Allow-Origin", "*")
		http.ServeContent(w, r, "keyd-api-keys.js", time.Time{}, bytes.NewReader(script))
	})
}

// demoPage is what demo.html is rendered with.
type demoPage struct {
	Token string
	OrgID string
}

// DemoHandler serves the demo settings page, with a fresh widget session from
// newSession on every request. With ?session=json it answers the new session as
// {"token", "org_id"} instead, which the page uses to refresh an expired token.
func DemoHandler(newSession func(ctx context.Context) (token, orgID string, err error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "use GET to open the demo page", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")

		token, orgID, err := newSession(r.Context())
		if err != nil {
			slog.ErrorContext(r.Context(), "widget demo: cannot create a widget session", "err", err)
			http.Error(w, "The demo could not create a widget session: "+err.Error(), http.StatusServiceUnavailable)
			return
		}

		if strings.EqualFold(r.URL.Query().Get("session"), "json") {
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]string{"token": token, "org_id": orgID})
			return
		}

		var buf bytes.Buffer
		if err := demoTemplate.Execute(&buf, demoPage{Token: token, OrgID: orgID}); err != nil {
			slog.ErrorContext(r.Context(), "widget demo: cannot render the page", "err", err)
			http.Error(w, "The demo page could not be rendered.", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if r.Method == http.MethodHead {
			return
		}
		_, _ = w.Write(buf.Bytes())
	})
}
