package verifier

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func (e *env) defineRole(slug string, perms ...string) uint64 {
	e.t.Helper()
	if perms == nil {
		perms = []string{}
	}
	r, err := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: slug, Description: "role " + slug, Permissions: perms})
	if err != nil {
		e.t.Fatal(err)
	}
	return r.Sequence
}

// TestEffectivePermissionsThroughRoleChanges follows one key through role
// definitions, redefinitions, retirements and a permission retirement, on a
// verifier booted from the snapshot and one that follows the stream live:
// both report the effective permissions (own active + active roles' active,
// sorted, de-duplicated) and the active roles only.
func TestEffectivePermissionsThroughRoleChanges(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read", "posts:write", "users:read", "billing:read")
	e.defineRole("editor", "posts:write", "posts:read")
	e.defineRole("viewer", "users:read")
	k := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:read"}, Roles: []string{"viewer", "editor"}})
	other := e.create("org_1", domain.CreateKey{Roles: []string{"editor"}}) // shares the role, not the grant
	live := e.verifier()
	e.project()
	booted := e.verifier()

	check := func(step string, wantPerms, wantRoles []string, seq uint64) {
		t.Helper()
		for name, v := range map[string]*Verifier{"live": live, "booted": booted} {
			if err := v.WaitApplied(e.ctx, seq); err != nil {
				t.Fatal(err)
			}
			r := verify(t, v, k.Secret)
			if !r.Valid || !slices.Equal(r.Key.Permissions, wantPerms) || !slices.Equal(r.Key.Roles, wantRoles) {
				t.Errorf("%s, %s verifier: %s %v roles %v; want permissions %v roles %v", step, name, r.Code, r.Key.Permissions, r.Key.Roles, wantPerms, wantRoles)
			}
		}
	}
	check("granted", []string{"posts:read", "posts:write", "users:read"}, []string{"editor", "viewer"}, e.streamLast())
	if r := verify(t, live, k.Secret, "users:read", "posts:write"); !r.Valid {
		t.Errorf("a permission through a role is checked: %s", r.Code)
	}

	seq := e.defineRole("viewer", "users:read", "billing:read")
	check("viewer redefined", []string{"billing:read", "posts:read", "posts:write", "users:read"}, []string{"editor", "viewer"}, seq)

	seq = e.defineRole("editor", "posts:read")
	check("editor redefined without posts:write", []string{"billing:read", "posts:read", "users:read"}, []string{"editor", "viewer"}, seq)
	if r := verify(t, live, other.Secret, "posts:write"); r.Code != CodeInsufficientPermissions {
		t.Errorf("every holder of the redefined role lost posts:write: %s", r.Code)
	}

	seq = e.retire("billing:read")
	check("billing:read retired", []string{"posts:read", "users:read"}, []string{"editor", "viewer"}, seq)

	r, err := e.svc.RetireRole(e.ctx, domain.RetireRole{Slug: "viewer"})
	if err != nil {
		t.Fatal(err)
	}
	check("viewer retired", []string{"posts:read"}, []string{"editor"}, r.Sequence)
	if res := verify(t, live, k.Secret, "users:read"); res.Code != CodeInsufficientPermissions {
		t.Errorf("a retired role's permission: %s, want insufficient_permissions", res.Code)
	}

	// A verifier booting now, from the snapshot, agrees.
	e.project()
	late := e.verifier()
	if res := verify(t, late, k.Secret); !slices.Equal(res.Key.Permissions, []string{"posts:read"}) || !slices.Equal(res.Key.Roles, []string{"editor"}) {
		t.Errorf("late boot: %v %v", res.Key.Permissions, res.Key.Roles)
	}
}

func TestVerifyResource(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read")
	scoped := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:read"}, Resources: []string{"project:p1", "project:p2", "repo:keyd/api"}})
	open := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:read"}})
	revoked := e.create("org_1", domain.CreateKey{Resources: []string{"project:p1"}})
	e.revoke("org_1", revoked.Key.ID)
	for _, boot := range []string{"replay", "snapshot"} {
		var v *Verifier
		if boot == "snapshot" {
			e.project()
			v = e.verifier()
		} else {
			v = e.verifier(withoutPool)
		}
		tests := []struct {
			secret, resource string
			perms            []string
			code             string
		}{
			{scoped.Secret, "", nil, CodeValid},
			{scoped.Secret, "project:p1", nil, CodeValid},
			{scoped.Secret, "project:p3", nil, CodeResourceNotAllowed},
			{scoped.Secret, "project:p3", []string{"posts:write"}, CodeResourceNotAllowed}, // before permissions
			{scoped.Secret, "project:p1", []string{"posts:write"}, CodeInsufficientPermissions},
			{scoped.Secret, "repo:keyd/api", []string{"posts:read"}, CodeValid},
			{scoped.Secret, "bucket:b1", nil, CodeValid}, // a type the key does not restrict
			{open.Secret, "project:p3", nil, CodeValid},  // no resources: unrestricted
			{revoked.Secret, "project:p9", nil, CodeRevoked},
		}
		for _, tt := range tests {
			r, err := v.VerifyResource(context.Background(), tt.secret, tt.resource, tt.perms...)
			if err != nil || r.Code != tt.code {
				t.Errorf("%s: resource %q perms %v: %s, %v; want %s", boot, tt.resource, tt.perms, r.Code, err, tt.code)
			}
		}
		if r := verify(t, v, scoped.Secret); !slices.Equal(r.Key.Resources, []string{"project:p1", "project:p2", "repo:keyd/api"}) {
			t.Errorf("%s: resources %v", boot, r.Key.Resources)
		}
		if _, err := v.VerifyResource(context.Background(), scoped.Secret, "no colon"); domain.ErrorCode(err) != domain.EInvalid {
			t.Errorf("%s: a malformed resource: %v, want invalid_argument", boot, err)
		}
	}
}

