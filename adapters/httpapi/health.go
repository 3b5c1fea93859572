package httpapi

import (
	"context"
	"maps"
	"net/http"
	"time"
)

// readyTimeout bounds the readiness check.
const readyTimeout = 3 * time.Second

// healthz answers GET /healthz, liveness: 200 {"status": "ok"} while the
// process serves HTTP at all.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

// readyzDetail answers GET /readyz, readiness (NATS, Postgres, verifier
// caught up, as Server.Ready judges): 200 when ready, else 503; the body is
// Ready's detail with "status": "ok" or "unavailable". With
// InternalSurfaces it is served by InternalHandler only: the detail names
// internal errors, counts and sequences.
func (s *Server) readyzDetail(w http.ResponseWriter, r *http.Request) {
	ok, detail := s.readiness(r.Context())
	body := make(map[string]any, len(detail)+1)
	maps.Copy(body, detail)
	s.writeReadiness(w, ok, body)
}

// readyzStatus answers the public GET /readyz when InternalSurfaces is
// set: the same status code, and only {"status"}.
func (s *Server) readyzStatus(w http.ResponseWriter, r *http.Request) {
	ok, _ := s.readiness(r.Context())
	s.writeReadiness(w, ok, map[string]any{})
}

func (s *Server) readiness(ctx context.Context) (bool, map[string]any) {
	if s.Ready == nil {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	return s.Ready(ctx)
}

func (s *Server) writeReadiness(w http.ResponseWriter, ok bool, body map[string]any) {
	status := http.StatusOK
	body["status"] = "ok"
	if !ok {
		status = http.StatusServiceUnavailable
		body["status"] = "unavailable"
	}
	writeJSON(w, status, body)
}
