package domain

import (
	"fmt"
	"maps"
	"slices"
	"time"
	"unicode/utf8"
)

// Key statuses. A key's stored status is active or revoked; expired is
// derived at read time from expires_at and the clock.
const (
	StatusActive  = "active"
	StatusRevoked = "revoked"
	StatusExpired = "expired"
	// StatusSuspended is a stored status: the key is refused (verify code
	// suspended) until it is resumed.
	StatusSuspended = "suspended"
)

// Limits on what a key carries.
const (
	MaxNameLength       = 200
	MaxMetadataEntries  = 32
	MaxMetadataBytes    = 4096
	MaxMetadataKeyBytes = 64
	MaxKeyPermissions   = 100
	MaxReasonLength     = 500
	MaxGracePeriod      = 30 * 24 * time.Hour
)

// Owner is who a key belongs to: its organization ({"type":
// "organization", "id": <org>}) or one of its users ({"type": "user", "id":
// <user id>}). It never changes.
type Owner struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// KeyState is the full state of a key: what each key event carries and what
// read models store. It never holds the secret, only its keyed digest (hex)
// and mask.
type KeyState struct {
	ID           string            `json:"id"`
	OrgID        string            `json:"org_id"`
	Name         string            `json:"name"`
	Owner        Owner             `json:"owner"`
	Mask         string            `json:"mask"`
	Digest       string            `json:"digest"`
	Permissions  []string          `json:"permissions"`
	Status       string            `json:"status"`
	CreatedAt    time.Time         `json:"created_at"`
	ExpiresAt    *time.Time        `json:"expires_at"`
	RevokedAt    *time.Time        `json:"revoked_at"`
	RevokeReason string            `json:"revoke_reason,omitempty"`
	Metadata     map[string]string `json:"metadata"`
	RotatedFrom  string            `json:"rotated_from,omitempty"`
	RotatedTo    string            `json:"rotated_to,omitempty"`
	Version      int64             `json:"version"`

	// SuspendedAt and SuspendReason are set while the key is suspended.
	SuspendedAt   *time.Time `json:"suspended_at,omitempty"`
	SuspendReason string     `json:"suspend_reason,omitempty"`
	// ExpiringNoticed and ExpiredNoticed are the expires_at for which the
	// key.expiring and key.expired notices were appended: bookkeeping that
	// makes each notice once per key and expiry time. They are not part of
	// the KeyView and do not change the version.
	ExpiringNoticed *time.Time `json:"expiring_noticed,omitempty"`
	ExpiredNoticed  *time.Time `json:"expired_noticed,omitempty"`
	// LeakedURLs are the urls of the leak reports recorded (key.leaked),
	// oldest first, at most MaxLeakURLs.
	LeakedURLs []string `json:"leaked_urls,omitempty"`
	// Roles and Resources are what was granted (sorted; retired roles
	// included); events written before roles and resources existed have
	// none.
	Roles     []string `json:"roles"`
	Resources []string `json:"resources"`
}

// KeyView is the public shape of a key (the contract's KeyView).
type KeyView struct {
	ID          string            `json:"id"`
	OrgID       string            `json:"org_id"`
	Name        string            `json:"name"`
	Owner       Owner             `json:"owner"`
	Mask        string            `json:"mask"`
	Permissions []string          `json:"permissions"`
	Status      string            `json:"status"`
	CreatedAt   time.Time         `json:"created_at"`
	ExpiresAt   *time.Time        `json:"expires_at"`
	RevokedAt   *time.Time        `json:"revoked_at"`
	LastUsedAt  *time.Time        `json:"last_used_at"`
	Metadata    map[string]string `json:"metadata"`
	Version     int64             `json:"version"`
	Roles       []string          `json:"roles"`
	Resources   []string          `json:"resources"`
}

// EffectiveStatus is the status at time now, the first that applies:
// revoked, expired (expires_at at or before now), suspended, active.
func (k KeyState) EffectiveStatus(now time.Time) string {
	if k.Status == StatusRevoked {
		return StatusRevoked
	}
	if k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) {
		return StatusExpired
	}
	if k.Status == StatusSuspended {
		return StatusSuspended
	}
	return StatusActive
}

// View returns the public view of the key at time now.
func (k KeyState) View(now time.Time, lastUsed *time.Time) KeyView {
	perms := k.Permissions
	if perms == nil {
		perms = []string{}
	}
	md := k.Metadata
	if md == nil {
		md = map[string]string{}
	}
	return KeyView{
		ID: k.ID, OrgID: k.OrgID, Name: k.Name, Owner: k.Owner, Mask: k.Mask,
		Permissions: perms, Status: k.EffectiveStatus(now), CreatedAt: k.CreatedAt,
		ExpiresAt: k.ExpiresAt, RevokedAt: k.RevokedAt, LastUsedAt: lastUsed,
		Metadata: md, Version: k.Version,
		Roles: orEmpty(k.Roles), Resources: orEmpty(k.Resources),
	}
}

