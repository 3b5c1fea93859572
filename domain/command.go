package domain

import (
	"time"
)

// Meta is what every command carries besides its arguments: who asks (the
// "actor" field; absent, the system actor keyd) and the command id, which
// the transport sets from the Keyd-Command-Id header (never from the body).
// Every command embeds it, so an edge sets both through CommandMeta whatever
// the command.
type Meta struct {
	Actor     *Actor `json:"actor"`
	CommandID string `json:"-"`
	// Scope limits the keys the command may touch (set by the HTTP edge
	// for widget sessions, never from a body).
	Scope Scope `json:"-"`
}

// CommandMeta returns m itself, for edges that set the actor or the command
// id of any command.
func (m *Meta) CommandMeta() *Meta { return m }

// CreateKey asks for a new key in an organization.
type CreateKey struct {
	Name        string            `json:"name"`
	Permissions []string          `json:"permissions"`
	ExpiresAt   *time.Time        `json:"expires_at"`
	Metadata    map[string]string `json:"metadata"`
	Meta
	IdempotencyKey string `json:"idempotency_key"`
	// Owner is who the key belongs to (nil: the organization).
	Owner *Owner `json:"owner"`
	// Roles are granted roles (defined, active; at most 20).
	Roles []string `json:"roles"`
	// Resources restrict the key per resource type (at most 100).
	Resources []string `json:"resources"`
}

// RevokeKey asks to revoke a key; revoking a revoked key changes nothing.
type RevokeKey struct {
	KeyID  string `json:"key_id"`
	Reason string `json:"reason"`
	Meta
}

// SetPermissions replaces the permissions of a key. With ExpectedVersion it
// applies only to that version of the key and is never retried.
type SetPermissions struct {
	KeyID           string   `json:"key_id"`
	Permissions     []string `json:"permissions"`
	ExpectedVersion *int64   `json:"expected_version"`
	Meta
	// Roles and Resources, when given, replace the key's; at least one of
	// permissions, roles and resources must be given.
	Roles     []string `json:"roles"`
	Resources []string `json:"resources"`
}

// UpdateKey renames a key or replaces its metadata (absent fields stay).
type UpdateKey struct {
	KeyID    string            `json:"key_id"`
	Name     *string           `json:"name"`
	Metadata map[string]string `json:"metadata"`
	Meta
}

// RotateKey replaces a key by a new one with the same name, permissions and
// metadata; the old key expires after the grace period.
type RotateKey struct {
	KeyID              string `json:"key_id"`
	GracePeriodSeconds *int64 `json:"grace_period_seconds"`
	Meta
}

// DefinePermission adds a permission to the catalog or changes its
// description.
type DefinePermission struct {
	Slug        string `json:"slug"`
	Description string `json:"description"`
	Meta
}

// RetirePermission retires a permission: it can no longer be granted and
// verification stops reporting it.
type RetirePermission struct {
	Slug string `json:"slug"`
	Meta
}

// RevokeUserKeys asks to revoke every key of a user in an organization that
// is not revoked yet (offboarding).
type RevokeUserKeys struct {
	UserID string `json:"user_id"`
	Reason string `json:"reason"`
	Meta
}

// DefineRole creates or redefines a role of the role catalog.
type DefineRole struct {
	Slug        string   `json:"slug"`
	Description string   `json:"description"`
	Permissions []string `json:"permissions"`
	Meta
}

// RetireRole retires a role: it can no longer be granted, and keys holding
// it lose its permissions at verification.
type RetireRole struct {
	Slug string `json:"slug"`
	Meta
}

// MaxActorIDBytes bounds an actor's id (a widget session's user id is one).
const MaxActorIDBytes = 200

// CheckActor validates an actor given by a caller: a type of "user",
// "service" or "system" and an id of 1 to 200 bytes of single-line text
// (CheckText).
func CheckActor(a *Actor) error {
	if a == nil {
		return nil
	}
	switch a.Type {
	case "user", "service", "system":
	default:
		return Errorf(EInvalid, `actor.type must be "user", "service" or "system", got %q`, a.Type)
	}
	if a.ID == "" || len(a.ID) > MaxActorIDBytes {
		return Errorf(EInvalid, "actor.id must be 1 to %d bytes of UTF-8", MaxActorIDBytes)
	}
	return CheckText("actor.id", a.ID, false)
}
