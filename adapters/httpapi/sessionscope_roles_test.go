package httpapi

import (
	"slices"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// TestScopedNarrowedSessions: a session's scope (issue 12) and its
// "permissions" narrowing (issue 10) combine. GET /v1/widget/session
// reports id, scope and permissions; a user-scope narrowed session creates
// its user's keys within its permissions; a narrowed session may grant no
// role, on create and on set_permissions (a role's permissions may change
// after the grant), while an unrestricted one may; a scope with a control
// character is invalid_argument naming the field.
func TestScopedNarrowedSessions(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read", "posts:write")
	s.must(t, 200, "PUT", "/v1/roles/editor", adminToken, map[string]any{"description": "Edits", "permissions": []string{"posts:write"}})
	narrow := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "alice", "scope": "user", "permissions": []string{"posts:read"}})
	open := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "alice", "scope": "user"})

	var got Session
	s.must(t, 200, "GET", "/v1/widget/session", narrow.Token, nil).json(t, &got)
	if got.ID != narrow.ID || got.Scope != ScopeUser || got.UserID != "alice" || !slices.Equal(got.Permissions, []string{"posts:read"}) {
		t.Errorf("the session describes itself as %+v, want id %s, scope user, permissions [posts:read]", got, narrow.ID)
	}
	r := s.must(t, 200, "GET", "/v1/widget/session", open.Token, nil)
	if b := string(r.Body); !strings.Contains(b, `"permissions":null`) || !strings.Contains(b, `"scope":"user"`) || !strings.Contains(b, `"id":"`+open.ID+`"`) {
		t.Errorf("an unrestricted user-scope session reports %s", b)
	}

	var created domain.CreateKeyResult
	s.must(t, 201, "POST", "/v1/orgs/org_a/keys", narrow.Token, map[string]any{"name": "mine", "permissions": []string{"posts:read"}, "roles": []string{}}).json(t, &created)
	if created.Key.Owner != (domain.Owner{Type: domain.OwnerUser, ID: "alice"}) {
		t.Errorf("a user-scope create made a key owned by %+v", created.Key.Owner)
	}
	e := s.mustFail(t, domain.EForbidden, "POST", "/v1/orgs/org_a/keys", narrow.Token, map[string]any{"name": "with role", "roles": []string{"editor"}})
	if !strings.Contains(string(e.Body), "role") {
		t.Errorf("refusal %s does not say roles may not be granted", e.Body)
	}
	path := "/v1/orgs/org_a/keys/" + created.Key.ID + "/permissions"
	s.mustFail(t, domain.EForbidden, "PUT", path, narrow.Token, map[string]any{"roles": []string{"editor"}})
	s.mustFail(t, domain.EForbidden, "POST", "/v1/orgs/org_a/keys", narrow.Token, map[string]any{"name": "too much", "permissions": []string{"posts:write"}})
	// The unrestricted session may grant the role, to its own user's key.
	s.must(t, 200, "PUT", path, open.Token, map[string]any{"roles": []string{"editor"}})
	// A narrowed organization-scope session may not either.
	org := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "admin_1", "permissions": []string{"posts:read"}})
	s.mustFail(t, domain.EForbidden, "POST", "/v1/orgs/org_a/keys", org.Token, map[string]any{"name": "org key", "roles": []string{"editor"}})

	e = s.mustFail(t, domain.EInvalid, "POST", "/v1/widget/sessions", adminToken, map[string]any{"org_id": "org_a", "user_id": "alice", "scope": "user\u202e"})
	if !strings.Contains(string(e.Body), "scope") {
		t.Errorf("refusal %s does not name the scope", e.Body)
	}
}
