package domain

import (
	"bytes"
	"context"
	"time"
)

// The role catalog is its own aggregate, on RolesSubject, like the
// permission catalog: every role event carries the whole catalog and its
// version.

var rolesAggregate = aggregate[RoleCatalog]{
	subject: RolesSubject,
	name:    "the role catalog",
	decode:  Event.RoleCatalog,
	empty:   func() (RoleCatalog, error) { return NewRoleCatalog(nil, 0), nil },
}

// RoleResult is the reply to roles.define and roles.retire.
type RoleResult struct {
	Role     Role   `json:"role"`
	Sequence uint64 `json:"sequence"`
}

type decodedRoles struct {
	seq   uint64
	data  []byte
	roles RoleCatalog
}

// Roles returns the current role catalog and the sequence of its last event
// (0 when empty).
func (s *Service) Roles(ctx context.Context) (RoleCatalog, uint64, error) {
	rec, ok, err := s.Store.Last(ctx, RolesSubject)
	if err != nil {
		return RoleCatalog{}, 0, storeError(err)
	}
	if !ok {
		return NewRoleCatalog(nil, 0), 0, nil
	}
	if d := s.rolesCached(); d != nil && d.seq == rec.Sequence && bytes.Equal(d.data, rec.Data) {
		return d.roles, rec.Sequence, nil
	}
	ev, err := DecodeEvent(rec.Data)
	if err != nil {
		return RoleCatalog{}, 0, err
	}
	c, err := ev.RoleCatalog()
	if err == nil {
		s.roles.Store(&decodedRoles{seq: rec.Sequence, data: rec.Data, roles: c})
	}
	return c, rec.Sequence, err
}

func (s *Service) rolesCached() *decodedRoles { return s.roles.Load() }

// roleCommand runs a command on the role catalog, decided by rule, and
// replies with slug's role as the command left it.
func (s *Service) roleCommand(ctx context.Context, c command, evType, slug string,
	rule func(rc RoleCatalog) (r Role, next RoleCatalog, changed bool, err error)) (RoleResult, error) {
	c.byClient = false // as for catalog commands: decided anew when resent
	w := write[RoleCatalog]{aggregate: rolesAggregate, cmd: c, evType: evType, retry: true}
	out, err := mutate(ctx, s, w, func(rc RoleCatalog, _ time.Time) ([]change[RoleCatalog], error) {
		r, next, changed, err := rule(rc)
		if err != nil || !changed {
			return nil, err
		}
		return []change[RoleCatalog]{{typ: evType, data: RoleEventData{Role: r, Roles: next.List(), Version: next.version}, after: next, roles: true}}, nil
	})
	if err != nil {
		return RoleResult{}, err
	}
	r, _ := out.state.Get(slug)
	if r.Permissions == nil {
		r.Permissions = []string{}
	}
	return RoleResult{Role: r, Sequence: out.seq}, nil
}

// DefineRole creates or redefines a role; every permission must be defined
// and active in the permission catalog. Defining it again as it is appends
// nothing.
func (s *Service) DefineRole(ctx context.Context, cmd DefineRole) (RoleResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return RoleResult{}, err
	}
	return s.roleCommand(ctx, c, EventRoleDefined, cmd.Slug, func(rc RoleCatalog) (Role, RoleCatalog, bool, error) {
		// Read on every attempt: a permission retired meanwhile counts.
		perms, _, err := s.Catalog(ctx)
		if err != nil {
			return Role{}, rc, false, err
		}
		return rc.Define(cmd.Slug, cmd.Description, cmd.Permissions, perms)
	})
}

// RetireRole retires a role. Retiring a retired role appends nothing.
func (s *Service) RetireRole(ctx context.Context, cmd RetireRole) (RoleResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return RoleResult{}, err
	}
	return s.roleCommand(ctx, c, EventRoleRetired, cmd.Slug, func(rc RoleCatalog) (Role, RoleCatalog, bool, error) {
		return rc.Retire(cmd.Slug)
	})
}
