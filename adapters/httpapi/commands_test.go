package httpapi

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func TestManagementRoutes(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read", "posts:write")

	// create: 201, the secret once, a masked view, a Location.
	r := s.must(t, 201, "POST", "/v1/orgs/org_a/keys", adminToken,
		`{"name": "CI deploy", "permissions": ["posts:read"], "metadata": {"env": "ci"}}`)
	var created domain.CreateKeyResult
	r.json(t, &created)
	k := created.Key
	if created.Secret == "" || !domain.ValidSecret(created.Secret) {
		t.Fatalf("create reply secret %q is not a secret", created.Secret)
	}
	if k.Mask != domain.Mask(created.Secret) || strings.Contains(k.Mask, created.Secret) {
		t.Errorf("mask %q does not mask the secret", k.Mask)
	}
	if k.OrgID != "org_a" || k.Name != "CI deploy" || k.Status != "active" || k.Version != 1 ||
		len(k.Permissions) != 1 || k.Permissions[0] != "posts:read" || k.Metadata["env"] != "ci" || created.Sequence == 0 {
		t.Errorf("create reply = %+v", created)
	}
	if got, want := r.Header.Get("Location"), "/v1/orgs/org_a/keys/"+k.ID; got != want {
		t.Errorf("Location = %q, want %q", got, want)
	}
	base := "/v1/orgs/org_a/keys/" + k.ID

	// update (PATCH).
	var upd domain.KeyResult
	s.must(t, 200, "PATCH", base, adminToken, `{"name": "CI deploy (prod)"}`).json(t, &upd)
	if upd.Key.Name != "CI deploy (prod)" || upd.Key.Version != 2 || upd.Sequence <= created.Sequence {
		t.Errorf("update reply = %+v", upd)
	}

	// set permissions (PUT), with and without a stale expected_version.
	var set domain.KeyResult
	s.must(t, 200, "PUT", base+"/permissions", adminToken, `{"permissions": ["posts:read", "posts:write"], "expected_version": 2}`).json(t, &set)
	if len(set.Key.Permissions) != 2 || set.Key.Version != 3 {
		t.Errorf("set_permissions reply = %+v", set)
	}
	s.mustFail(t, domain.EConflict, "PUT", base+"/permissions", adminToken, `{"permissions": [], "expected_version": 2}`)
	s.mustFail(t, domain.EInvalid, "PUT", base+"/permissions", adminToken, `{"permissions": ["posts:delete"]}`)

	// rotate: a new key with a new secret; the old one expires.
	var rot domain.RotateKeyResult
	s.must(t, 200, "POST", base+"/rotate", adminToken, `{"grace_period_seconds": 3600}`).json(t, &rot)
	if rot.Secret == "" || rot.Secret == created.Secret || rot.Key.ID == k.ID || rot.Previous.ID != k.ID ||
		rot.Previous.ExpiresAt == nil || rot.Key.Name != "CI deploy (prod)" || len(rot.Key.Permissions) != 2 {
		t.Errorf("rotate reply = %+v", rot)
	}
	s.mustFail(t, domain.EInvalid, "POST", base+"/rotate", adminToken, `{}`) // grace_period_seconds is required

	// revoke, twice: idempotent, same sequence.
	var rev1, rev2 domain.KeyResult
	s.must(t, 200, "POST", base+"/revoke", adminToken, `{"reason": "leaked"}`).json(t, &rev1)
	s.must(t, 200, "POST", base+"/revoke", adminToken, nil).json(t, &rev2)
	if rev1.Key.Status != "revoked" || rev1.Key.RevokedAt == nil || rev2.Sequence != rev1.Sequence {
		t.Errorf("revoke replies = %+v, %+v", rev1, rev2)
	}
	// A revoked key can't be changed.
	s.mustFail(t, domain.EPrecondition, "PATCH", base, adminToken, `{"name": "x"}`)
	s.mustFail(t, domain.EPrecondition, "POST", base+"/rotate", adminToken, `{"grace_period_seconds": 0}`)

	// Permissions: define (idempotent), change description, retire.
	var def domain.PermissionResult
	s.must(t, 200, "PUT", "/v1/permissions/posts:write", adminToken, `{"description": "write posts"}`).json(t, &def)
	if def.Permission != (domain.Permission{Slug: "posts:write", Description: "write posts", Status: "active"}) {
		t.Errorf("define reply = %+v", def)
	}
	var ret domain.PermissionResult
	s.must(t, 200, "DELETE", "/v1/permissions/posts:write", adminToken, nil).json(t, &ret)
	if ret.Permission.Status != "retired" || ret.Sequence <= def.Sequence {
		t.Errorf("retire reply = %+v", ret)
	}
	s.mustFail(t, domain.EInvalid, "POST", "/v1/orgs/org_a/keys", adminToken, `{"name": "x", "permissions": ["posts:write"]}`)
	s.mustFail(t, domain.ENotFound, "DELETE", "/v1/permissions/never-defined", adminToken, nil)
}

