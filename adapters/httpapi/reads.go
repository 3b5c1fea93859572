package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
)

// The read routes answer from the Postgres read models, which follow the
// event stream a little behind it. Each takes ?min_sequence=N (the sequence
// of a command reply): the read waits, at most Server.MinSequenceWait, until
// the read models have applied N, else unavailable (503) — read-your-writes.
// Each reply carries Keyd-Sequence: the applied sequence read before the
// data, so the data is at least that new.

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
func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, _ caller) {
	q := r.URL.Query()
	f := postgres.KeyFilter{Status: q.Get("status"), Cursor: q.Get("cursor")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > postgres.MaxKeyLimit {
			s.fail(w, r, domain.Errorf(domain.EInvalid, "limit must be an integer from 1 to %d, got %q", postgres.MaxKeyLimit, v))
			return
		}
		f.Limit = n
	}
	switch f.Status {
	case "", "all", domain.StatusActive, domain.StatusRevoked, domain.StatusExpired:
	default:
		s.fail(w, r, domain.Errorf(domain.EInvalid, "status must be all, active, revoked or expired, got %q", f.Status))
		return
	}
	seq, ok := s.readSequence(w, r)
	if !ok {
		return
	}
	keys, next, err := s.Reads.ListKeys(r.Context(), r.PathValue("org"), f)
	if err != nil {
		s.fail(w, r, readError(err))
		return
	}
	if keys == nil {
		keys = []domain.KeyView{}
	}
	reply := keyList{Data: keys}
	if next != "" {
		reply.NextCursor = &next
	}
	s.writeRead(w, seq, reply)
}

// getKey answers GET /v1/orgs/{org}/keys/{key_id}?min_sequence=: one key.
// Errors: not_found (a key of another organization too); invalid_argument
// for a bad min_sequence; unavailable when it is not reached in time.
func (s *Server) getKey(w http.ResponseWriter, r *http.Request, _ caller) {
	seq, ok := s.readSequence(w, r)
	if !ok {
		return
	}
	key, err := s.Reads.GetKey(r.Context(), r.PathValue("org"), r.PathValue("key_id"))
	if err != nil {
		s.fail(w, r, readError(err))
		return
	}
	s.writeRead(w, seq, key)
}

// listEvents answers GET /v1/orgs/{org}/events?after=&limit=&min_sequence=:
// the organization's audit events after stream sequence `after`, oldest
// first, each the event envelope with its "sequence"; next_after is the
// `after` of the next page. Errors: invalid_argument for a bad after, limit
// (1..1000, default 100) or min_sequence; unavailable as for every read.
func (s *Server) listEvents(w http.ResponseWriter, r *http.Request, _ caller) {
	q := r.URL.Query()
	var after uint64
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.fail(w, r, domain.Errorf(domain.EInvalid, "after must be a stream sequence (an integer of at least 0), got %q", v))
			return
		}
		after = n
	}
	var limit int
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > postgres.MaxEventLimit {
			s.fail(w, r, domain.Errorf(domain.EInvalid, "limit must be an integer from 1 to %d, got %q", postgres.MaxEventLimit, v))
			return
		}
		limit = n
	}
	seq, ok := s.readSequence(w, r)
	if !ok {
		return
	}
	events, next, err := s.Reads.ListEvents(r.Context(), r.PathValue("org"), after, limit)
	if err != nil {
		s.fail(w, r, readError(err))
		return
	}
	if events == nil {
		events = []json.RawMessage{}
	}
	s.writeRead(w, seq, eventList{Data: events, NextAfter: next})
}

// listPermissions answers GET /v1/permissions?min_sequence=: the catalog,
// retired permissions included, by slug.
func (s *Server) listPermissions(w http.ResponseWriter, r *http.Request, _ caller) {
	seq, ok := s.readSequence(w, r)
	if !ok {
		return
	}
	perms, err := s.Reads.ListPermissions(r.Context())
	if err != nil {
		s.fail(w, r, readError(err))
		return
	}
	if perms == nil {
		perms = []domain.Permission{}
	}
	s.writeRead(w, seq, permissionList{Data: perms})
}

// readSequence handles min_sequence and returns the applied sequence to
// report in Keyd-Sequence, read before the data. On an error it has written
// the reply and returns ok=false.
func (s *Server) readSequence(w http.ResponseWriter, r *http.Request) (seq uint64, ok bool) {
	if s.Reads == nil {
		s.fail(w, r, domain.Errorf(domain.EUnavailable, "this server has no read models; retry on another"))
		return 0, false
	}
	if v := r.URL.Query().Get("min_sequence"); v != "" {
		want, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.fail(w, r, domain.Errorf(domain.EInvalid, "min_sequence must be a stream sequence (an integer of at least 0), got %q", v))
			return 0, false
		}
		if want > 0 {
			applied, err := s.Reads.WaitForSequence(r.Context(), want, s.minSequenceWait())
			if err != nil {
				if domain.ErrorCode(err) == domain.EUnavailable {
					w.Header().Set(SequenceHeader, strconv.FormatUint(applied, 10))
					writeError(w, domain.Errorf(domain.EUnavailable,
						"the read models have applied sequence %d, not yet %d, after waiting %s; retry", applied, want, s.minSequenceWait()))
					return 0, false
				}
				s.fail(w, r, readError(err))
				return 0, false
			}
			// Set now, so that a read that then fails (404) tells it too.
			w.Header().Set(SequenceHeader, strconv.FormatUint(applied, 10))
			return applied, true
		}
	}
	applied, err := s.Reads.AppliedSequence(r.Context())
	if err != nil {
		s.fail(w, r, readError(err))
		return 0, false
	}
	w.Header().Set(SequenceHeader, strconv.FormatUint(applied, 10))
	return applied, true
}

// writeRead writes a read reply with its Keyd-Sequence header.
func (s *Server) writeRead(w http.ResponseWriter, seq uint64, v any) {
	w.Header().Set(SequenceHeader, strconv.FormatUint(seq, 10))
	writeJSON(w, http.StatusOK, v)
}

// readError classifies a read-model failure: domain errors pass; running
// out of time is unavailable (retryable); the rest stays internal, with its
// cause kept for the log.
func readError(err error) error {
	var de *domain.Error
	if errors.As(err, &de) {
		return err
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return &causedError{user: domain.Errorf(domain.EUnavailable, "the read models did not answer in time; retry"), cause: err}
	}
	return err
}

// causedError is a user-facing *domain.Error that keeps its cause for logs.
type causedError struct {
	user  *domain.Error
	cause error
}

func (e *causedError) Unwrap() []error { return []error{e.user, e.cause} }
func (e *causedError) Error() string   { return e.user.Error() + " (" + e.cause.Error() + ")" }