// orEmpty is ss, or [] for nil (the contract's JSON has [], never null).
func orEmpty(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}

func (k KeyState) clone() KeyState {
	k.Permissions = slices.Clone(k.Permissions)
	k.Metadata = maps.Clone(k.Metadata)
	k.LeakedURLs = slices.Clone(k.LeakedURLs)
	k.Roles = slices.Clone(k.Roles)
	k.Resources = slices.Clone(k.Resources)
	return k
}

// CheckName validates a key name: 1 to 200 characters of text (CheckText:
// valid UTF-8 without control characters or bidirectional controls).
func CheckName(name string) error {
	if err := CheckText("name", name, false); err != nil {
		return err
	}
	n := utf8.RuneCountInString(name)
	if n < 1 || n > MaxNameLength {
		return Errorf(EInvalid, "name must be 1 to %d characters, got %d", MaxNameLength, n)
	}
	return nil
}

// CheckMetadata validates metadata: at most 32 entries, keys of 1 to 64
// bytes, at most 4 KiB of keys and values together, and keys and values of
// single-line text (CheckText: no control characters, tab and line feed
// included, and no bidirectional controls).
func CheckMetadata(md map[string]string) error {
	if len(md) > MaxMetadataEntries {
		return Errorf(EInvalid, "metadata has %d entries; at most %d are allowed", len(md), MaxMetadataEntries)
	}
	size := 0
	for k, v := range md {
		if len(k) < 1 || len(k) > MaxMetadataKeyBytes {
			return Errorf(EInvalid, "metadata keys must be 1 to %d bytes", MaxMetadataKeyBytes)
		}
		if err := CheckText(fmt.Sprintf("metadata key %q", k), k, false); err != nil {
			return err
		}
		if err := CheckText(fmt.Sprintf("metadata value of %q", k), v, false); err != nil {
			return err
		}
		size += len(k) + len(v)
	}
	if size > MaxMetadataBytes {
		return Errorf(EInvalid, "metadata is %d bytes; at most %d bytes of keys and values are allowed", size, MaxMetadataBytes)
	}
	return nil
}

