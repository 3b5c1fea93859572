package domain_test

import (
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// Issues 12 and 13 together: allowed_permissions holds what a key is
// granted through its roles too; rotate keeps owner, roles, resources and
// the expiry capped by policy; widget session scopes limit suspend, resume
// and set_expiry like revoke and the other changes.
func TestPolicyAccountsForRoles(t *testing.T) {
	e := newEnv(t)
	e.define("posts:read")
	e.define("posts:write")
	if _, err := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: "reader", Description: "Reads", Permissions: []string{"posts:read"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: "writer", Description: "Writes", Permissions: []string{"posts:read", "posts:write"}}); err != nil {
		t.Fatal(err)
	}
	// A key holding the writer role before the policy exists.
	before := e.create("org_1", domain.CreateKey{Name: "old", Roles: []string{"writer"}, Resources: []string{"project:p1"}})
	if _, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{AllowedPermissions: []string{"posts:read"}, MaxLifetimeSeconds: ptr[int64](3600)}); err != nil {
		t.Fatal(err)
	}

	_, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "k", Roles: []string{"writer"}})
	wantErr(t, err, domain.EPrecondition, "allowed_permissions", `role "writer"`, `"posts:write"`)
	ok, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "k", Roles: []string{"reader"}, Resources: []string{"project:p1"},
		Owner: &domain.Owner{Type: domain.OwnerUser, ID: "alice"}})
	if err != nil {
		t.Fatalf("create with an allowed role: %v", err)
	}
	if ok.Key.ExpiresAt == nil {
		t.Fatalf("create under max_lifetime_seconds got no expires_at")
	}

	_, err = e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: ok.Key.ID, Roles: []string{"writer"}})
	wantErr(t, err, domain.EPrecondition, `role "writer"`)
	// Narrowing only the resources of a key that holds more than the policy
	// allows is not refused (a new policy does not change existing keys).
	if _, err := e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: before.Key.ID, Resources: []string{"project:p2"}}); err != nil {
		t.Fatalf("set_permissions with resources only: %v", err)
	}
	// But a key holding a role outside the policy cannot be rotated.
	_, err = e.svc.RotateKey(e.ctx, "org_1", domain.RotateKey{KeyID: before.Key.ID, GracePeriodSeconds: ptr[int64](0)})
	wantErr(t, err, domain.EPrecondition, `role "writer"`)

	// Rotate keeps owner, roles, resources and the (capped) expiry.
	rot, err := e.svc.RotateKey(e.ctx, "org_1", domain.RotateKey{KeyID: ok.Key.ID, GracePeriodSeconds: ptr[int64](0)})
	if err != nil {
		t.Fatal(err)
	}
	nk := rot.Key
	if nk.Owner != (domain.Owner{Type: domain.OwnerUser, ID: "alice"}) || len(nk.Roles) != 1 || nk.Roles[0] != "reader" ||
		len(nk.Resources) != 1 || nk.Resources[0] != "project:p1" || nk.ExpiresAt == nil || !nk.ExpiresAt.Equal(*ok.Key.ExpiresAt) {
		t.Fatalf("rotated key %+v, want alice's, roles [reader], resources [project:p1], expires_at %v", nk, ok.Key.ExpiresAt)
	}
	if nk.ExpiresAt.After(nk.CreatedAt.Add(time.Hour)) {
		t.Fatalf("rotated key expires %v, past the policy's max lifetime", nk.ExpiresAt)
	}
}

func TestLifecycleCommandsUnderSessionScopes(t *testing.T) {
	e := newEnv(t)
	e.define("posts:read")
	member := e.create("org_1", domain.CreateKey{Name: "alice's", Owner: &domain.Owner{Type: domain.OwnerUser, ID: "alice"}})
	orgKey := e.create("org_1", domain.CreateKey{Name: "org's"})
	orgScope := domain.Meta{Scope: domain.Scope{Organization: true}}
	bob := domain.Meta{Scope: domain.Scope{User: "bob"}}
	alice := domain.Meta{Scope: domain.Scope{User: "alice"}}
	later := domain.OptionalTime{Set: true, Time: ptr(time.Now().Add(24 * time.Hour))}

	// Another member's key does not exist for a user-scope session.
	_, err := e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: member.Key.ID, Meta: bob})
	wantErr(t, err, domain.ENotFound)
	_, err = e.svc.SetKeyExpiry(e.ctx, "org_1", domain.SetExpiry{KeyID: member.Key.ID, ExpiresAt: later, Meta: bob})
	wantErr(t, err, domain.ENotFound)
	_, err = e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: orgKey.Key.ID, Meta: alice})
	wantErr(t, err, domain.ENotFound)

	// An organization-scope session may suspend a member's key, like a
	// revoke, but not resume it or change its expiry.
	if _, err := e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: member.Key.ID, Reason: "audit", Meta: orgScope}); err != nil {
		t.Fatalf("organization scope suspends a member's key: %v", err)
	}
	_, err = e.svc.ResumeKey(e.ctx, "org_1", domain.ResumeKey{KeyID: member.Key.ID, Meta: orgScope})
	wantErr(t, err, domain.EForbidden, "alice")
	_, err = e.svc.SetKeyExpiry(e.ctx, "org_1", domain.SetExpiry{KeyID: member.Key.ID, ExpiresAt: later, Meta: orgScope})
	wantErr(t, err, domain.EForbidden)
	// Its user may.
	if _, err := e.svc.ResumeKey(e.ctx, "org_1", domain.ResumeKey{KeyID: member.Key.ID, Meta: alice}); err != nil {
		t.Fatalf("alice resumes her key: %v", err)
	}
	if _, err := e.svc.SetKeyExpiry(e.ctx, "org_1", domain.SetExpiry{KeyID: member.Key.ID, ExpiresAt: later, Meta: alice}); err != nil {
		t.Fatalf("alice sets her key's expiry: %v", err)
	}
	// Organization keys: everything, for the organization scope.
	if _, err := e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: orgKey.Key.ID, Meta: orgScope}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.ResumeKey(e.ctx, "org_1", domain.ResumeKey{KeyID: orgKey.Key.ID, Meta: orgScope}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetKeyExpiry(e.ctx, "org_1", domain.SetExpiry{KeyID: orgKey.Key.ID, ExpiresAt: later, Meta: orgScope}); err != nil {
		t.Fatal(err)
	}
}
