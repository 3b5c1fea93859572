package httpapi

import (
	"net/http"
	"net/url"
	"slices"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// CORS for the routes the widget calls: the (W) routes and
// GET /v1/widget/session. An Origin that is in Server.WidgetOrigins (exact
// match, e.g. "https://app.example.com"), or, with AllowLocalhostOrigins, an
// http(s) origin on localhost, 127.0.0.1 or [::1] at any port, gets
// Access-Control-Allow-Origin set to itself; nothing else does. No
// credentials: the widget authenticates with a bearer token, never cookies.
const (
	corsAllowMethods  = "GET, POST, PUT, PATCH, DELETE"
	corsAllowHeaders  = "Authorization, Content-Type, " + commands.CommandIDHeader
	corsExposeHeaders = SequenceHeader
	corsMaxAge        = "600"
)

// originAllowed reports whether the widget may be embedded on origin.
func (s *Server) originAllowed(origin string) bool {
	if origin == "" {
		return false
	}
	if slices.Contains(s.WidgetOrigins, origin) {
		return true
	}
	if !s.AllowLocalhostOrigins {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Path != "" || u.User != nil ||
		u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" {
		return false
	}
	// url.Parse has checked that a port, if any, is numeric.
	switch u.Hostname() {
	case "localhost", "127.0.0.1", "::1":
		return true
	}
	return false
}

// cors sets the CORS headers of a reply to a request from an allowed origin.
func (s *Server) cors(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if !s.originAllowed(origin) {
		return
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
}

// preflight answers a CORS preflight (OPTIONS) for a widget route: 204 with
// the allowed methods and headers for an allowed origin; permission_denied
// for another origin, so the reason is visible to whoever looks.
func (s *Server) preflight(w http.ResponseWriter, r *http.Request) {
	s.cors(w, r)
	origin := r.Header.Get("Origin")
	if origin != "" && !s.originAllowed(origin) {
		s.writeError(w, r, domain.Errorf(domain.EForbidden, "origin %q may not embed the keyd widget; add it to --widget-origins (KEYD_WIDGET_ORIGINS)", origin))
		return
	}
	h := w.Header()
	h.Set("Allow", "OPTIONS, "+corsAllowMethods)
	if origin != "" {
		h.Set("Access-Control-Allow-Methods", corsAllowMethods)
		h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
		h.Set("Access-Control-Max-Age", corsMaxAge)
	}
	w.WriteHeader(http.StatusNoContent)
}
