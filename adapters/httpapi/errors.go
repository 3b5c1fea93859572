package httpapi

import (
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strconv"

	"github.com/keyd-dev/keyd/domain"
)

// errorBody is the contract's error shape: {"error": {"code", "message"}}.
type errorBody struct {
	Error errorDetail `json:"error"`
}

type errorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// writeError is the one place an error becomes an HTTP reply: the status is
// domain.HTTPStatus of its code, the body {"error": {"code", "message"}}.
// Errors that are not *domain.Error are internal, and their text is not
// shown. A 401 carries WWW-Authenticate: Bearer. It logs nothing; see
// Server.fail.
func writeError(w http.ResponseWriter, err error) {
	code := domain.ErrorCode(err)
	if code == "" {
		code = domain.EInternal
	}
	status := domain.HTTPStatus(code)
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="keyd"`)
	}
	writeJSON(w, status, errorBody{Error: errorDetail{Code: code, Message: domain.ErrorMessage(err)}})
}

// fail writes err and, when it is internal or unavailable, logs it with the
// route and method (never bodies, tokens or secrets; domain errors never
// carry them). Errors that reach the client as invalid input, not found and
// so on are the client's business and are not logged.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	if code := domain.ErrorCode(err); code == domain.EInternal || code == domain.EUnavailable {
		s.logger().LogAttrs(r.Context(), slog.LevelError, "http request failed",
			slog.String("method", r.Method), slog.String("route", routeLabel(r)),
			slog.String("code", code), slog.Any("err", err))
	}
	writeError(w, err)
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
		return domain.Errorf(domain.ETooLarge, "request body is larger than %d bytes", domain.MaxCommandBytes)
	}
	return domain.Errorf(domain.EInvalid, "request body could not be read: the connection broke off")
}
