package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// EndedSessions records the widget sessions ended before their expiry
// (DELETE /v1/widget/sessions/{id}), so that every keyd process refuses
// them on every request.
type EndedSessions interface {
	// End records the session id as ended. Once it returns, this process
	// refuses the session; every other process does within the time a
	// JetStream message takes to reach it (milliseconds).
	End(ctx context.Context, id string) error
	// Ended reports whether the session id was ended. It is called on
	// every request a widget session makes, so it must not do I/O.
	Ended(id string) bool
}

// EndedSessionsBucket is the JetStream key-value bucket that records ended
// widget sessions: one key per session id, kept for EndedSessionsTTL. Only
// keyd's own processes use it (in the reference NATS layout it lives in the
// KEYD account, whose JetStream API no other account can reach); its keys
// are session ids, which grant nothing without the token's signature.
const EndedSessionsBucket = "KEYD_WIDGET_SESSIONS_ENDED"

// EndedSessionsTTL is how long an ended session id is kept: a session
// never outlives MaxSessionTTL, plus a margin for clocks that disagree
// between the process that issued a session and the one that checks it.
const EndedSessionsTTL = MaxSessionTTL + 5*time.Minute

// sessionIDPattern is the shape of a session id (Issue makes 22 base64url
// characters; older tokens carry a shorter nonce).
var sessionIDPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// KVEndedSessions is the EndedSessions of a deployment: ended ids are put
// in EndedSessionsBucket and every process watches the bucket into memory.
type KVEndedSessions struct {
	kv  jetstream.KeyValue
	log *slog.Logger

	mu    sync.RWMutex
	ended map[string]time.Time // id -> when this process learnt it
}

// endedSessionsSetup bounds setting up and loading the bucket.
const endedSessionsSetup = 30 * time.Second

// StartEndedSessions creates (or updates) EndedSessionsBucket with the
// given replicas, loads the ids it holds and keeps watching it until ctx
// ends. It returns once the ids already recorded are loaded (at most
// 30 s), so a process never serves a session another process has ended.
func StartEndedSessions(ctx context.Context, js jetstream.JetStream, replicas int, log *slog.Logger) (*KVEndedSessions, error) {
	if log == nil {
		log = slog.Default()
	}
	setup, cancel := context.WithTimeout(ctx, endedSessionsSetup)
	defer cancel()
	kv, err := eventstore.EnsureBucket(setup, js, jetstream.KeyValueConfig{
		Bucket:      EndedSessionsBucket,
		Description: "keyd: widget sessions ended before their expiry (DELETE /v1/widget/sessions/{id})",
		TTL:         EndedSessionsTTL,
		Replicas:    replicas,
		History:     1,
	})
	if err != nil {
		return nil, fmt.Errorf("setting up the ended widget sessions: %w", err)
	}
	e := &KVEndedSessions{kv: kv, log: log, ended: map[string]time.Time{}}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("watching the key-value bucket %s: %w", EndedSessionsBucket, err)
	}
	loaded := make(chan struct{})
	go e.follow(ctx, w, loaded)
	select {
	case <-loaded:
		return e, nil
	case <-setup.Done():
		return nil, fmt.Errorf("loading the ended widget sessions from %s: %w", EndedSessionsBucket, setup.Err())
	}
}

// follow applies the bucket's entries until ctx ends, closing loaded once
// the initial ones are in, and forgets ids older than EndedSessionsTTL
// (their sessions have expired anyway).
func (e *KVEndedSessions) follow(ctx context.Context, w jetstream.KeyWatcher, loaded chan struct{}) {
	defer func() { _ = w.Stop() }()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-prune.C:
			e.prune(time.Now().Add(-EndedSessionsTTL))
		case entry, ok := <-w.Updates():
			if !ok {
				if ctx.Err() == nil {
					e.log.Error("the watch of the ended widget sessions stopped; sessions ended from now on are refused by the process that ended them only",
						"bucket", EndedSessionsBucket)
				}
				return
			}
			if entry == nil {
				if loaded != nil {
					close(loaded)
					loaded = nil
				}
				continue
			}
			e.mark(entry.Key(), entry.Created())
		}
	}
}

func (e *KVEndedSessions) mark(id string, at time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.ended[id]; !ok {
		e.ended[id] = at
	}
}

func (e *KVEndedSessions) prune(before time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for id, at := range e.ended {
		if at.Before(before) {
			delete(e.ended, id)
		}
	}
}

// End implements EndedSessions.
func (e *KVEndedSessions) End(ctx context.Context, id string) error {
	now := time.Now().UTC()
	if _, err := e.kv.Put(ctx, id, []byte(now.Format(time.RFC3339Nano))); err != nil {
		return err
	}
	e.mark(id, now)
	return nil
}

// Ended implements EndedSessions.
func (e *KVEndedSessions) Ended(id string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	_, ok := e.ended[id]
	return ok
}

// endSessionReply is the reply of DELETE /v1/widget/sessions/{id}.
type endSessionReply struct {
	ID    string `json:"id"`
	Ended bool   `json:"ended"`
}

// endSession answers DELETE /v1/widget/sessions/{id} (admin token only):
// the session with that id (the "id" of its POST /v1/widget/sessions reply)
// is refused from now on by every keyd process, until it would have
// expired anyway: {"id", "ended": true}. Ending a session twice, or one
// that has expired, is fine. Errors: invalid_argument for an id that is not
// a session id's shape; unavailable when sessions cannot be ended here (no
// EndedSessions) or the bucket does not answer.
func (s *Server) endSession(w http.ResponseWriter, r *http.Request, _ caller) {
	id := r.PathValue("id")
	if !sessionIDPattern.MatchString(id) {
		s.writeError(w, r, domain.Errorf(domain.EInvalid, "%q is not a widget session id; use the \"id\" of the POST /v1/widget/sessions reply", id))
		return
	}
	if s.EndedSessions == nil {
		s.writeError(w, r, domain.Errorf(domain.EUnavailable, "widget sessions cannot be ended on this server"))
		return
	}
	if err := s.EndedSessions.End(r.Context(), id); err != nil {
		if !errors.As(err, new(*domain.Error)) {
			err = domain.Wrap(err, domain.EUnavailable, "the session could not be recorded as ended; retry")
		}
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, endSessionReply{ID: id, Ended: true})
}
