package main

import (
	"fmt"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/internal/testenv"
)

func strs(v any) []string {
	l, _ := v.([]any)
	out := make([]string, 0, len(l))
	for _, x := range l {
		out = append(out, fmt.Sprint(x))
	}
	return out
}

func ids(list map[string]any) []string {
	var out []string
	for _, k := range list["data"].([]any) {
		out = append(out, k.(map[string]any)["id"].(string))
	}
	return out
}

// TestOwnersRolesResourcesEndToEnd drives user-scoped keys, roles and
// resource-scoped keys over NATS and HTTP against a real keyd dev, as a
// user would: every command on both transports, the listing filters,
// verification with and without a resource, a role change reaching
// verification before its reply, offboarding a user, and what widget
// sessions of either scope may see and do.
func TestOwnersRolesResourcesEndToEnd(t *testing.T) {
	t.Parallel()
	r := MustStart(t, nil, devArgs(t.TempDir(), testenv.PostgresURL(t))...)
	nc := connect(t, r.App.NATSURL)
	api := "http://" + r.App.HTTPAddr
	admin := r.App.cfg.AdminToken
	do := func(method, path, token string, body any, want int) map[string]any {
		t.Helper()
		status, out, _ := httpDo(t, method, api+path, token, body)
		if status != want {
			t.Fatalf("%s %s: HTTP %d, want %d: %v", method, path, status, want, out)
		}
		return out
	}
	code := func(out map[string]any) string { return errCode(out) }

	for _, p := range []string{"posts:read", "posts:write", "users:read", "billing:read"} {
		mustOK(t, request(t, nc, "keyd.cmd.permissions.define", map[string]string{"slug": p, "description": p}))
	}

	// Roles: NATS and HTTP.
	def := mustOK(t, request(t, nc, "keyd.cmd.roles.define", map[string]any{"slug": "editor", "description": "Edits posts", "permissions": []string{"posts:write", "posts:read"}}))
	if role := def["role"].(map[string]any); role["status"] != "active" || !slices.Equal(strs(role["permissions"]), []string{"posts:read", "posts:write"}) {
		t.Fatalf("roles.define reply: %v", def)
	}
	do("PUT", "/v1/roles/viewer", admin, map[string]any{"description": "Reads users", "permissions": []string{"users:read"}}, 200)
	bad := request(t, nc, "keyd.cmd.roles.define", map[string]any{"slug": "x", "description": "", "permissions": []string{"posts:delete"}})
	if code(bad) != "invalid_argument" {
		t.Errorf("a role with an undefined permission: %v", bad)
	}

	// Create: a user-owned key over NATS with roles and resources, an org
	// key over HTTP, an owner mismatch.
	alice := map[string]string{"type": "user", "id": "alice@example.com"}
	ak := mustOK(t, request(t, nc, "keyd.cmd.keys.acme.create", map[string]any{"name": "Alice laptop", "owner": alice,
		"permissions": []string{"billing:read"}, "roles": []string{"editor", "viewer"}, "resources": []string{"project:p2", "project:p1"}}))
	aliceKey, aliceSecret := keyOf(ak)["id"].(string), ak["secret"].(string)
	if k := keyOf(ak); k["owner"].(map[string]any)["id"] != "alice@example.com" || !slices.Equal(strs(k["roles"]), []string{"editor", "viewer"}) ||
		!slices.Equal(strs(k["resources"]), []string{"project:p1", "project:p2"}) {
		t.Fatalf("create reply: %v", k)
	}
	exp := time.Now().Add(48 * time.Hour).UTC().Format(time.RFC3339)
	ok := do("POST", "/v1/orgs/acme/keys", admin, map[string]any{"name": "CI deploy", "permissions": []string{"posts:read"}, "expires_at": exp}, 201)
	orgKey := keyOf(ok)["id"].(string)
	bk := do("POST", "/v1/orgs/acme/keys", admin, map[string]any{"name": "Bob phone", "owner": map[string]string{"type": "user", "id": "bob"}}, 201)
	bobKey, bobSecret := keyOf(bk)["id"].(string), bk["secret"].(string)
	mism := request(t, nc, "keyd.cmd.keys.acme.create", map[string]any{"name": "x", "owner": map[string]string{"type": "organization", "id": "other"}})
	if code(mism) != "invalid_argument" {
		t.Errorf("organization owner mismatch: %v", mism)
	}

	// Verify: effective permissions and active roles; resources.
	v := do("POST", "/v1/keys/verify", admin, map[string]any{"key": aliceSecret}, 200)
	if vk := v["key"].(map[string]any); !slices.Equal(strs(vk["permissions"]), []string{"billing:read", "posts:read", "posts:write", "users:read"}) ||
		!slices.Equal(strs(vk["roles"]), []string{"editor", "viewer"}) || !slices.Equal(strs(vk["resources"]), []string{"project:p1", "project:p2"}) {
		t.Fatalf("verify key: %v", vk)
	}
	for _, c := range []struct {
		resource string
		perms    []string
		code     string
	}{
		{"project:p1", []string{"posts:write"}, "valid"},
		{"project:p3", nil, "resource_not_allowed"},
		{"bucket:b1", nil, "valid"},
		{"", []string{"users:read"}, "valid"},
	} {
		body := map[string]any{"key": aliceSecret, "permissions": c.perms}
		if c.resource != "" {
			body["resource"] = c.resource
		}
		if got := do("POST", "/v1/keys/verify", admin, body, 200)["code"]; got != c.code {
			t.Errorf("verify resource %q perms %v: %v, want %s", c.resource, c.perms, got, c.code)
		}
	}

	// A role change reaches this process's verifier before its reply.
	mustOK(t, request(t, nc, "keyd.cmd.roles.define", map[string]any{"slug": "editor", "description": "Reads posts", "permissions": []string{"posts:read"}}))
	if got := do("POST", "/v1/keys/verify", admin, map[string]any{"key": aliceSecret, "permissions": []string{"posts:write"}}, 200)["code"]; got != "insufficient_permissions" {
		t.Errorf("right after redefining editor: %v, want insufficient_permissions", got)
	}
	rseq := do("DELETE", "/v1/roles/viewer", admin, nil, 200)["sequence"]
	v = do("POST", "/v1/keys/verify", admin, map[string]any{"key": aliceSecret}, 200)
	if vk := v["key"].(map[string]any); !slices.Equal(strs(vk["roles"]), []string{"editor"}) || slices.Contains(strs(vk["permissions"]), "users:read") {
		t.Errorf("after retiring viewer: %v", vk)
	}
	roles := do("GET", fmt.Sprintf("/v1/roles?min_sequence=%v", rseq), admin, nil, 200)
	if len(roles["data"].([]any)) != 2 {
		t.Errorf("GET /v1/roles: %v", roles)
	}

	// set_permissions over NATS and HTTP: roles and resources.
	sp := mustOK(t, request(t, nc, "keyd.cmd.keys.acme.set_permissions", map[string]any{"key_id": orgKey, "roles": []string{"editor"}}))
	if k := keyOf(sp); !slices.Equal(strs(k["roles"]), []string{"editor"}) || !slices.Equal(strs(k["permissions"]), []string{"posts:read"}) {
		t.Errorf("set_permissions roles: %v", k)
	}
	seq := do("PUT", "/v1/orgs/acme/keys/"+orgKey+"/permissions", admin, map[string]any{"resources": []string{"repo:keyd/api"}}, 200)["sequence"]

	// Listing filters.
	list := func(q url.Values) []string {
		t.Helper()
		q.Set("min_sequence", fmt.Sprint(seq))
		return ids(do("GET", "/v1/orgs/acme/keys?"+q.Encode(), admin, nil, 200))
	}
	for _, c := range []struct {
		q    url.Values
		want []string
	}{
		{url.Values{"owner_type": {"user"}}, []string{bobKey, aliceKey}},
		{url.Values{"owner_type": {"organization"}}, []string{orgKey}},
		{url.Values{"owner_id": {"alice@example.com"}}, []string{aliceKey}},
		{url.Values{"q": {"LAPTOP"}}, []string{aliceKey}},
		{url.Values{"q": {bk["key"].(map[string]any)["mask"].(string)[len("sk_…"):]}}, []string{bobKey}},
		{url.Values{"permission": {"posts:read"}}, []string{orgKey, aliceKey}}, // through the editor role, and own
		{url.Values{"permission": {"users:read"}}, nil},                        // viewer retired
		{url.Values{"expires_before": {time.Now().Add(72 * time.Hour).UTC().Format(time.RFC3339)}}, []string{orgKey}},
		{url.Values{"owner_type": {"user"}, "status": {"active"}, "q": {"phone"}}, []string{bobKey}},
	} {
		if got := list(c.q); !slices.Equal(got, c.want) {
			t.Errorf("list %v = %v, want %v", c.q, got, c.want)
		}
	}
	if out := do("GET", "/v1/orgs/acme/keys?owner_type=team", admin, nil, 400); code(out) != "invalid_argument" {
		t.Errorf("bad owner_type: %v", out)
	}

	// Widget sessions of both scopes.
	sess := func(user, scope string) string {
		body := map[string]any{"org_id": "acme", "user_id": user}
		if scope != "" {
			body["scope"] = scope
		}
		return do("POST", "/v1/widget/sessions", admin, body, 200)["token"].(string)
	}
	aliceTok, orgTok := sess("alice@example.com", "user"), sess("admin_1", "")
	if s := do("GET", "/v1/widget/session", aliceTok, nil, 200); s["scope"] != "user" {
		t.Errorf("GET /v1/widget/session: %v", s)
	}
	if got := ids(do("GET", "/v1/orgs/acme/keys", aliceTok, nil, 200)); !slices.Equal(got, []string{aliceKey}) {
		t.Errorf("a user-scope session lists %v, want only its own key", got)
	}
	if got := ids(do("GET", "/v1/orgs/acme/keys?owner_id=bob", aliceTok, nil, 200)); len(got) != 0 {
		t.Errorf("a user-scope session asking for bob's keys gets %v", got)
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/v1/orgs/acme/keys/" + bobKey},
		{"PATCH", "/v1/orgs/acme/keys/" + bobKey},
		{"POST", "/v1/orgs/acme/keys/" + bobKey + "/revoke"},
		{"PUT", "/v1/orgs/acme/keys/" + bobKey + "/permissions"},
		{"POST", "/v1/orgs/acme/keys/" + bobKey + "/rotate"},
		{"GET", "/v1/orgs/acme/keys/" + orgKey},
	} {
		body := map[string]any{"permissions": []string{}}
		switch c.method {
		case "GET":
			body = nil
		case "POST":
			if c.path[len(c.path)-6:] == "revoke" {
				body = map[string]any{}
			} else {
				body = map[string]any{"grace_period_seconds": 0}
			}
		case "PATCH":
			body = map[string]any{"name": "mine now"}
		}
		if out := do(c.method, c.path, aliceTok, body, 404); code(out) != "not_found" {
			t.Errorf("user scope %s %s: %v", c.method, c.path, out)
		}
	}
	if got := do("POST", "/v1/keys/verify", admin, map[string]any{"key": bobSecret}, 200)["code"]; got != "valid" {
		t.Errorf("bob's key after alice's attempts: %v", got)
	}
	own := do("POST", "/v1/orgs/acme/keys", aliceTok, map[string]any{"name": "Alice CLI"}, 201)
	if keyOf(own)["owner"].(map[string]any)["id"] != "alice@example.com" {
		t.Errorf("a user-scope create: %v", keyOf(own))
	}
	if out := do("POST", "/v1/orgs/acme/keys", aliceTok, map[string]any{"name": "x", "owner": map[string]string{"type": "user", "id": "bob"}}, 403); code(out) != "permission_denied" {
		t.Errorf("a user-scope create for bob: %v", out)
	}
	// Organization scope: sees members' keys, cannot change them, may revoke them.
	if got := ids(do("GET", "/v1/orgs/acme/keys?owner_id=bob", orgTok, nil, 200)); !slices.Equal(got, []string{bobKey}) {
		t.Errorf("an organization-scope session filtering by owner: %v", got)
	}
	if out := do("PATCH", "/v1/orgs/acme/keys/"+bobKey, orgTok, map[string]any{"name": "x"}, 403); code(out) != "permission_denied" {
		t.Errorf("an organization-scope session changing a member's key: %v", out)
	}
	if out := do("POST", "/v1/orgs/acme/keys", orgTok, map[string]any{"name": "x", "owner": alice}, 403); code(out) != "permission_denied" {
		t.Errorf("an organization-scope session creating a member's key: %v", out)
	}
	do("POST", "/v1/orgs/acme/keys/"+bobKey+"/revoke", orgTok, map[string]any{}, 200)
	if got := do("POST", "/v1/keys/verify", admin, map[string]any{"key": bobSecret}, 200)["code"]; got != "revoked" {
		t.Errorf("bob's key after an org-scope revoke: %v", got)
	}

	// Offboarding: revoke_user_keys over NATS, then over HTTP (nothing more).
	ru := mustOK(t, request(t, nc, "keyd.cmd.keys.acme.revoke_user_keys", map[string]any{"user_id": "alice@example.com", "reason": "offboarded"}))
	if got := strs(ru["revoked"]); len(got) != 2 || !slices.Contains(got, aliceKey) || !slices.Contains(got, keyOf(own)["id"].(string)) {
		t.Errorf("revoke_user_keys: %v", ru)
	}
	if got := do("POST", "/v1/keys/verify", admin, map[string]any{"key": aliceSecret}, 200)["code"]; got != "revoked" {
		t.Errorf("right after revoke_user_keys: %v, want revoked", got)
	}
	again := do("POST", "/v1/orgs/acme/users/alice@example.com/keys/revoke", admin, map[string]any{}, 200)
	if got, ok := again["revoked"].([]any); !ok || len(got) != 0 || again["sequence"].(float64) < 1 {
		t.Errorf("revoke_user_keys again: %v", again)
	}
	if out := do("POST", "/v1/orgs/acme/users/alice@example.com/keys/revoke", orgTok, map[string]any{}, 403); code(out) != "permission_denied" {
		t.Errorf("revoke_user_keys with a widget session: %v", out)
	}
	if got := do("POST", "/v1/keys/verify", admin, map[string]any{"key": ok["secret"].(string)}, 200)["code"]; got != "valid" {
		t.Errorf("the organization's key after offboarding alice: %v", got)
	}
}
