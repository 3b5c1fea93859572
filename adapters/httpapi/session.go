package httpapi

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// SessionKeyLabel is the label the wiring derives the session key with:
// domain.DeriveKey(deploymentSecret, SessionKeyLabel).
const SessionKeyLabel = "keyd widget session v1"

// Widget session limits.
const (
	// SessionTokenPrefix starts every widget session token.
	SessionTokenPrefix = "kws_"
	// DefaultSessionTTL is the lifetime of a session when none is asked for.
	DefaultSessionTTL = 10 * time.Minute
	// MaxSessionTTL is the longest session POST /v1/widget/sessions issues.
	MaxSessionTTL = time.Hour
	// MaxUserIDBytes bounds a session's user id.
	MaxUserIDBytes = 200

	maxTokenBytes = 2048
)

// Session is what a verified widget session token says: the organization
// it may manage, the host application's user acting through it (recorded as
// the actor {"type": "user", "id": UserID} of its commands) and its expiry.
type Session struct {
	OrgID     string    `json:"org_id"`
	UserID    string    `json:"user_id"`
	ExpiresAt time.Time `json:"expires_at"`
	// Scope is ScopeOrganization (every key of the organization) or
	// ScopeUser (only the keys the user owns).
	Scope string `json:"scope"`
}

// Session scopes.
const (
	ScopeOrganization = "organization"
	ScopeUser         = "user"
)

// keyScope is the domain.Scope of the commands a session runs.
func (s Session) keyScope() domain.Scope {
	if s.Scope == ScopeUser {
		return domain.Scope{User: s.UserID}
	}
	return domain.Scope{Organization: true}
}

// Sessions issues and verifies widget session tokens: stateless bearer
// tokens that let the embedded widget manage one organization's keys for a
// short while.
//
// A token is "kws_" + base64url(payload) + "." + base64url(HMAC-SHA-256(key,
// base64url(payload))), the payload being the JSON object
// {"org", "user", "exp" (Unix milliseconds), "nonce"}. Any keyd process with
// the same deployment secret verifies tokens any other issued.
type Sessions struct {
	key []byte
	now func() time.Time
}

// NewSessions returns Sessions signing with key (derive it with
// domain.DeriveKey(deploymentSecret, SessionKeyLabel)) and reading time from
// now (time.Now if nil).
func NewSessions(key []byte, now func() time.Time) *Sessions {
	if now == nil {
		now = time.Now
	}
	return &Sessions{key: append([]byte(nil), key...), now: now}
}

type sessionPayload struct {
	Org   string `json:"org"`
	User  string `json:"user"`
	Exp   int64  `json:"exp"`
	Nonce string `json:"nonce"`
	Scope string `json:"scope,omitempty"` // "" (older tokens) is organization
}

// Issue returns a token for user in org, valid for ttl, and its expiry.
// Errors: invalid_argument for an invalid org id, a user id that is not 1
// to 200 bytes of single-line text (domain.CheckText), or a ttl outside (0, MaxSessionTTL]; internal if
// the system's random source fails.
func (s *Sessions) Issue(org, user string, ttl time.Duration) (token string, expires time.Time, err error) {
	return s.IssueScoped(org, user, ScopeOrganization, ttl)
}

// IssueScoped is Issue for a session of scope (ScopeOrganization or
// ScopeUser; a user-scope session's user id must be a user id as owners
// have them, domain.ValidUserID). Errors: as Issue, and invalid_argument for
// another scope.
func (s *Sessions) IssueScoped(org, user, scope string, ttl time.Duration) (token string, expires time.Time, err error) {
	switch scope {
	case ScopeOrganization:
	case ScopeUser:
		if err := domain.CheckUserID("user_id", user); err != nil {
			return "", time.Time{}, err
		}
	default:
		return "", time.Time{}, domain.Errorf(domain.EInvalid, `scope must be "organization" or "user", got %q`, scope)
	}
	if err := domain.CheckOrgID(org); err != nil {
		return "", time.Time{}, err
	}
	if user == "" || len(user) > MaxUserIDBytes {
		return "", time.Time{}, domain.Errorf(domain.EInvalid, "user_id must be 1 to %d bytes of UTF-8", MaxUserIDBytes)
	}
	// The user id becomes the actor id of the session's commands.
	if err := domain.CheckText("user_id", user, false); err != nil {
		return "", time.Time{}, err
	}
	if ttl <= 0 || ttl > MaxSessionTTL {
		return "", time.Time{}, domain.Errorf(domain.EInvalid, "a session lasts between 1 and %d seconds", int(MaxSessionTTL/time.Second))
	}
	var nonce [12]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", time.Time{}, err
	}
	expires = s.now().Add(ttl).UTC().Truncate(time.Millisecond)
	payload, err := json.Marshal(sessionPayload{Org: org, User: user, Exp: expires.UnixMilli(),
		Nonce: base64.RawURLEncoding.EncodeToString(nonce[:]), Scope: scope})
	if err != nil {
		return "", time.Time{}, err
	}
	p := base64.RawURLEncoding.EncodeToString(payload)
	return SessionTokenPrefix + p + "." + base64.RawURLEncoding.EncodeToString(s.sign(p)), expires, nil
}

