package httpapi

import (
	"io"
	"net/http"
	"strings"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// command returns the handler of a management route: it reads the body (at
// most commands.MaxBytes; more is too_large) and hands it to Runner.Run
// with what the route knows (commands.Transport: the key id or slug from
// the path, the actor, the Keyd-Command-Id header), so HTTP commands take
// the same path as NATS ones and get the same replies.
//
// The recorded actor: for the admin token, the body's "actor", or
// {"type": "service", "id": "admin"} when it names none; for a widget
// session, always {"type": "user", "id": <session user>}, whatever the body
// says. A widget session narrowed to some permissions may grant no other,
// and no role (checkGrant); a session's scope limits the keys it touches
// (Session.keyScope). A Keyd-Command-Id header makes retries idempotent, as on NATS.
//
// create replies 201, the others 200. Errors are the Runner's, written (and
// logged, if internal or unavailable) by writeError.
func (s *Server) command(name string) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, c caller) {
		body, err := readBody(w, r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		t := commands.Transport{
			KeyID:     r.PathValue("key_id"),
			Slug:      r.PathValue("slug"),
			CommandID: r.Header.Get(commands.CommandIDHeader),
			UserID:    r.PathValue("user_id"),
		}
		if c.admin {
			a := adminActor // a copy: the command may keep the pointer
			t.DefaultActor = &a
		} else {
			t.Actor = c.actor()
			t.Scope = c.session.keyScope()
			if err := checkGrant(name, body, c.session); err != nil {
				s.writeError(w, r, err)
				return
			}
		}
		org := r.PathValue("org")
		reply, err := s.Runner.Run(r.Context(), name, org, body, t)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		status := http.StatusOK
		if name == commands.Create {
			status = http.StatusCreated
			if res, ok := reply.(domain.CreateKeyResult); ok {
				w.Header().Set("Location", "/v1/orgs/"+org+"/keys/"+res.Key.ID)
			}
		}
		writeJSON(w, status, reply)
	}
}

// checkGrant refuses a create or set_permissions through a narrowed
// widget session that grants a permission the session may not grant, or
// any role (whose permissions may change later): permission_denied naming
// it. A body that does not decode is left to the
// Runner, which reports it. (rotate keeps the key's permissions, which a
// create or set_permissions granted.)
func checkGrant(name string, body []byte, sess Session) error {
	if sess.Permissions == nil {
		return nil
	}
	var perms, roles []string
	switch name {
	case commands.Create:
		var c domain.CreateKey
		if commands.Decode(body, &c) != nil {
			return nil
		}
		perms, roles = c.Permissions, c.Roles
	case commands.SetPermissions:
		var c domain.SetPermissions
		if commands.Decode(body, &c) != nil {
			return nil
		}
		perms, roles = c.Permissions, c.Roles
	default:
		return nil
	}
	if len(roles) > 0 {
		// A role's permissions can change after the grant: a narrowed
		// session could not keep its keys within its permissions.
		return domain.Errorf(domain.EForbidden, "this widget session is narrowed to some permissions and may not grant roles; grant permissions (%s) instead", grantable(sess.Permissions))
	}
	for _, p := range perms {
		if !sess.mayGrant(p) {
			return domain.Errorf(domain.EForbidden, "this widget session may not grant permission %q; it may grant only %s", p, grantable(sess.Permissions))
		}
	}
	return nil
}

// grantable lists a narrowed session's permissions for a message.
func grantable(perms []string) string {
	if len(perms) == 0 {
		return "none"
	}
	return strings.Join(perms, ", ")
}

// readBody reads a request body of at most commands.MaxBytes.
// Errors: too_large, or invalid_argument when the body breaks off.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > commands.MaxBytes {
		return nil, domain.Errorf(domain.ETooLarge, "request body is %d bytes; at most %d bytes are accepted", r.ContentLength, commands.MaxBytes)
	}
	// One byte over the limit is read, so that commands.Decode names the size.
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, commands.MaxBytes+1))
	if err != nil {
		return nil, bodyError(err)
	}
	return b, nil
}
