package httpapi

import (
	"net/http"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// verifyRequest is the body of POST /v1/keys/verify.
type verifyRequest struct {
	Key         *string  `json:"key"`
	Permissions []string `json:"permissions"`
	Resource    string   `json:"resource"`
}

// verify answers POST /v1/keys/verify from this process's in-memory
// verifier: always 200 with {"valid", "code", "key"?, "sequence"} for a
// well-formed request (a malformed key is code "malformed", not an error);
// 400 for a malformed body; 503 unavailable when the verifier is not caught
// up or has been cut off from the stream longer than its staleness bound.
func (s *Server) verify(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.Verifier == nil {
		s.writeError(w, r, domain.Errorf(domain.EUnavailable, "this process has no verifier"))
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req verifyRequest
	if err := commands.Decode(body, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Key == nil {
		s.writeError(w, r, domain.Errorf(domain.EInvalid, `"key" is required: the API key to verify`))
		return
	}
	// An empty or mistyped key is a well-formed request: 200, code malformed.
	res, err := s.Verifier.VerifyResource(r.Context(), *req.Key, req.Resource, req.Permissions...)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if s.Metrics != nil {
		s.Metrics.Verifications.WithLabelValues(res.Code).Inc()
	}
	writeJSON(w, http.StatusOK, res)
}
