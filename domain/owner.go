package domain

// Owner types: who a key belongs to.
const (
	OwnerOrganization = "organization"
	OwnerUser         = "user"
)

// MaxUserIDLength bounds a user id (an owner's id, a revoke_user_keys
// user_id).
const MaxUserIDLength = 128

// ValidUserID reports whether s is a user id of the host application:
// ^[A-Za-z0-9_.@:+-]{1,128}$, and neither "." nor "..".
func ValidUserID(s string) bool {
	if len(s) < 1 || len(s) > MaxUserIDLength || s == "." || s == ".." {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(isAlnum(c) || c == '_' || c == '.' || c == '@' || c == ':' || c == '+' || c == '-') {
			return false
		}
	}
	return true
}

// CheckUserID returns invalid_argument, naming field, unless s is a user id
// (ValidUserID).
func CheckUserID(field, s string) error {
	if !ValidUserID(s) {
		return Errorf(EInvalid, "%s %q must match ^[A-Za-z0-9_.@:+-]{1,128}$ (and not be \".\" or \"..\")", field, s)
	}
	return nil
}

// OrgOwner is the owner of an organization's own keys.
func OrgOwner(org string) Owner { return Owner{Type: OwnerOrganization, ID: org} }

// IsUser reports whether o is a user owner.
func (o Owner) IsUser() bool { return o.Type == OwnerUser }

// CheckOwner returns the owner a create in org asks for: the organization
// when o is nil. Errors: invalid_argument for an unknown type, a user id that
// is not one (ValidUserID), or an organization owner whose id is not org.
func CheckOwner(org string, o *Owner) (Owner, error) {
	if o == nil {
		return OrgOwner(org), nil
	}
	switch o.Type {
	case OwnerOrganization:
		if o.ID != org {
			return Owner{}, Errorf(EInvalid, "owner is organization %q, but the key is created in organization %q; an organization owner must be the key's own organization (or leave owner out)", o.ID, org)
		}
		return *o, nil
	case OwnerUser:
		if err := CheckUserID("owner.id", o.ID); err != nil {
			return Owner{}, err
		}
		return *o, nil
	}
	return Owner{}, Errorf(EInvalid, `owner.type must be "organization" or "user", got %q`, o.Type)
}

// Scope limits which keys a command may touch. The HTTP edge sets it from a
// widget session; the zero Scope (admin token, NATS) touches any key of the
// organization.
type Scope struct {
	// User, when set (a user-scope session), limits the command to keys
	// owned by that user: any other key is not_found, and a create makes a
	// key owned by the user (another owner is permission_denied).
	User string
	// Organization (an organization-scope session) lets the command
	// change (update, set_permissions, rotate, resume, set_expiry) and create only
	// organization-owned keys (permission_denied otherwise); it may revoke
	// or suspend any key of its organization.
	Organization bool
}

// checkKey returns the error a command of scope s gets for key k, or nil:
// change says whether the command changes more than the key's status
// (update, set_permissions, rotate, resume, set_expiry) rather than
// revoking or suspending it.
func (s Scope) checkKey(k KeyState, change bool) error {
	switch {
	case s.User != "":
		if k.Owner.Type != OwnerUser || k.Owner.ID != s.User {
			return keyNotFound(k.OrgID, k.ID)
		}
	case s.Organization && change && k.Owner.Type != OwnerOrganization:
		return Errorf(EForbidden, "key %s belongs to user %q; an organization-scope widget session may revoke or suspend it but not change it", k.ID, k.Owner.ID)
	}
	return nil
}

// ownerForCreate is the owner a create by scope s makes, from the owner the
// command asked for (already checked by CheckOwner; asked says whether it
// named one). Errors: permission_denied for an owner the scope may not
// create.
func (s Scope) ownerForCreate(org string, o Owner, asked bool) (Owner, error) {
	switch {
	case s.User != "":
		if !asked {
			return Owner{Type: OwnerUser, ID: s.User}, nil
		}
		if o.Type != OwnerUser || o.ID != s.User {
			return Owner{}, Errorf(EForbidden, "a user-scope widget session creates keys for its own user %q only; leave owner out or give that user", s.User)
		}
	case s.Organization && o.Type != OwnerOrganization:
		return Owner{}, Errorf(EForbidden, "an organization-scope widget session creates organization-owned keys only; leave owner out")
	}
	return o, nil
}
