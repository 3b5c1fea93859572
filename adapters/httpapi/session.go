package httpapi

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"slices"
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
	// MaxSessionPermissions bounds the permissions a session may be
	// narrowed to.
	MaxSessionPermissions = 100

	// maxTokenBytes holds a token with MaxSessionPermissions slugs of the
	// longest shape, base64url-encoded.
	maxTokenBytes = 24 << 10
)

// Session is what a verified widget session token says: its id (what
// DELETE /v1/widget/sessions/{id} ends it by), the organization it may
// manage, the host application's user acting through it (recorded as the
// actor {"type": "user", "id": UserID} of its commands), the most it may
// grant, and its expiry.
//
// Permissions nil means the session may grant every active permission of
// the catalog; otherwise a create or set_permissions through it may grant
// only these (sorted, without repeats).
type Session struct {
	ID          string    `json:"id"`
	OrgID       string    `json:"org_id"`
	UserID      string    `json:"user_id"`
	Permissions []string  `json:"permissions"`
	ExpiresAt   time.Time `json:"expires_at"`
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

// mayGrant reports whether the session may grant slug.
func (s Session) mayGrant(slug string) bool {
	if s.Permissions == nil {
		return true
	}
	_, found := slices.BinarySearch(s.Permissions, slug)
	return found
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

// sessionPayload is a token's signed content. The nonce is the session's
// id. Perms is absent for a session that may grant every active
// permission, and present (possibly empty) for a narrowed one.
type sessionPayload struct {
	Org   string    `json:"org"`
	User  string    `json:"user"`
	Exp   int64     `json:"exp"`
	Nonce string    `json:"nonce"`
	Perms *[]string `json:"perms,omitempty"`
	Scope string    `json:"scope,omitempty"` // "" (older tokens) is organization
}

// Issue returns a token for user in org, valid for ttl, that may grant
// every active permission, and its expiry. See IssueSession.
func (s *Sessions) Issue(org, user string, ttl time.Duration) (token string, expires time.Time, err error) {
	token, sess, err := s.IssueSession(org, user, ttl, nil)
	return token, sess.ExpiresAt, err
}

// IssueSession returns a token for user in org, valid for ttl, and the
// session it carries, of organization scope. permissions nil lets the
// session grant every active permission; otherwise it is the most the
// session may grant (each a permission slug, at most MaxSessionPermissions;
// repeats are dropped). The session's id is random (16 bytes, base64url).
//
// Errors: invalid_argument for an invalid org id, a user id that is not 1
// to 200 bytes of single-line text (domain.CheckText), a ttl outside
// (0, MaxSessionTTL] or a bad permission list; internal if the system's
// random source fails.
func (s *Sessions) IssueSession(org, user string, ttl time.Duration, permissions []string) (token string, sess Session, err error) {
	return s.IssueScoped(org, user, ScopeOrganization, ttl, permissions)
}

// IssueScoped is IssueSession for a session of scope (ScopeOrganization or
// ScopeUser; a user-scope session's user id must be a user id as owners
// have them, domain.ValidUserID). Errors: as IssueSession, and
// invalid_argument for another scope.
func (s *Sessions) IssueScoped(org, user, scope string, ttl time.Duration, permissions []string) (token string, sess Session, err error) {
	if err := domain.CheckOrgID(org); err != nil {
		return "", Session{}, err
	}
	if user == "" || len(user) > MaxUserIDBytes {
		return "", Session{}, domain.Errorf(domain.EInvalid, "user_id must be 1 to %d bytes of UTF-8", MaxUserIDBytes)
	}
	// The user id becomes the actor id of the session's commands.
	if err := domain.CheckText("user_id", user, false); err != nil {
		return "", Session{}, err
	}
	if ttl <= 0 || ttl > MaxSessionTTL {
		return "", Session{}, domain.Errorf(domain.EInvalid, "a session lasts between 1 and %d seconds", int(MaxSessionTTL/time.Second))
	}
	switch scope {
	case ScopeOrganization:
	case ScopeUser:
		if err := domain.CheckUserID("user_id", user); err != nil {
			return "", Session{}, err
		}
	default:
		if err := domain.CheckText("scope", scope, false); err != nil {
			return "", Session{}, err
		}
		return "", Session{}, domain.Errorf(domain.EInvalid, `scope must be "organization" or "user", got %q`, scope)
	}
	perms, err := sessionPermissions(permissions)
	if err != nil {
		return "", Session{}, err
	}
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", Session{}, err
	}
	sess = Session{ID: base64.RawURLEncoding.EncodeToString(nonce[:]), OrgID: org, UserID: user,
		Permissions: perms, ExpiresAt: s.now().Add(ttl).UTC().Truncate(time.Millisecond), Scope: scope}
	pl := sessionPayload{Org: org, User: user, Exp: sess.ExpiresAt.UnixMilli(), Nonce: sess.ID, Scope: scope}
	if perms != nil {
		pl.Perms = &perms
	}
	payload, err := json.Marshal(pl)
	if err != nil {
		return "", Session{}, err
	}
	p := base64.RawURLEncoding.EncodeToString(payload)
	return SessionTokenPrefix + p + "." + base64.RawURLEncoding.EncodeToString(s.sign(p)), sess, nil
}

// sessionPermissions checks and normalizes a session's permission list:
// nil stays nil (every active permission); otherwise sorted, without
// repeats, never nil. Errors: invalid_argument naming the bad entry.
func sessionPermissions(perms []string) ([]string, error) {
	if perms == nil {
		return nil, nil
	}
	if len(perms) > MaxSessionPermissions {
		return nil, domain.Errorf(domain.EInvalid, "a session may be narrowed to at most %d permissions, got %d", MaxSessionPermissions, len(perms))
	}
	out := make([]string, 0, len(perms))
	for i, p := range perms {
		if err := domain.CheckSlug(p); err != nil {
			return nil, domain.Errorf(domain.EInvalid, "permissions[%d]: %s", i, domain.ErrorMessage(err))
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
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
	if err := json.Unmarshal(raw, &pl); err != nil || !domain.ValidOrgID(pl.Org) || pl.User == "" || pl.Exp <= 0 || pl.Nonce == "" {
		return Session{}, invalid
	}
	exp := time.UnixMilli(pl.Exp).UTC()
	if !s.now().Before(exp) {
		return Session{}, errSessionExpired
	}
	scope := ScopeOrganization
	switch pl.Scope {
	case "", ScopeOrganization:
	case ScopeUser:
		scope = ScopeUser
	default:
		return Session{}, invalid
	}
	sess := Session{ID: pl.Nonce, OrgID: pl.Org, UserID: pl.User, ExpiresAt: exp, Scope: scope}
	if pl.Perms != nil {
		sess.Permissions = slices.Clip(*pl.Perms)
		if sess.Permissions == nil {
			sess.Permissions = []string{}
		}
	}
	return sess, nil
}

// errSessionExpired is Verify's error for a token past its expiry.
var errSessionExpired = domain.Errorf(domain.EUnauthorized, "widget session expired; ask the host page for a new one")

func (s *Sessions) sign(payload string) []byte {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// createSessionRequest is the body of POST /v1/widget/sessions.
type createSessionRequest struct {
	OrgID       string   `json:"org_id"`
	UserID      string   `json:"user_id"`
	TTLSeconds  *int64   `json:"ttl_seconds"`
	Permissions []string `json:"permissions"`
	Scope       string   `json:"scope"`
}

// sessionReply is the reply of POST /v1/widget/sessions.
type sessionReply struct {
	ID        string    `json:"id"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

// createSession answers POST /v1/widget/sessions (admin token only), body
// {"org_id", "user_id", "ttl_seconds"?, "permissions"?, "scope"?}: a
// widget session token for that user in that organization, valid
// ttl_seconds (1..3600, default 600), that may grant at most "permissions"
// (absent or null: every active permission), of scope "organization"
// (default) or "user": {"id", "token", "expires_at"}. The host
// application's server calls it and hands the token to the page that
// embeds the widget; it keeps the id to end the session early
// (DELETE /v1/widget/sessions/{id}).
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
	token, sess, err := s.Sessions.IssueScoped(req.OrgID, req.UserID, req.Scope, ttl, req.Permissions)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sessionReply{ID: sess.ID, Token: token, ExpiresAt: sess.ExpiresAt})
}

// getSession answers GET /v1/widget/session (widget session token only):
// {"id", "org_id", "user_id", "permissions", "expires_at", "scope"} of the
// token it is called with, so the widget learns its organization, what it
// may grant ("permissions": null means every active permission) and which
// keys it manages.
func (s *Server) getSession(w http.ResponseWriter, r *http.Request, c caller) {
	writeJSON(w, http.StatusOK, c.session)
}
