package domain

import (
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

// Owner is who a key belongs to. Today every key is owned by its organization.
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
}

// EffectiveStatus is the status at time now: revoked, expired (expires_at
// at or before now) or active.
func (k KeyState) EffectiveStatus(now time.Time) string {
	if k.Status == StatusRevoked {
		return StatusRevoked
	}
	if k.ExpiresAt != nil && !now.Before(*k.ExpiresAt) {
		return StatusExpired
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
	}
}

func (k KeyState) clone() KeyState {
	k.Permissions = slices.Clone(k.Permissions)
	k.Metadata = maps.Clone(k.Metadata)
	return k
}

// CheckName validates a key name: 1 to 200 characters of valid UTF-8.
func CheckName(name string) error {
	if !utf8.ValidString(name) {
		return Errorf(EInvalid, "name must be valid UTF-8")
	}
	n := utf8.RuneCountInString(name)
	if n < 1 || n > MaxNameLength {
		return Errorf(EInvalid, "name must be 1 to %d characters, got %d", MaxNameLength, n)
	}
	return nil
}

// CheckMetadata validates metadata: at most 32 entries, keys of 1 to 64
// bytes, and at most 4 KiB of keys and values together.
func CheckMetadata(md map[string]string) error {
	if len(md) > MaxMetadataEntries {
		return Errorf(EInvalid, "metadata has %d entries; at most %d are allowed", len(md), MaxMetadataEntries)
	}
	size := 0
	for k, v := range md {
		if len(k) < 1 || len(k) > MaxMetadataKeyBytes {
			return Errorf(EInvalid, "metadata keys must be 1 to %d bytes", MaxMetadataKeyBytes)
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return Errorf(EInvalid, "metadata must be valid UTF-8")
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
		if !ValidSlug(p) {
			return nil, Errorf(EInvalid, "permission %q is not a valid slug (^[a-z0-9][a-z0-9_.:-]{0,127}$)", p)
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
