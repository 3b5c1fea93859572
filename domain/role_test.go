package domain_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func perms(active []string, retired ...string) domain.Catalog {
	var list []domain.Permission
	for _, s := range active {
		list = append(list, domain.Permission{Slug: s, Status: domain.PermissionActive})
	}
	for _, s := range retired {
		list = append(list, domain.Permission{Slug: s, Status: domain.PermissionRetired})
	}
	return domain.NewCatalog(list)
}

func TestRoleDefine(t *testing.T) {
	t.Parallel()
	cat := perms([]string{"posts:read", "posts:write"}, "posts:old")
	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("p%03d", i)
	}
	tests := []struct {
		name    string
		slug    string
		perms   []string
		code    string
		mention string
	}{
		{"defined permissions", "editor", []string{"posts:write", "posts:read", "posts:read"}, "", ""},
		{"no permissions", "nobody", []string{}, "", ""},
		{"permissions missing", "x", nil, domain.EInvalid, "permissions is required"},
		{"a retired permission", "legacy", []string{"posts:read", "posts:old"}, domain.EInvalid, `"posts:old" is retired`},
		{"an undefined permission", "x", []string{"posts:delete"}, domain.EInvalid, "not defined"},
		{"101 permissions", "big", many, domain.EInvalid, "at most 100"},
		{"bad slug", "Editor", []string{}, domain.EInvalid, "role slug"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, next, changed, err := domain.NewRoleCatalog(nil, 0).Define(tt.slug, "d", tt.perms, cat)
			if tt.code != "" {
				wantErr(t, err, tt.code, tt.mention)
				return
			}
			if err != nil || !changed || next.Version() != 1 || r.Status != domain.PermissionActive {
				t.Fatalf("Define = %+v, %v, %v (version %d)", r, changed, err, next.Version())
			}
			if !slices.IsSorted(r.Permissions) || slices.Compact(slices.Clone(r.Permissions)) == nil {
				t.Errorf("permissions %v not normalized", r.Permissions)
			}
		})
	}
}

func TestRoleLifecycle(t *testing.T) {
	t.Parallel()
	cat := perms([]string{"a", "b"})
	rc := domain.NewRoleCatalog(nil, 0)
	_, rc, _, err := rc.Define("ops", "Ops", []string{"a"}, cat)
	if err != nil {
		t.Fatal(err)
	}
	if _, same, changed, _ := rc.Define("ops", "Ops", []string{"a"}, cat); changed || same.Version() != 1 {
		t.Error("defining a role as it is changes nothing")
	}
	_, rc, changed, err := rc.Define("ops", "Ops", []string{"a", "b"}, cat)
	if err != nil || !changed || rc.Version() != 2 {
		t.Fatalf("redefine: %v %v version %d", changed, err, rc.Version())
	}
	r, rc, changed, err := rc.Retire("ops")
	if err != nil || !changed || r.Status != domain.PermissionRetired || rc.Version() != 3 {
		t.Fatalf("retire: %+v %v %v", r, changed, err)
	}
	if _, _, changed, _ := rc.Retire("ops"); changed {
		t.Error("retiring a retired role changes nothing")
	}
	_, _, _, err = rc.Define("ops", "again", []string{"a"}, cat)
	wantErr(t, err, domain.EPrecondition, "retired")
	_, _, _, err = rc.Retire("nope")
	wantErr(t, err, domain.ENotFound, "nope")
	wantErr(t, rc.CheckGrantable([]string{"ops"}), domain.EInvalid, "retired")
	wantErr(t, rc.CheckGrantable([]string{"nope"}), domain.EInvalid, "not defined")
}

func TestNormalizeRoles(t *testing.T) {
	t.Parallel()
	twenty := make([]string, 20)
	for i := range twenty {
		twenty[i] = fmt.Sprintf("r%02d", i)
	}
	if got, err := domain.NormalizeRoles(twenty); err != nil || len(got) != 20 {
		t.Fatalf("20 roles: %v %v", got, err)
	}
	_, err := domain.NormalizeRoles(append(twenty, "r20"))
	wantErr(t, err, domain.EInvalid, "at most 20", "21")
	_, err = domain.NormalizeRoles([]string{"Bad Role"})
	wantErr(t, err, domain.EInvalid, "role slug")
	got, _ := domain.NormalizeRoles([]string{"b", "a", "b"})
	if strings.Join(got, ",") != "a,b" {
		t.Errorf("NormalizeRoles = %v", got)
	}
}

func TestEffectivePermissions(t *testing.T) {
	t.Parallel()
	cat := perms([]string{"a", "b", "c", "d"}, "old")
	rc := domain.NewRoleCatalog([]domain.Role{
		{Slug: "r1", Permissions: []string{"c", "a", "old"}, Status: domain.PermissionActive},
		{Slug: "r2", Permissions: []string{"d"}, Status: domain.PermissionRetired},
	}, 2)
	got := domain.Effective([]string{"b", "old"}, []string{"r1", "r2", "unknown"}, cat, rc)
	if want := []string{"a", "b", "c"}; !slices.Equal(got, want) {
		t.Errorf("Effective = %v, want %v (own active + active roles' active, sorted, de-duplicated)", got, want)
	}
	if got := domain.Effective(nil, nil, cat, rc); got == nil || len(got) != 0 {
		t.Errorf("Effective of nothing = %#v, want []", got)
	}
}

