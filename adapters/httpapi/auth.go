package httpapi

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"

	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
)

// access says which bearer tokens a route takes.
type access int

const (
	// adminOnly routes take the admin token only; a widget session token
	// is permission_denied.
	adminOnly access = iota
	// widget routes, marked (W) in the contract, take the admin token or a
	// widget session token of the organization in the path.
	widget
	// sessionOnly routes describe the widget session they are called with.
	sessionOnly
)

// caller is who a request authenticated as: the admin, or a widget session.
type caller struct {
	admin   bool
	session Session
}

// limitKey names c's token in the per-token limits.
func (c caller) limitKey() string {
	if c.admin {
		return "admin"
	}
	return "session:" + c.session.ID
}

// actor is the actor a widget session's commands are recorded with.
func (c caller) actor() *domain.Actor {
	return &domain.Actor{Type: "user", ID: c.session.UserID}
}

// adminActor is recorded on admin commands that name no actor.
var adminActor = domain.Actor{Type: "service", ID: "admin"}

// authenticate reads "Authorization: Bearer <token>" and checks it against
// the admin token (by constant-time comparison of SHA-256 digests, so
// neither content nor length leaks) and then as a widget session token
// that has not been ended (EndedSessions). Errors: unauthenticated for a
// missing, malformed, unknown, expired or ended token, with the reason
// keyd_auth_failures_total counts it under.
func (s *Server) authenticate(r *http.Request) (c caller, reason string, err error) {
	h := r.Header.Get("Authorization")
	scheme, token, ok := strings.Cut(h, " ")
	token = strings.TrimSpace(token)
	if h == "" {
		return caller{}, metrics.AuthMissing, domain.Errorf(domain.EUnauthorized, "missing Authorization header; send Authorization: Bearer <admin token or widget session token>")
	}
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return caller{}, metrics.AuthMalformed, domain.Errorf(domain.EUnauthorized, "the Authorization header must be \"Bearer <token>\"")
	}
	if s.AdminToken != "" {
		got, want := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(s.AdminToken))
		if subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
			return caller{admin: true}, "", nil
		}
	}
	if s.Sessions != nil && strings.HasPrefix(token, SessionTokenPrefix) {
		sess, err := s.Sessions.Verify(token)
		if err != nil {
			if errors.Is(err, errSessionExpired) {
				return caller{}, metrics.AuthExpired, err
			}
			return caller{}, metrics.AuthInvalid, err
		}
		if s.EndedSessions != nil && s.EndedSessions.Ended(sess.ID) {
			return caller{}, metrics.AuthEnded, domain.Errorf(domain.EUnauthorized, "this widget session was ended; ask the host page for a new one")
		}
		return caller{session: sess}, "", nil
	}
	return caller{}, metrics.AuthInvalid, domain.Errorf(domain.EUnauthorized, "the bearer token is not valid")
}

// authorize checks that c may call a route of kind a for org (empty for
// routes without an organization). Errors: permission_denied.
func authorize(c caller, a access, org string) error {
	switch {
	case a == sessionOnly && c.admin:
		return domain.Errorf(domain.EForbidden, "this route describes a widget session; call it with a widget session token, not the admin token")
	case a == sessionOnly || c.admin:
		return nil
	case a == adminOnly:
		return domain.Errorf(domain.EForbidden, "a widget session token may not call this route; it needs the admin token")
	case org != "" && org != c.session.OrgID:
		return domain.Errorf(domain.EForbidden, "this widget session is for organization %q only", c.session.OrgID)
	}
	return nil
}
