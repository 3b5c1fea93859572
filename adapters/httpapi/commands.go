package httpapi

import (
	"io"
	"net/http"

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
// says. A Keyd-Command-Id header makes retries idempotent, as on NATS.
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
