package httpapi

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/keyd-dev/keyd/adapters/metrics"

	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
)

// The read routes answer from the Postgres read models, which follow the
// event stream a little behind it. Each takes ?min_sequence=N (the sequence
// of a command reply): the read waits, at most Server.MinSequenceWait, until
// the read models have applied N, else unavailable (503) — read-your-writes.
// Each reply carries Keyd-Sequence: the applied sequence read before the
// data, so the data is at least that new. The wording of a bad status or
// limit is the read model's (postgres.CheckKeyStatus, CheckKeyLimit,
// CheckEventLimit), checked here before any wait.

// readModels names the read models in the messages of their failures
// (domain.Classify).
const readModels = "the read models"

// keyList is the reply of GET /v1/orgs/{org}/keys.
type keyList struct {
	Data       []domain.KeyView `json:"data"`
	NextCursor *string          `json:"next_cursor"`
}

// eventList is the reply of GET /v1/orgs/{org}/events.
type eventList struct {
	Data      []json.RawMessage `json:"data"`
	NextAfter uint64            `json:"next_after"`
}

// permissionList is the reply of GET /v1/permissions.
type permissionList struct {
	Data []domain.Permission `json:"data"`
}

// listKeys answers GET /v1/orgs/{org}/keys?status=&limit=&cursor=&min_sequence=:
// the organization's keys, newest first, a page at a time.
// Errors: invalid_argument for a bad status, limit (1..100), cursor or
// min_sequence; unavailable when min_sequence is not reached in time.
func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, c caller) {
	q := r.URL.Query()
	f := postgres.KeyFilter{Status: q.Get("status"), Cursor: q.Get("cursor"),
		OwnerType: q.Get("owner_type"), OwnerID: q.Get("owner_id"), Q: q.Get("q"), Permission: q.Get("permission")}
	if v := q.Get("expires_before"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			s.writeError(w, r, domain.Errorf(domain.EInvalid, "expires_before must be an RFC 3339 time such as 2026-01-02T15:04:05Z, got %q", v))
			return
		}
		f.ExpiresBefore = &t
	}
	if err := postgres.CheckKeyFilter(f); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !c.admin && c.session.Scope == ScopeUser {
		// A user-scope session sees its own keys only, whatever it asks.
		if (f.OwnerType != "" && f.OwnerType != domain.OwnerUser) || (f.OwnerID != "" && f.OwnerID != c.session.UserID) {
			writeJSON(w, http.StatusOK, keyList{Data: []domain.KeyView{}})
			return
		}
		f.OwnerType, f.OwnerID = domain.OwnerUser, c.session.UserID
	}
	if v := q.Get("limit"); v != "" {
		n, err := parseLimit(v, postgres.MaxKeyLimit, postgres.CheckKeyLimit)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		f.Limit = n
	}
	if err := postgres.CheckKeyStatus(f.Status); err != nil {
		s.writeError(w, r, err)
		return
	}
	if !s.readSequence(w, r, c) {
		return
	}
	keys, next, err := s.Reads.ListKeys(r.Context(), r.PathValue("org"), f)
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return
	}
	if keys == nil {
		keys = []domain.KeyView{}
	}
	reply := keyList{Data: keys}
	if next != "" {
		reply.NextCursor = &next
	}
	writeJSON(w, http.StatusOK, reply)
}

// getKey answers GET /v1/orgs/{org}/keys/{key_id}?min_sequence=: one key.
// Errors: not_found (a key of another organization too); invalid_argument
// for a bad min_sequence; unavailable when it is not reached in time.
func (s *Server) getKey(w http.ResponseWriter, r *http.Request, c caller) {
	if at := r.URL.Query().Get("at"); at != "" {
		s.keyAt(w, r, c, at)
		return
	}
	if !s.readSequence(w, r, c) {
		return
	}
	key, err := s.Reads.GetKey(r.Context(), r.PathValue("org"), r.PathValue("key_id"))
	if err == nil && !c.admin && c.session.Scope == ScopeUser &&
		(key.Owner.Type != domain.OwnerUser || key.Owner.ID != c.session.UserID) {
		// Another member's key does not exist for a user-scope session.
		err = domain.Errorf(domain.ENotFound, "key %s not found in organization %s", key.ID, key.OrgID)
	}
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return
	}
	writeJSON(w, http.StatusOK, key)
}