// Verify checks token's signature and expiry and returns its session.
// Errors: unauthenticated, for a token that is malformed, not signed with
// this deployment's key, altered, or expired.
func (s *Sessions) Verify(token string) (Session, error) {
	invalid := domain.Errorf(domain.EUnauthorized, "the widget session token is not valid; ask the host page for a new one")
	if len(token) > maxTokenBytes || !strings.HasPrefix(token, SessionTokenPrefix) {
		return Session{}, invalid
	}
	p, sig, ok := strings.Cut(token[len(SessionTokenPrefix):], ".")
	if !ok {
		return Session{}, invalid
	}
	got, err := base64.RawURLEncoding.Strict().DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.sign(p)) {
		return Session{}, invalid
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(p)
	if err != nil {
		return Session{}, invalid
	}
	var pl sessionPayload
	if err := json.Unmarshal(raw, &pl); err != nil || !domain.ValidOrgID(pl.Org) || pl.User == "" || pl.Exp <= 0 {
		return Session{}, invalid
	}
	exp := time.UnixMilli(pl.Exp).UTC()
	if !s.now().Before(exp) {
		return Session{}, domain.Errorf(domain.EUnauthorized, "widget session expired; ask the host page for a new one")
	}
	scope := ScopeOrganization
	switch pl.Scope {
	case "", ScopeOrganization:
	case ScopeUser:
		scope = ScopeUser
	default:
		return Session{}, invalid
	}
	return Session{OrgID: pl.Org, UserID: pl.User, ExpiresAt: exp, Scope: scope}, nil
}

func (s *Sessions) sign(payload string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// createSessionRequest is the body of POST /v1/widget/sessions.
type createSessionRequest struct {
	OrgID      string `json:"org_id"`
	UserID     string `json:"user_id"`
	TTLSeconds *int64 `json:"ttl_seconds"`
	Scope      string `json:"scope"`
}

// sessionReply is the reply of POST /v1/widget/sessions.
type sessionReply struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// createSession answers POST /v1/widget/sessions (admin token only), body
// {"org_id", "user_id", "ttl_seconds"?, "scope"?}: a widget session token for that
// user in that organization, valid ttl_seconds (1..3600, default 600):
// {"token", "expires_at"}. The host application's server calls it and
// hands the token to the page that embeds the widget.
// Errors: invalid_argument for a bad body; unavailable when widget sessions
// are not configured.
func (s *Server) createSession(w http.ResponseWriter, r *http.Request, _ caller) {
	if s.Sessions == nil {
		s.writeError(w, r, domain.Errorf(domain.EUnavailable, "widget sessions are not enabled on this server"))
		return
	}
	body, err := readBody(w, r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req createSessionRequest
	if err := commands.Decode(body, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	ttl := DefaultSessionTTL
	if req.TTLSeconds != nil {
		maxTTL := int64(MaxSessionTTL / time.Second)
		if *req.TTLSeconds < 1 || *req.TTLSeconds > maxTTL {
			s.writeError(w, r, domain.Errorf(domain.EInvalid, "ttl_seconds must be from 1 to %d, got %d", maxTTL, *req.TTLSeconds))
			return
		}
		ttl = time.Duration(*req.TTLSeconds) * time.Second
	}
	if req.Scope == "" {
		req.Scope = ScopeOrganization
	}
	token, expires, err := s.Sessions.IssueScoped(req.OrgID, req.UserID, req.Scope, ttl)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sessionReply{Token: token, ExpiresAt: expires})
}

// getSession answers GET /v1/widget/session (widget session token only):
// {"org_id", "user_id", "expires_at", "scope"} of the token it is called with, so
// the widget learns its organization.
func (s *Server) getSession(w http.ResponseWriter, r *http.Request, c caller) {
	writeJSON(w, http.StatusOK, c.session)
}
