package verifier

import (
	"context"
	"net/netip"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// TestVerdictOrder: the contract's order of verify codes where issue 12's
// (resource_not_allowed, roles' effective permissions) meet issue 13's
// (suspended, ip_not_allowed): malformed, not_found, revoked, expired,
// suspended, ip_not_allowed, resource_not_allowed, insufficient_permissions;
// live and booted from the snapshot.
func TestVerdictOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read")
	e.define("posts:write")
	if _, err := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: "writer", Description: "w", Permissions: []string{"posts:write"}}); err != nil {
		t.Fatal(err)
	}
	const org = "org_order"
	k := e.create(org, domain.CreateKey{Permissions: []string{"posts:read"}, Roles: []string{"writer"}, Resources: []string{"project:p1"}})
	susp := e.create(org, domain.CreateKey{Resources: []string{"project:p1"}})
	if _, err := e.svc.SuspendKey(e.ctx, org, domain.SuspendKey{KeyID: susp.Key.ID}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPolicy(e.ctx, org, domain.SetPolicy{AllowedCIDRs: []string{"10.0.0.0/8"}}); err != nil {
		t.Fatal(err)
	}
	inside, outside := netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("192.0.2.7")
	for _, boot := range []string{"replay", "snapshot"} {
		var v *Verifier
		if boot == "snapshot" {
			e.project()
			v = e.verifier()
		} else {
			v = e.verifier(withoutPool)
		}
		tests := []struct {
			secret   string
			req      Request
			perms    []string
			code     string
			describe string
		}{
			{susp.Secret, Request{ClientIP: outside, Resource: "project:p2"}, []string{"posts:write"}, CodeSuspended, "suspended before ip_not_allowed"},
			{k.Secret, Request{ClientIP: outside, Resource: "project:p2"}, []string{"admin:all"}, CodeIPNotAllowed, "ip_not_allowed before resource_not_allowed"},
			{k.Secret, Request{Resource: "project:p1"}, nil, CodeIPNotAllowed, "no client_ip while the policy has cidrs"},
			{k.Secret, Request{ClientIP: inside, Resource: "project:p2"}, []string{"admin:all"}, CodeResourceNotAllowed, "resource_not_allowed before insufficient_permissions"},
			{k.Secret, Request{ClientIP: inside, Resource: "project:p1"}, []string{"admin:all"}, CodeInsufficientPermissions, "insufficient_permissions last"},
			{k.Secret, Request{ClientIP: inside, Resource: "project:p1"}, []string{"posts:read", "posts:write"}, CodeValid, "own and role permissions"},
		}
		for _, tt := range tests {
			r, err := v.VerifyRequest(context.Background(), tt.secret, tt.req, tt.perms...)
			if err != nil || r.Code != tt.code {
				t.Errorf("%s: %s: %s, %v; want %s", boot, tt.describe, r.Code, err, tt.code)
			}
		}
	}
}
