package httpapi

import (
	"net/http"
	"time"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
)

// lifecycleRoutes registers the routes of suspension, expiry changes, key
// history, organization policies and leak reports.
func (s *Server) lifecycleRoutes(r router) {
	r.handle("POST /v1/orgs/{org}/keys/{key_id}/suspend", widget, s.command(commands.Suspend))
	r.handle("POST /v1/orgs/{org}/keys/{key_id}/resume", widget, s.command(commands.Resume))
	r.handle("PUT /v1/orgs/{org}/keys/{key_id}/expiry", widget, s.command(commands.SetExpiry))
	r.handle("GET /v1/orgs/{org}/keys/{key_id}/history", widget, s.keyHistory)
	r.handle("GET /v1/orgs/{org}/policy", widget, s.getPolicy)
	r.handle("PUT /v1/orgs/{org}/policy", adminOnly, s.command(commands.SetPolicy))
	r.mux.HandleFunc("POST /v1/leaks", s.leaks)
}

// historyList is the reply of GET /v1/orgs/{org}/keys/{key_id}/history.
type historyList struct {
	Data []postgres.HistoryEntry `json:"data"`
}

// keyHistory answers GET /v1/orgs/{org}/keys/{key_id}/history?min_sequence=:
// every event of the key, oldest first, each with the key right after it.
// Errors: not_found; unavailable as for every read.
func (s *Server) keyHistory(w http.ResponseWriter, r *http.Request, c caller) {
	if !s.readSequence(w, r, c) {
		return
	}
	h, err := s.Reads.KeyHistory(r.Context(), r.PathValue("org"), r.PathValue("key_id"))
	if err == nil && len(h) > 0 {
		// A key's owner never changes: its first entry says whose it is.
		err = hiddenFrom(c, h[0].Key)
	}
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return
	}
	writeJSON(w, http.StatusOK, historyList{Data: h})
}

// keyAt answers GET /v1/orgs/{org}/keys/{key_id}?at=<RFC 3339>: the key as
// of that instant. Errors: invalid_argument for a bad time; not_found
// before the key existed.
func (s *Server) keyAt(w http.ResponseWriter, r *http.Request, c caller, v string) {
	at, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		s.writeError(w, r, domain.Errorf(domain.EInvalid, "at must be an RFC 3339 time like 2026-01-02T15:04:05Z, got %q", v))
		return
	}
	if !s.readSequence(w, r, c) {
		return
	}
	k, err := s.Reads.KeyAt(r.Context(), r.PathValue("org"), r.PathValue("key_id"), at)
	if err == nil {
		err = hiddenFrom(c, k)
	}
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return
	}
	writeJSON(w, http.StatusOK, k)
}

// getPolicy answers GET /v1/orgs/{org}/policy: the organization's policy as
// the stream has it (every set_policy answered is in it), the default
// policy for an organization that never set one.
func (s *Server) getPolicy(w http.ResponseWriter, r *http.Request, _ caller) {
	res, err := s.Runner.Service.Policy(r.Context(), r.PathValue("org"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

// hiddenFrom returns not_found when caller c is a user-scope widget session
// and key belongs to someone else (another member's key does not exist for
// it, as in getKey), nil otherwise.
func hiddenFrom(c caller, key domain.KeyView) error {
	if !c.admin && c.session.Scope == ScopeUser && (key.Owner.Type != domain.OwnerUser || key.Owner.ID != c.session.UserID) {
		return domain.Errorf(domain.ENotFound, "key %s not found in organization %s", key.ID, key.OrgID)
	}
	return nil
}
