package httpapi

import (
	"encoding/json"
	"io"
	"net/http"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// command returns the handler of a management route: it reads the body (at
// most domain.MaxCommandBytes; more is too_large) and hands it to
// Runner.Run with the organization, key id and slug from the path, so HTTP
// commands take the same path as NATS ones and get the same replies.
//
// The recorded actor: for the admin token, the body's "actor", or
// {"type": "service", "id": "admin"} when it names none; for a widget
// session, always {"type": "user", "id": <session user>}, whatever the body
// says. A Keyd-Command-Id header makes retries idempotent, as on NATS.
//
// create replies 201, the others 200. Errors are the Runner's, written by
// writeError; the Runner logs internal ones itself.
func (s *Server) command(name string) authedHandler {
	return func(w http.ResponseWriter, r *http.Request, c caller) {
		body, err := readBody(w, r)
		if err != nil {
			writeError(w, err)
			return
		}
		o := commands.Override{
			KeyID:     r.PathValue("key_id"),
			Slug:      r.PathValue("slug"),
			CommandID: r.Header.Get(CommandIDHeader),
		}
		switch {
		case !c.admin:
			o.Actor = c.actor()
		case !namesActor(body):
			a := adminActor
			o.Actor = &a
		}
		org := r.PathValue("org")
		reply, err := s.Runner.Run(r.Context(), name, org, body, o)
		if err != nil {
			writeError(w, err)
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

// readBody reads a command body of at most domain.MaxCommandBytes.
// Errors: too_large, or invalid_argument when the body breaks off.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > domain.MaxCommandBytes {
		return nil, domain.Errorf(domain.ETooLarge, "request body is %d bytes; at most %d bytes are accepted", r.ContentLength, domain.MaxCommandBytes)
	}
	// One byte over the limit is read, so that DecodeCommand names the size.
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, domain.MaxCommandBytes+1))
	if err != nil {
		return nil, bodyError(err)
	}
	return b, nil
}

// namesActor reports whether a JSON command body has a non-null "actor"
// member (matched as encoding/json matches it, case-insensitively). A body
// that does not parse names none; the Runner reports what is wrong with it.
func namesActor(body []byte) bool {
	var probe struct {
		Actor json.RawMessage `json:"actor"`
	}
	if json.Unmarshal(body, &probe) != nil {
		return false
	}
	return len(probe.Actor) > 0 && string(probe.Actor) != "null"
}
