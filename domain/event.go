package domain

import (
	"encoding/json"
	"time"
)

// Event type names. They are stable: they are written into the stream, which
// is kept forever.
const (
	EventKeyCreated            = "key.created"
	EventKeyUpdated            = "key.updated"
	EventKeyPermissionsChanged = "key.permissions_changed"
	EventKeyRevoked            = "key.revoked"
	EventKeyRotated            = "key.rotated"
	EventPermissionDefined     = "permission.defined"
	EventPermissionRetired     = "permission.retired"

	// Lifecycle events (lifecycle.go). key.expiring and key.expired are
	// notices: they carry the key's state unchanged (same version) but for
	// the notice bookkeeping.
	EventKeySuspended     = "key.suspended"
	EventKeyResumed       = "key.resumed"
	EventKeyExpiryChanged = "key.expiry_changed"
	EventKeyExpiring      = "key.expiring"
	EventKeyExpired       = "key.expired"
	EventKeyLeaked        = "key.leaked"

	// Organization events (policy.go), on OrgSubject(org).
	EventOrgPolicyChanged = "org.policy_changed"
	EventOrgKeysCounted   = "org.keys_counted"
	EventRoleDefined      = "role.defined"
	EventRoleRetired      = "role.retired"
)

// Subjects in the KEYD_EVENTS stream.
const (
	StreamName      = "KEYD_EVENTS"
	EventSubjects   = "keyd.events.>"
	CatalogSubject  = "keyd.events.permissions"
	RolesSubject    = "keyd.events.roles"
	keySubjectStart = "keyd.events.keys."
)

// KeySubject is the subject that carries every event of one key. Writes to
// it are serialized by optimistic concurrency on its last sequence.
func KeySubject(orgID, keyID string) string {
	return keySubjectStart + orgID + "." + keyID
}

// OrgEventsSubject is the audit stream filter of one organization.
func OrgEventsSubject(orgID string) string {
	return keySubjectStart + orgID + ".>"
}

// Actor is who caused an event.
type Actor struct {
	Type string `json:"type"` // "user", "service" or "system"
	ID   string `json:"id"`
}

// Event is the envelope of every event in the stream. Data holds the
// type-specific payload. Every key event's payload carries the full state of
// the key after the event (field "key"), and every catalog event's payload the
// full catalog after it (field "catalog"): loading an aggregate is one read
// of the last message on its subject, never a scan of the stream.
type Event struct {
	ID         string    `json:"id"`
	Type       string    `json:"type"`
	OrgID      string    `json:"org_id,omitempty"`
	KeyID      string    `json:"key_id,omitempty"`
	OccurredAt time.Time `json:"occurred_at"`
	Actor      Actor     `json:"actor"`
	CommandID  string    `json:"command_id,omitempty"`
	// PrevSequence is the stream sequence of the last message on the
	// event's subject when keyd appended it (0: the subject was empty):
	// the append's optimistic-concurrency guard, which the stream stores
	// with the message (header Nats-Expected-Last-Subject-Sequence). As
	// it is signed with the payload, a replay of a signed event later on
	// its subject cannot carry a guard that matches (JetStream refuses
	// the publish when it does), so the command side recognizes replays
	// without reading the history. Absent in events from before signing.
	PrevSequence *uint64         `json:"prev_sequence,omitempty"`
	Data         json.RawMessage `json:"data"`
}

// KeyCreatedData is the payload of key.created.
type KeyCreatedData struct {
	Key            KeyState `json:"key"`
	RotatedFrom    string   `json:"rotated_from,omitempty"`
	IdempotencyKey string   `json:"idempotency_key,omitempty"`
}