func TestCommandBodyErrors(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	k := s.createKey("org_a", "k").Key
	base := "/v1/orgs/org_a/keys/" + k.ID
	for _, c := range []struct {
		name, method, path, body string
		code                     string
		inMessage                string
	}{
		{"malformed JSON", "POST", "/v1/orgs/org_a/keys", `{"name": `, domain.EInvalid, "JSON"},
		{"not an object", "POST", "/v1/orgs/org_a/keys", `["x"]`, domain.EInvalid, "object"},
		{"unknown field", "POST", "/v1/orgs/org_a/keys", `{"name": "x", "colour": "red"}`, domain.EInvalid, "colour"},
		{"wrong type", "POST", "/v1/orgs/org_a/keys", `{"name": 5}`, domain.EInvalid, "name"},
		{"trailing data", "PATCH", base, `{"name": "x"} {}`, domain.EInvalid, "one JSON object"},
		{"key id differs", "POST", base + "/revoke", `{"key_id": "key_01J00000000000000000000000"}`, domain.EInvalid, "differs"},
		{"bad key id", "POST", "/v1/orgs/org_a/keys/key_nope/revoke", `{}`, domain.EInvalid, "key_nope"},
		{"bad org", "POST", "/v1/orgs/org%20a/keys", `{"name": "x"}`, domain.EInvalid, "organization"},
		{"bad slug", "PUT", "/v1/permissions/Posts:Read", `{"description": "x"}`, domain.EInvalid, "slug"},
		{"bad actor", "POST", base + "/revoke", `{"actor": {"type": "robot", "id": "r"}}`, domain.EInvalid, "actor.type"},
		{"unknown key", "POST", "/v1/orgs/org_a/keys/key_01J00000000000000000000000/revoke", `{}`, domain.ENotFound, "not found"},
		{"another org's key", "POST", "/v1/orgs/org_b/keys/" + k.ID + "/revoke", `{}`, domain.ENotFound, "not found"},
		{"another org's key, update", "PATCH", "/v1/orgs/org_b/keys/" + k.ID, `{"name": "y"}`, domain.ENotFound, "not found"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := s.mustFail(t, c.code, c.method, c.path, adminToken, c.body)
			var e domain.ErrorBody
			r.json(t, &e)
			if !strings.Contains(e.Error.Message, c.inMessage) {
				t.Errorf("message %q does not mention %q", e.Error.Message, c.inMessage)
			}
		})
	}

	t.Run("too large", func(t *testing.T) {
		big := `{"name": "x", "metadata": {"a": "` + strings.Repeat("x", 65<<10) + `"}}`
		s.mustFail(t, domain.ETooLarge, "POST", "/v1/orgs/org_a/keys", adminToken, big)
		// Without a Content-Length (chunked), the limit holds as well.
		s.mustFail(t, domain.ETooLarge, "POST", "/v1/orgs/org_a/keys", adminToken, strings.NewReader(big))
		s.mustFail(t, domain.ETooLarge, "POST", "/v1/widget/sessions", adminToken, big)
	})
}

// lastEvent returns the last event on a key's subject.
func lastEvent(t *testing.T, s *stack, org, keyID string) domain.Event {
	t.Helper()
	rec, ok, err := s.store.Last(context.Background(), domain.KeySubject(org, keyID))
	if err != nil || !ok {
		t.Fatalf("last event of %s: %v, %v", keyID, ok, err)
	}
	var e domain.Event
	if err := json.Unmarshal(rec.Data, &e); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestCommandActor(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	k := s.createKey("org_a", "k").Key
	if got := lastEvent(t, s, "org_a", k.ID).Actor; got != adminActor {
		t.Errorf("admin without actor: actor %+v, want %+v", got, adminActor)
	}
	base := "/v1/orgs/org_a/keys/" + k.ID
	s.must(t, 200, "PATCH", base, adminToken, `{"name": "a", "actor": {"type": "user", "id": "u_7"}}`)
	if got, want := lastEvent(t, s, "org_a", k.ID).Actor, (domain.Actor{Type: "user", ID: "u_7"}); got != want {
		t.Errorf("admin with actor: actor %+v, want %+v", got, want)
	}
	s.must(t, 200, "PATCH", base, adminToken, `{"name": "b", "actor": null}`)
	if got := lastEvent(t, s, "org_a", k.ID).Actor; got != adminActor {
		t.Errorf("admin with null actor: actor %+v, want %+v", got, adminActor)
	}
	// A widget session's user is the actor, whatever the body claims.
	tok := s.session("org_a", "user-9")
	s.must(t, 200, "PATCH", base, tok, `{"name": "c", "actor": {"type": "service", "id": "admin"}}`)
	if got, want := lastEvent(t, s, "org_a", k.ID).Actor, (domain.Actor{Type: "user", ID: "user-9"}); got != want {
		t.Errorf("widget session: actor %+v, want %+v", got, want)
	}
	var created domain.CreateKeyResult
	s.must(t, 201, "POST", "/v1/orgs/org_a/keys", tok, `{"name": "from the widget"}`).json(t, &created)
	if got, want := lastEvent(t, s, "org_a", created.Key.ID).Actor, (domain.Actor{Type: "user", ID: "user-9"}); got != want {
		t.Errorf("widget create: actor %+v, want %+v", got, want)
	}
}