// NormalizePermissions sorts and de-duplicates slugs, checking their shape.
func NormalizePermissions(perms []string) ([]string, error) {
	if len(perms) > MaxKeyPermissions {
		return nil, Errorf(EInvalid, "a key can hold at most %d permissions, got %d", MaxKeyPermissions, len(perms))
	}
	out := make([]string, 0, len(perms))
	for _, p := range perms {
		if err := CheckSlug(p); err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// checkMutable returns failed_precondition unless the key can still change.
func (k KeyState) checkMutable(now time.Time, what string) error {
	switch k.EffectiveStatus(now) {
	case StatusRevoked:
		return Errorf(EPrecondition, "key %s is revoked; a revoked key cannot be %s", k.ID, what)
	case StatusExpired:
		return Errorf(EPrecondition, "key %s has expired; an expired key cannot be %s", k.ID, what)
	}
	return nil
}

// Credential is what a new key is known by: its id and its secret's mask
// and keyed digest (hex). The secret itself is never part of a key's state.
type Credential struct {
	KeyID  string
	Mask   string
	Digest string
}

// newKey returns the state of a key created at now: active, at version 1,
// owned by its organization, with empty (never nil) permissions and
// metadata.
func newKey(org string, c Credential, name string, perms []string, md map[string]string, expires *time.Time, now time.Time) KeyState {
	if perms == nil {
		perms = []string{}
	}
	if md == nil {
		md = map[string]string{}
	}
	return KeyState{
		ID: c.KeyID, OrgID: org, Name: name, Owner: Owner{Type: "organization", ID: org},
		Mask: c.Mask, Digest: c.Digest, Permissions: perms,
		Status: StatusActive, CreatedAt: now, ExpiresAt: expires, Metadata: md, Version: 1,
		Roles: []string{}, Resources: []string{},
	}
}

// The rules of the key. Each decides one command against the key's current
// state, at now, and returns the payload of the event to append (which
// carries the key after it) or changed=false when the command changes
// nothing. They read no clock and no store: arguments arrive checked for
// shape (by the command's use case), and what depends on the key's state is
// decided here.

// Revoke decides revoking the key with reason. changed is false when the key
// is already revoked (an expired key can still be revoked).
func (k KeyState) Revoke(reason string, now time.Time) (d KeyRevokedData, changed bool) {
	if k.Status == StatusRevoked {
		return KeyRevokedData{}, false
	}
	n := k.clone()
	n.Status, n.RevokedAt, n.RevokeReason, n.Version = StatusRevoked, &now, reason, k.Version+1
	return KeyRevokedData{Reason: reason, Key: n}, true
}

// SetPermissions decides replacing the key's permissions by perms, which
// must be normalized (NormalizePermissions). changed is false when the key
// already holds exactly perms. With expected, it applies only to that
// version of the key.
// Errors: invalid_argument for a permission c does not define or has
// retired, conflict for another version than expected, failed_precondition
// for a revoked or expired key.
func (k KeyState) SetPermissions(perms []string, c Catalog, expected *int64, now time.Time) (d KeyPermissionsChangedData, changed bool, err error) {
	if err := c.CheckGrantable(perms); err != nil {
		return KeyPermissionsChangedData{}, false, err
	}
	if expected != nil && *expected != k.Version {
		return KeyPermissionsChangedData{}, false, Errorf(EConflict, "key %s is at version %d, not the expected version %d", k.ID, k.Version, *expected)
	}
	if err := k.checkMutable(now, "changed"); err != nil {
		return KeyPermissionsChangedData{}, false, err
	}
	if slices.Equal(k.Permissions, perms) {
		return KeyPermissionsChangedData{}, false, nil
	}
	n := k.clone()
	n.Permissions, n.Version = perms, k.Version+1
	return KeyPermissionsChangedData{Permissions: perms, Previous: k.Permissions, Key: n}, true, nil
}

// Update decides renaming the key (name, if not nil) and replacing its
// metadata (md, if not nil). The payload names only what differs; changed
// is false when nothing does.
// Errors: failed_precondition for a revoked or expired key.
func (k KeyState) Update(name *string, md map[string]string, now time.Time) (d KeyUpdatedData, changed bool, err error) {
	if err := k.checkMutable(now, "updated"); err != nil {
		return KeyUpdatedData{}, false, err
	}
	n := k.clone()
	if name != nil && *name != k.Name {
		n.Name, d.Name = *name, name
	}
	if md != nil && !maps.Equal(md, k.Metadata) {
		n.Metadata, d.Metadata = md, md
	}
	if d.Name == nil && d.Metadata == nil {
		return KeyUpdatedData{}, false, nil
	}
	n.Version = k.Version + 1
	d.Key = n
	return d, true, nil
}

// Rotate decides replacing the key by a new one, known by next, with the
// same name, owner, permissions, roles, resources, metadata and expiry
// (capped at now + the policy's max_lifetime_seconds, or given that when it
// had none and p requires one): created is the new key's payload, rotated
// the old key's, which now expires after grace (whole seconds; 0: now) but
// never later than it already did. Both events are appended together.
// Errors: failed_precondition for a revoked, expired or suspended key, or
// naming the policy p (a permission, own or through one of its roles in
// roles, outside allowed_permissions; require_expiry without
// max_lifetime_seconds for a key without expiry).
func (k KeyState) Rotate(next Credential, grace time.Duration, p Policy, roles RoleCatalog, now time.Time) (created KeyCreatedData, rotated KeyRotatedData, err error) {
	if err := k.checkMutable(now, "rotated"); err != nil {
		return KeyCreatedData{}, KeyRotatedData{}, err
	}
	if k.Status == StatusSuspended {
		return KeyCreatedData{}, KeyRotatedData{}, Errorf(EPrecondition, "key %s is suspended; resume it before rotating it", k.ID)
	}
	if err := p.CheckGrants(k.Permissions, k.Roles, roles); err != nil {
		return KeyCreatedData{}, KeyRotatedData{}, err
	}
	newExp := k.ExpiresAt
	if max := p.maxLifetime(); max > 0 && (newExp == nil || newExp.After(now.Add(max))) {
		t := now.Add(max)
		newExp = &t
	} else if newExp == nil && p.RequireExpiry {
		return KeyCreatedData{}, KeyRotatedData{}, Errorf(EPrecondition, "organization policy require_expiry: key %s has no expires_at, and the new key needs one; give it one with set_expiry first", k.ID)
	}
	if newExp != nil {
		t := *newExp
		newExp = &t
	}
	nk := newKey(k.OrgID, next, k.Name, slices.Clone(k.Permissions), maps.Clone(k.Metadata), newExp, now)
	nk.RotatedFrom = k.ID
	nk.Owner, nk.Roles, nk.Resources = k.Owner, slices.Clone(orEmpty(k.Roles)), slices.Clone(orEmpty(k.Resources))
	o := k.clone()
	exp := now.Add(grace)
	if k.ExpiresAt != nil && k.ExpiresAt.Before(exp) {
		exp = *k.ExpiresAt
	}
	o.ExpiresAt, o.RotatedTo, o.Version = &exp, next.KeyID, k.Version+1
	return KeyCreatedData{Key: nk, RotatedFrom: k.ID},
		KeyRotatedData{NewKeyID: next.KeyID, GracePeriodSeconds: int64(grace / time.Second), ExpiresAt: exp, Key: o}, nil
}
