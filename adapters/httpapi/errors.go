package httpapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// writeError is how a handler replies with an error, and the one place the
// HTTP edge logs: an internal or unavailable error is logged with the
// route, the method and the error's internal cause (never bodies, tokens or
// secrets; domain errors never carry them). Errors that reach the client as
// invalid input, not found and so on are the client's business and are not
// logged. The reply is writeErrorBody's.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	if code := domain.ErrorCode(err); code == domain.EInternal || code == domain.EUnavailable {
		attrs := []slog.Attr{slog.String("method", r.Method), slog.String("route", routeLabel(r)),
			slog.String("code", code), slog.Any("err", err)}
		var de *domain.Error
		if errors.As(err, &de) && de.Err != nil {
			attrs = append(attrs, slog.Any("cause", de.Err))
		}
		s.logger().LogAttrs(r.Context(), slog.LevelError, "http request failed", attrs...)
	}
	writeErrorBody(w, err)
}

// writeErrorBody writes err as the reply, without logging: the status is
// domain.HTTPStatus of its code, the body domain.ErrorBody. Errors that are
// not *domain.Error are internal, and their text is not shown. A 401
// carries WWW-Authenticate: Bearer, a rate_limited error Retry-After. Handlers use Server.writeError; this is
// for the two replies that must not log again: a panic's (logged with its
// stack) and an unknown route's.
func writeErrorBody(w http.ResponseWriter, err error) {
	code := domain.ErrorCode(err)
	status := domain.HTTPStatus(code)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keyd"`)
	}
	setRetryAfter(w.Header(), err)
	writeJSON(w, status, domain.ErrorBodyOf(err))
}

// writeJSON writes v as the JSON reply with status. Replies are never
// cached: create and rotate replies carry secrets.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		// Only our own reply types are marshalled; this cannot happen
		// unless one of them is broken.
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"internal error"}}`)
	}
	b = append(b, '\n')
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// bodyError maps an error from reading a request body (through
// http.MaxBytesReader) to a domain error.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return domain.Errorf(domain.ETooLarge, "request body is larger than %d bytes", commands.MaxBytes)
	}
	return domain.Wrap(err, domain.EInvalid, "request body could not be read: the connection broke off")
}
