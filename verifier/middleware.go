package verifier

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/keyd-dev/keyd/domain"
)

type keyInfoCtx struct{}

// FromContext returns the key a request was authenticated with by
// Middleware.
func FromContext(ctx context.Context) (*KeyInfo, bool) {
	k, ok := ctx.Value(keyInfoCtx{}).(*KeyInfo)
	return k, ok
}

// NewContext returns ctx carrying k (what Middleware does; for tests of
// handlers).
func NewContext(ctx context.Context, k *KeyInfo) context.Context {
	return context.WithValue(ctx, keyInfoCtx{}, k)
}

// Middleware returns HTTP middleware that lets a request through only with
// a valid API key holding every one of permissions. The key is read from
// "Authorization: Bearer <key>", else from the X-API-Key header. Refusals
// are the contract's JSON errors:
//
//   - 401 unauthenticated: no key, or a malformed, unknown, revoked or
//     expired one (with WWW-Authenticate: Bearer);
//   - 403 permission_denied: the key lacks a permission;
//   - 503 unavailable: the verifier cannot vouch for keys right now (with
//     Retry-After).
//
// On success the handler finds the key with FromContext. Middleware panics
// if a permission is not a permission slug (a programming error).
func (v *Verifier) Middleware(permissions ...string) func(http.Handler) http.Handler {
	for _, p := range permissions {
		if !domain.ValidSlug(p) {
			panic(fmt.Sprintf("verifier.Middleware: %q is not a permission slug (^[a-z0-9][a-z0-9_.:-]{0,127}$)", p))
		}
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			secret, ok := keyFromRequest(r)
			if !ok {
				writeError(w, http.StatusUnauthorized, domain.EUnauthorized,
					`an API key is required: send it as "Authorization: Bearer <key>" or in the X-API-Key header`)
				return
			}
			res, err := v.Verify(r.Context(), secret, permissions...)
			if err != nil {
				code := domain.ErrorCode(err)
				if code == domain.EUnavailable {
					w.Header().Set("Retry-After", "1")
				}
				writeError(w, domain.HTTPStatus(code), code, domain.ErrorMessage(err))
				return
			}
			switch res.Code {
			case CodeValid:
				k := res.Key
				next.ServeHTTP(w, r.WithContext(NewContext(r.Context(), &k)))
			case CodeInsufficientPermissions:
				missing := ""
				for _, p := range permissions {
					if !res.Key.HasPermission(p) {
						missing = p
						break
					}
				}
				writeError(w, http.StatusForbidden, domain.EForbidden,
					fmt.Sprintf("the API key lacks the permission %q", missing))
			default:
				writeError(w, http.StatusUnauthorized, domain.EUnauthorized, refusal(res.Code))
			}
		})
	}
}

func refusal(code string) string {
	switch code {
	case CodeMalformed:
		return "the API key is malformed: it was mistyped or truncated"
	case CodeRevoked:
		return "the API key has been revoked"
	case CodeExpired:
		return "the API key has expired"
	}
	return "the API key is not valid"
}

// keyFromRequest reads the key from "Authorization: Bearer <key>" (scheme
// case-insensitive), else from X-API-Key.
func keyFromRequest(r *http.Request) (string, bool) {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, key, found := strings.Cut(h, " ")
		if found && strings.EqualFold(scheme, "Bearer") {
			if key = strings.TrimSpace(key); key != "" {
				return key, true
			}
		}
	}
	if key := strings.TrimSpace(r.Header.Get("X-API-Key")); key != "" {
		return key, true
	}
	return "", false
}

func writeError(w http.ResponseWriter, status int, code, message string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="api"`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(domain.ErrorBody{Error: domain.ErrorDetail{Code: code, Message: message}})
}