// TestVerifyResourceAllocs: verifying a key with roles and resources, on a
// resource, allocates nothing either, and a role change reaches every key
// sharing the grant with one store.
func TestVerifyResourceAllocs(t *testing.T) {
	dig := domain.NewDigester(testSecret)
	keys, secrets := genKeys(t, 100, true, dig)
	for i := range keys {
		keys[i].Status, keys[i].ExpiresAt, keys[i].Permissions = domain.StatusActive, nil, nil
		keys[i].Roles = []string{"r1", "r2", "r3"}
		keys[i].Resources = []string{"project:p1", "project:p2", "project:p3", "repo:a/b", "repo:c/d"}
	}
	v := New(Config{Digester: dig, MaxStaleness: time.Hour, OnLastUsed: func(context.Context, []LastUsed) error { return nil }})
	a := newApplier(v)
	roles := []domain.Role{
		{Slug: "r1", Permissions: []string{"posts:read"}, Status: domain.PermissionActive},
		{Slug: "r2", Permissions: []string{"posts:write"}, Status: domain.PermissionActive},
		{Slug: "r3", Permissions: []string{"users:read"}, Status: domain.PermissionActive},
	}
	a.setRoles(roles)
	for i := range keys {
		d := dig.Digest(secrets[i])
		ent := a.in.entryFromKey(&keys[i], a.grantSlices(keys[i].Permissions, keys[i].Roles, keys[i].Resources))
		a.put(d, &ent)
	}
	a.publishWork()
	v.contact.touch(v.contact.clock())
	v.booted.Store(true)
	ctx := context.Background()
	for _, c := range []struct {
		resource string
		perms    []string
		code     string
	}{
		{"project:p2", []string{"posts:write", "users:read"}, CodeValid},
		{"project:p9", nil, CodeResourceNotAllowed},
		{"bucket:b", []string{"admin"}, CodeInsufficientPermissions},
	} {
		r, err := v.VerifyResource(ctx, secrets[0], c.resource, c.perms...)
		if err != nil || r.Code != c.code {
			t.Fatalf("%s %v: %s %v, want %s", c.resource, c.perms, r.Code, err, c.code)
		}
		if n := testing.AllocsPerRun(1000, func() { _, _ = v.VerifyResource(ctx, secrets[0], c.resource, c.perms...) }); n != 0 {
			t.Errorf("%s: %.1f allocs per VerifyResource, want 0", c.resource, n)
		}
	}
	if n := len(a.holders["r2"]); n != 1 {
		t.Errorf("role r2 indexes %d grants, want 1 (every key shares one)", n)
	}
	roles[1].Status = domain.PermissionRetired
	a.setRoles(roles)
	for i := range keys {
		if r := verify(t, v, secrets[i], "posts:write"); r.Code != CodeInsufficientPermissions || !slices.Equal(r.Key.Roles, []string{"r1", "r3"}) {
			t.Fatalf("key %d after retiring r2: %s %v", i, r.Code, r.Key.Roles)
		}
	}
}

// BenchmarkVerifyGrants compares, in one verifier, Verify of plain keys with
// Verify (and VerifyResource) of keys holding 3 roles and 5 resources.
func BenchmarkVerifyGrants(b *testing.B) {
	dig := domain.NewDigester(testSecret)
	const n = 200_000
	keys, secrets := genKeys(b, n, true, dig)
	v := New(Config{Digester: dig, MaxStaleness: time.Hour, OnLastUsed: func(context.Context, []LastUsed) error { return nil }})
	a := newApplier(v)
	var roles []domain.Role
	for i := range 30 {
		roles = append(roles, domain.Role{Slug: fmt.Sprintf("role-%02d", i), Permissions: []string{"posts:read", fmt.Sprintf("p%d", i)}, Status: domain.PermissionActive})
	}
	a.setRoles(roles)
	for i := range keys {
		keys[i].Status, keys[i].ExpiresAt = domain.StatusActive, nil
		if i%2 == 1 {
			keys[i].Roles = []string{roles[i%30].Slug, roles[(i+1)%30].Slug, roles[(i+2)%30].Slug}
			keys[i].Resources = []string{"project:p1", "project:p2", "project:p3", "repo:keyd/api", "repo:keyd/web"}
		}
		ent := a.in.entryFromKey(&keys[i], a.grantSlices(keys[i].Permissions, keys[i].Roles, keys[i].Resources))
		a.put(dig.Digest(secrets[i]), &ent)
	}
	a.publishWork()
	v.contact.touch(v.contact.clock())
	v.booted.Store(true)
	ctx := context.Background()
	run := func(name string, odd int, resource string) {
		b.Run(name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					i = (i + 7919) % (n / 2)
					if _, err := v.VerifyResource(ctx, secrets[2*i+odd], resource); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
	for range 3 {
		run("plain", 0, "")
		run("roles", 1, "")
		run("roles+resource", 1, "project:p3")
	}
}
