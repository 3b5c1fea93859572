package domain

import (
	"slices"
	"time"
)

// Grants is what set_permissions replaces: each non-nil field (normalized:
// NormalizePermissions, NormalizeRoles, NormalizeResources) replaces the
// key's; nil keeps it.
type Grants struct {
	Permissions []string
	Roles       []string
	Resources   []string
}

// SetGrants decides replacing the key's permissions, roles and/or resources
// by g's non-nil fields, for a command of scope s. changed is false when the
// key already holds exactly those. With expected, it applies only to that
// version of the key.
// Errors: invalid_argument for a permission perms does not define or has
// retired, or a role roles does not define or has retired; not_found or
// permission_denied for a key outside s; conflict for another version than
// expected; failed_precondition for a revoked or expired key.
func (k KeyState) SetGrants(g Grants, perms Catalog, roles RoleCatalog, s Scope, expected *int64, now time.Time) (d KeyPermissionsChangedData, changed bool, err error) {
	if err := s.checkKey(k, true); err != nil {
		return KeyPermissionsChangedData{}, false, err
	}
	if g.Permissions != nil {
		if err := perms.CheckGrantable(g.Permissions); err != nil {
			return KeyPermissionsChangedData{}, false, err
		}
	}
	if g.Roles != nil {
		if err := roles.CheckGrantable(g.Roles); err != nil {
			return KeyPermissionsChangedData{}, false, err
		}
	}
	if expected != nil && *expected != k.Version {
		return KeyPermissionsChangedData{}, false, Errorf(EConflict, "key %s is at version %d, not the expected version %d", k.ID, k.Version, *expected)
	}
	if err := k.checkMutable(now, "changed"); err != nil {
		return KeyPermissionsChangedData{}, false, err
	}
	n := k.clone()
	if g.Permissions != nil {
		n.Permissions = g.Permissions
	}
	if g.Roles != nil {
		n.Roles = g.Roles
	}
	if g.Resources != nil {
		n.Resources = g.Resources
	}
	n.Roles, n.Resources = orEmpty(n.Roles), orEmpty(n.Resources)
	if slices.Equal(k.Permissions, n.Permissions) && slices.Equal(orEmpty(k.Roles), n.Roles) && slices.Equal(orEmpty(k.Resources), n.Resources) {
		return KeyPermissionsChangedData{}, false, nil
	}
	n.Version = k.Version + 1
	return KeyPermissionsChangedData{Permissions: n.Permissions, Previous: k.Permissions, Key: n,
		Roles: n.Roles, Resources: n.Resources}, true, nil
}
