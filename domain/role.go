package domain

import (
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// Role limits. The whole role catalog travels in each role event, like the
// permission catalog.
const (
	MaxRoles           = 500
	MaxRolePermissions = 100
	MaxKeyRoles        = 20
)

// Role statuses are the permission statuses (PermissionActive,
// PermissionRetired).

// Role is a named set of permissions that keys are granted as one.
type Role struct {
	Slug        string   `json:"slug"`
	Description string   `json:"description"`
	Permissions []string `json:"permissions"`
	Status      string   `json:"status"`
}

// RoleCatalog is the set of roles, by slug, at a version (the number of
// role events that made it; 0 when empty). Values are immutable: Define and
// Retire return new ones.
type RoleCatalog struct {
	bySlug  map[string]Role
	version int64
}

// NewRoleCatalog builds a role catalog at version from a list.
func NewRoleCatalog(list []Role, version int64) RoleCatalog {
	c := RoleCatalog{bySlug: make(map[string]Role, len(list)), version: version}
	for _, r := range list {
		c.bySlug[r.Slug] = r
	}
	return c
}

// Version is the number of role events behind c.
func (c RoleCatalog) Version() int64 { return c.version }

// Get returns the role with slug.
func (c RoleCatalog) Get(slug string) (Role, bool) {
	r, ok := c.bySlug[slug]
	return r, ok
}

// List returns every role, retired ones included, sorted by slug.
func (c RoleCatalog) List() []Role {
	out := make([]Role, 0, len(c.bySlug))
	for _, r := range c.bySlug {
		out = append(out, r)
	}
	slices.SortFunc(out, func(a, b Role) int { return strings.Compare(a.Slug, b.Slug) })
	return out
}

// NormalizeRoles sorts and de-duplicates role slugs (never nil), checking
// their shape; a key holds at most 20.
func NormalizeRoles(roles []string) ([]string, error) {
	if len(roles) > MaxKeyRoles {
		return nil, Errorf(EInvalid, "a key can hold at most %d roles, got %d", MaxKeyRoles, len(roles))
	}
	out := make([]string, 0, len(roles))
	for _, r := range roles {
		if !ValidSlug(r) {
			return nil, Errorf(EInvalid, "role slug %q must match ^[a-z0-9][a-z0-9_.:-]{0,127}$", r)
		}
		out = append(out, r)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// CheckGrantable returns invalid_argument unless every role is defined and
// active.
func (c RoleCatalog) CheckGrantable(slugs []string) error {
	for _, s := range slugs {
		r, ok := c.bySlug[s]
		if !ok {
			return Errorf(EInvalid, "role %q is not defined", s)
		}
		if r.Status != PermissionActive {
			return Errorf(EInvalid, "role %q is retired and can no longer be granted", s)
		}
	}
	return nil
}

// Define decides defining (or redefining) role slug with description and
// permissions, each of which the permission catalog perms must define as
// active (at most 100). changed is false when the role is already exactly
// that. Errors: invalid_argument for a bad slug, description or permission
// list, or a permission that is not defined or is retired;
// failed_precondition for a retired role (retired slugs are never reused) or
// a full catalog.
func (c RoleCatalog) Define(slug, description string, permissions []string, perms Catalog) (r Role, next RoleCatalog, changed bool, err error) {
	if !ValidSlug(slug) {
		return Role{}, c, false, Errorf(EInvalid, "role slug %q must match ^[a-z0-9][a-z0-9_.:-]{0,127}$", slug)
	}
	if !utf8.ValidString(description) || utf8.RuneCountInString(description) > MaxDescriptionLength {
		return Role{}, c, false, Errorf(EInvalid, "description must be valid UTF-8 of at most %d characters", MaxDescriptionLength)
	}
	if err := CheckText("description", description, true); err != nil {
		return Role{}, c, false, err
	}
	if permissions == nil {
		return Role{}, c, false, Errorf(EInvalid, "permissions is required (an array of permission slugs)")
	}
	if len(permissions) > MaxRolePermissions {
		return Role{}, c, false, Errorf(EInvalid, "a role can hold at most %d permissions, got %d", MaxRolePermissions, len(permissions))
	}
	ps, err := NormalizePermissions(permissions)
	if err != nil {
		return Role{}, c, false, err
	}
	if err := perms.CheckGrantable(ps); err != nil {
		return Role{}, c, false, err
	}
	old, ok := c.bySlug[slug]
	if ok && old.Status == PermissionRetired {
		return Role{}, c, false, Errorf(EPrecondition, "role %q was retired; retired roles cannot be defined again", slug)
	}
	if ok && old.Description == description && slices.Equal(old.Permissions, ps) {
		return old, c, false, nil
	}
	if !ok && len(c.bySlug) >= MaxRoles {
		return Role{}, c, false, Errorf(EPrecondition, "the role catalog already holds %d roles, the maximum", MaxRoles)
	}
	r = Role{Slug: slug, Description: description, Permissions: ps, Status: PermissionActive}
	return r, c.with(r), true, nil
}

// Retire decides retiring role slug: it can no longer be granted, and keys
// holding it lose its permissions at verification. changed is false when it
// is already retired. Errors: invalid_argument for a bad slug, not_found for
// an unknown one.
func (c RoleCatalog) Retire(slug string) (r Role, next RoleCatalog, changed bool, err error) {
	if !ValidSlug(slug) {
		return Role{}, c, false, Errorf(EInvalid, "role slug %q must match ^[a-z0-9][a-z0-9_.:-]{0,127}$", slug)
	}
	old, ok := c.bySlug[slug]
	if !ok {
		return Role{}, c, false, Errorf(ENotFound, "role %q is not defined", slug)
	}
	if old.Status == PermissionRetired {
		return old, c, false, nil
	}
	r = old
	r.Status = PermissionRetired
	return r, c.with(r), true, nil
}

func (c RoleCatalog) with(r Role) RoleCatalog {
	n := RoleCatalog{bySlug: maps.Clone(c.bySlug), version: c.version + 1}
	if n.bySlug == nil {
		n.bySlug = make(map[string]Role, 1)
	}
	n.bySlug[r.Slug] = r
	return n
}

// EffectivePermissions returns the effective permissions of a key granted
// own permissions and roles: its own active permissions plus the active
// permissions of its active roles, sorted and de-duplicated (never nil).
// active reports whether a permission is active; roleOf returns a role's
// permissions and whether the role is active.
func EffectivePermissions(own, roles []string, active func(slug string) bool, roleOf func(slug string) (perms []string, ok bool)) []string {
	out := make([]string, 0, len(own))
	for _, p := range own {
		if active(p) {
			out = append(out, p)
		}
	}
	for _, r := range roles {
		ps, ok := roleOf(r)
		if !ok {
			continue
		}
		for _, p := range ps {
			if active(p) {
				out = append(out, p)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ActiveRoles returns the roles of list that are active by isActive (same
// order; never nil).
func ActiveRoles(list []string, isActive func(slug string) bool) []string {
	out := make([]string, 0, len(list))
	for _, r := range list {
		if isActive(r) {
			out = append(out, r)
		}
	}
	return out
}

// Effective returns the effective permissions of a key granted own and
// roles under catalogs perms and roles (EffectivePermissions).
func Effective(own, granted []string, perms Catalog, roles RoleCatalog) []string {
	return EffectivePermissions(own, granted,
		func(s string) bool { p, ok := perms.bySlug[s]; return ok && p.Status == PermissionActive },
		func(s string) ([]string, bool) {
			r, ok := roles.bySlug[s]
			return r.Permissions, ok && r.Status == PermissionActive
		})
}
