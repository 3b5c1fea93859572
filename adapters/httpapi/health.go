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

// readyz answers GET /readyz, readiness (NATS, Postgres, verifier caught
// up, as Server.Ready judges): 200 when ready, else 503; the body is Ready's
// detail with "status": "ok" or "unavailable".
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ok, detail := true, map[string]any(nil)
	if s.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		ok, detail = s.Ready(ctx)
		cancel()
	}
	body := make(map[string]any, len(detail)+1)
	maps.Copy(body, detail)
	status := http.StatusOK
	body["status"] = "ok"
	if !ok {
		status = http.StatusServiceUnavailable
		body["status"] = "unavailable"
	}
	writeJSON(w, status, body)
}