// KeyUpdatedData is the payload of key.updated: the fields that changed.
type KeyUpdatedData struct {
	Name     *string           `json:"name,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Key      KeyState          `json:"key"`
}

// KeyPermissionsChangedData is the payload of key.permissions_changed.
type KeyPermissionsChangedData struct {
	Permissions []string `json:"permissions"`
	Previous    []string `json:"previous"`
	Key         KeyState `json:"key"`
	// Roles and Resources are the key's roles and resources after the
	// event.
	Roles     []string `json:"roles,omitempty"`
	Resources []string `json:"resources,omitempty"`
}

// KeyRevokedData is the payload of key.revoked.
type KeyRevokedData struct {
	Reason string   `json:"reason,omitempty"`
	Key    KeyState `json:"key"`
}

// KeyRotatedData is the payload of key.rotated, on the old key: it now
// expires at ExpiresAt and was replaced by NewKeyID.
type KeyRotatedData struct {
	NewKeyID           string    `json:"new_key_id"`
	GracePeriodSeconds int64     `json:"grace_period_seconds"`
	ExpiresAt          time.Time `json:"expires_at"`
	Key                KeyState  `json:"key"`
}

// keyEventData is the payload of a key event: every one carries the key
// after the event.
type keyEventData interface{ keyAfter() KeyState }

func (d KeyCreatedData) keyAfter() KeyState            { return d.Key }
func (d KeyUpdatedData) keyAfter() KeyState            { return d.Key }
func (d KeyPermissionsChangedData) keyAfter() KeyState { return d.Key }
func (d KeyRevokedData) keyAfter() KeyState            { return d.Key }
func (d KeyRotatedData) keyAfter() KeyState            { return d.Key }

// PermissionEventData is the payload of permission.defined and
// permission.retired.
type PermissionEventData struct {
	Permission Permission   `json:"permission"`
	Catalog    []Permission `json:"catalog"`
	// Version is the catalog's version after the event: the previous one
	// + 1. Catalog events written before versions existed have none (0).
	Version int64 `json:"version,omitempty"`
}

// DecodeEvent parses an event envelope and checks what every consumer relies
// on: a known type, an id, and for key events a valid org and key id.
func DecodeEvent(b []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(b, &e); err != nil {
		return Event{}, Errorf(EInvalid, "event is not valid JSON: %v", err)
	}
	if e.ID == "" {
		return Event{}, Errorf(EInvalid, "event has no id")
	}
	switch {
	case e.IsKeyEvent():
		if !ValidOrgID(e.OrgID) || !ValidKeyID(e.KeyID) {
			return Event{}, Errorf(EInvalid, "key event %s has an invalid org_id or key_id", e.ID)
		}
	case e.IsOrgEvent():
		if !ValidOrgID(e.OrgID) || e.KeyID != "" {
			return Event{}, Errorf(EInvalid, "organization event %s has an invalid org_id or a key_id", e.ID)
		}
	case e.Type == EventPermissionDefined, e.Type == EventPermissionRetired, e.IsRoleEvent():
	default:
		return Event{}, Errorf(EInvalid, "event %s has unknown type %q", e.ID, e.Type)
	}
	return e, nil
}

// IsKeyEvent reports whether the event belongs to a key.
func (e Event) IsKeyEvent() bool {
	switch e.Type {
	case EventKeyCreated, EventKeyUpdated, EventKeyPermissionsChanged, EventKeyRevoked, EventKeyRotated,
		EventKeySuspended, EventKeyResumed, EventKeyExpiryChanged, EventKeyExpiring, EventKeyExpired, EventKeyLeaked:
		return true
	}
	return false
}

// IsOrgEvent reports whether the event belongs to an organization's
// aggregate (its policy), on OrgSubject.
func (e Event) IsOrgEvent() bool {
	return e.Type == EventOrgPolicyChanged || e.Type == EventOrgKeysCounted
}

// IsNotice reports whether the event is a notice (key.expiring,
// key.expired): it leaves the key's version as it was.
func (e Event) IsNotice() bool { return e.Type == EventKeyExpiring || e.Type == EventKeyExpired }

// IsRoleEvent reports whether the event belongs to the role catalog.
func (e Event) IsRoleEvent() bool {
	return e.Type == EventRoleDefined || e.Type == EventRoleRetired
}

// RoleEventData is the payload of role.defined and role.retired: the role
// as the event left it, and the whole role catalog after it, at its version
// (one more than before the event).
type RoleEventData struct {
	Role    Role   `json:"role"`
	Roles   []Role `json:"roles"`
	Version int64  `json:"version"`
}

// RoleCatalog returns the role catalog after this role event.
func (e Event) RoleCatalog() (RoleCatalog, error) {
	if !e.IsRoleEvent() {
		return RoleCatalog{}, Errorf(EInvalid, "event %s (%s) is not a role event", e.ID, e.Type)
	}
	var d RoleEventData
	if err := json.Unmarshal(e.Data, &d); err != nil || d.Version < 1 {
		return RoleCatalog{}, Errorf(EInvalid, "event %s carries no role catalog", e.ID)
	}
	return NewRoleCatalog(d.Roles, d.Version), nil
}

// KeyState returns the state of the key after this key event.
func (e Event) KeyState() (KeyState, error) {
	if !e.IsKeyEvent() {
		return KeyState{}, Errorf(EInvalid, "event %s (%s) is not a key event", e.ID, e.Type)
	}
	var d struct {
		Key *KeyState `json:"key"`
	}
	if err := json.Unmarshal(e.Data, &d); err != nil || d.Key == nil {
		return KeyState{}, Errorf(EInvalid, "event %s (%s) carries no key state", e.ID, e.Type)
	}
	if d.Key.ID != e.KeyID || d.Key.OrgID != e.OrgID || d.Key.Version < 1 {
		return KeyState{}, Errorf(EInvalid, "event %s carries the state of another key", e.ID)
	}
	return *d.Key, nil
}

// Catalog returns the permission catalog after this catalog event.
func (e Event) Catalog() (Catalog, error) {
	if e.Type != EventPermissionDefined && e.Type != EventPermissionRetired {
		return Catalog{}, Errorf(EInvalid, "event %s (%s) is not a catalog event", e.ID, e.Type)
	}
	var d PermissionEventData
	if err := json.Unmarshal(e.Data, &d); err != nil {
		return Catalog{}, Errorf(EInvalid, "event %s carries no catalog", e.ID)
	}
	c := NewCatalog(d.Catalog)
	c.version = d.Version
	return c, nil
}

// CheckSubject reports whether the event belongs on subject: a key event on
// its key's subject, a catalog event on the catalog subject. An event on
// another subject (a forged or misrouted message) is invalid_argument and
// must not be applied.
func (e Event) CheckSubject(subject string) error {
	want := CatalogSubject
	if e.IsRoleEvent() {
		want = RolesSubject
	}
	if e.IsKeyEvent() {
		want = KeySubject(e.OrgID, e.KeyID)
	} else if e.IsOrgEvent() {
		want = OrgSubject(e.OrgID)
	}
	if subject != want {
		return Errorf(EInvalid, "event %s (%s) is on subject %q, not %q", e.ID, e.Type, subject, want)
	}
	return nil
}