// listEvents answers GET /v1/orgs/{org}/events?after=&limit=&min_sequence=:
// the organization's audit events after stream sequence `after`, oldest
// first, each the event envelope with its "sequence"; next_after is the
// `after` of the next page. Errors: invalid_argument for a bad after, limit
// (1..1000, default 100) or min_sequence; unavailable as for every read.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request, c caller) {
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.writeError(w, r, domain.Errorf(domain.EInvalid, "after must be a stream sequence (an integer of at least 0), got %q", v))
			return
		}
		after = n
	}
	var limit int
	if v := q.Get("limit"); v != "" {
		n, err := parseLimit(v, postgres.MaxEventLimit, postgres.CheckEventLimit)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		limit = n
	}
	if !s.readSequence(w, r, c) {
		return
	}
	events, next, err := s.Reads.ListEvents(r.Context(), r.PathValue("org"), after, limit)
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return
	}
	if events == nil {
		events = []json.RawMessage{}
	}
	writeJSON(w, http.StatusOK, eventList{Data: events, NextAfter: next})
}

// listPermissions answers GET /v1/permissions?min_sequence=: the catalog,
// retired permissions included, by slug.
func (s *Server) listPermissions(w http.ResponseWriter, r *http.Request, c caller) {
	if !s.readSequence(w, r, c) {
		return
	}
	perms, err := s.Reads.ListPermissions(r.Context())
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return
	}
	if perms == nil {
		perms = []domain.Permission{}
	}
	writeJSON(w, http.StatusOK, permissionList{Data: perms})
}

// roleList is the reply of GET /v1/roles.
type roleList struct {
	Data []domain.Role `json:"data"`
}

// listRoles answers GET /v1/roles?min_sequence=: the role catalog, retired
// roles included (with their status), by slug.
func (s *Server) listRoles(w http.ResponseWriter, r *http.Request, c caller) {
	if !s.readSequence(w, r, c) {
		return
	}
	roles, err := s.Reads.ListRoles(r.Context())
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return
	}
	writeJSON(w, http.StatusOK, roleList{Data: roles})
}

// parseLimit parses a limit query parameter and checks its range with the
// read model's check (check).
func parseLimit(v string, max int, check func(int) error) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, domain.Errorf(domain.EInvalid, "limit must be an integer between 1 and %d, got %q", max, v)
	}
	return n, check(n)
}

// readSequence handles min_sequence and sets Keyd-Sequence, once per read,
// to the applied sequence read before the data (so a read that then fails,
// a 404, tells it too). On an error it has written the reply and returns
// false.
//
// A min_sequence wait parks on the process's one sequenceWatcher, at most
// MaxWaitsPerToken at once per token (more: rate_limited).
func (s *Server) readSequence(w http.ResponseWriter, r *http.Request, c caller) bool {
	if s.Reads == nil {
		s.writeError(w, r, domain.Errorf(domain.EUnavailable, "this server has no read models; retry on another"))
		return false
	}
	var want uint64
	if v := r.URL.Query().Get("min_sequence"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.writeError(w, r, domain.Errorf(domain.EInvalid, "min_sequence must be a stream sequence (an integer of at least 0), got %q", v))
			return false
		}
		want = n
	}
	var applied uint64
	var err error
	if want > 0 {
		applied, err = s.waitForSequence(r.Context(), c, want)
		if domain.ErrorCode(err) == domain.ERateLimited {
			s.writeError(w, r, err)
			return false
		}
		if domain.ErrorCode(err) == domain.EUnavailable {
			w.Header().Set(SequenceHeader, strconv.FormatUint(applied, 10))
			s.writeError(w, r, domain.Wrap(err, domain.EUnavailable,
				"the read models have applied sequence %d, not yet %d, after waiting %s; retry", applied, want, s.minSequenceWait()))
			return false
		}
	} else {
		applied, err = s.Reads.AppliedSequence(r.Context())
	}
	if err != nil {
		s.writeError(w, r, domain.Classify(err, readModels))
		return false
	}
	w.Header().Set(SequenceHeader, strconv.FormatUint(applied, 10))
	return true
}

// waitForSequence waits on the shared watcher until the read models have
// applied want, holding one of c's MaxWaitsPerToken wait slots.
// Errors: rate_limited when c has them all; those of sequenceWatcher.wait.
func (s *Server) waitForSequence(ctx context.Context, c caller, want uint64) (uint64, error) {
	key := c.limitKey()
	if !s.limits.waits.acquire(key) {
		s.Metrics.Limit(metrics.LimitWaits)
		return 0, rateLimited(time.Second, "this token already has %d reads waiting for min_sequence; retry after the others are answered", MaxWaitsPerToken)
	}
	defer s.limits.waits.release(key)
	return s.limits.watcher.wait(ctx, want, s.minSequenceWait())
}