func TestRoleCommands(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read", "posts:write")
	res, err := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: "editor", Description: "Edits", Permissions: []string{"posts:write", "posts:read"}})
	if err != nil || res.Role.Status != "active" || strings.Join(res.Role.Permissions, ",") != "posts:read,posts:write" {
		t.Fatalf("define: %+v %v", res, err)
	}
	rec, ok, _ := e.mem.Last(e.ctx, domain.RolesSubject)
	if !ok || rec.Sequence != res.Sequence {
		t.Fatalf("role event on %s at %d, want %d", domain.RolesSubject, rec.Sequence, res.Sequence)
	}
	ev, _ := domain.DecodeEvent(rec.Data)
	if ev.Type != domain.EventRoleDefined || ev.CheckSubject(domain.RolesSubject) != nil {
		t.Fatalf("event %s on the roles subject: %v", ev.Type, ev.CheckSubject(domain.RolesSubject))
	}
	rc, _ := ev.RoleCatalog()
	if rc.Version() != 1 {
		t.Errorf("role catalog version %d, want 1", rc.Version())
	}
	again, _ := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: "editor", Description: "Edits", Permissions: []string{"posts:read", "posts:write"}})
	if again.Sequence != res.Sequence {
		t.Error("defining a role as it is appended an event")
	}

	// Granting: defined, active roles on create and set_permissions.
	k := e.create("org_1", domain.CreateKey{Roles: []string{"editor"}, Resources: []string{"project:p2", "project:p1"}})
	if strings.Join(k.Key.Roles, ",") != "editor" || strings.Join(k.Key.Resources, ",") != "project:p1,project:p2" {
		t.Fatalf("created key roles %v resources %v", k.Key.Roles, k.Key.Resources)
	}
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Roles: []string{"nope"}})
	wantErr(t, err, domain.EInvalid, `role "nope" is not defined`)
	r, err := e.svc.RetireRole(e.ctx, domain.RetireRole{Slug: "editor"})
	if err != nil || r.Role.Status != "retired" {
		t.Fatalf("retire: %+v %v", r, err)
	}
	_, err = e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: k.Key.ID, Roles: []string{"editor"}})
	wantErr(t, err, domain.EInvalid, "retired")
	// The key keeps what it was granted.
	if got := e.load("org_1", k.Key.ID); strings.Join(got.Roles, ",") != "editor" {
		t.Errorf("roles after the role was retired: %v", got.Roles)
	}
	// set_permissions replaces only what it is given.
	out, err := e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: k.Key.ID, Resources: []string{}})
	if err != nil || len(out.Key.Resources) != 0 || strings.Join(out.Key.Roles, ",") != "editor" {
		t.Fatalf("set resources: %+v %v", out.Key, err)
	}
	_, err = e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: k.Key.ID})
	wantErr(t, err, domain.EInvalid, "permissions, roles and/or resources")
	// The new key of a rotation keeps owner, roles and resources.
	u := e.create("org_1", domain.CreateKey{Owner: &domain.Owner{Type: "user", ID: "u_1"}, Resources: []string{"doc:a:b"}})
	rot, err := e.svc.RotateKey(e.ctx, "org_1", domain.RotateKey{KeyID: u.Key.ID, GracePeriodSeconds: ptr(int64(60))})
	if err != nil || rot.Key.Owner != u.Key.Owner || strings.Join(rot.Key.Resources, ",") != "doc:a:b" {
		t.Fatalf("rotate: %+v %v", rot.Key, err)
	}
}

func TestCreateOwnerAndLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a")
	for i := range 21 {
		if _, err := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: fmt.Sprintf("r%02d", i), Description: "r", Permissions: []string{"a"}}); err != nil {
			t.Fatal(err)
		}
	}
	roles := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("r%02d", i))
		}
		return out
	}
	if _, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Roles: roles(20)}); err != nil {
		t.Fatalf("20 roles: %v", err)
	}
	_, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Roles: roles(21)})
	wantErr(t, err, domain.EInvalid, "at most 20")
	res101 := make([]string, 101)
	for i := range res101 {
		res101[i] = fmt.Sprintf("project:p%d", i)
	}
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Resources: res101})
	wantErr(t, err, domain.EInvalid, "at most 100")
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Owner: &domain.Owner{Type: "organization", ID: "org_2"}})
	wantErr(t, err, domain.EInvalid, "org_2")
	k := e.create("org_1", domain.CreateKey{Owner: &domain.Owner{Type: "user", ID: "alice@example.com"}})
	if k.Key.Owner != (domain.Owner{Type: "user", ID: "alice@example.com"}) {
		t.Errorf("owner = %+v", k.Key.Owner)
	}
}
