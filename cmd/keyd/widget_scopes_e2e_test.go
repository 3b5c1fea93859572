package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestWidgetScopesInBrowser drives the widget with sessions of both scopes
// in headless Chromium against a real keyd dev: a member creates a key in
// user scope, an admin sees it from organization scope in the Owner column,
// filters by owner and by search (keyboard only), pages through 10 keys a
// page, the member grants the key a role and a resource, and the key is
// verified with and without the resource. Screenshots are kept as in
// TestWidgetInBrowser.
func TestWidgetScopesInBrowser(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the widget browser test needs Chromium at %s (%v)", chromiumPath, err)
	}
	shots, err := os.MkdirTemp("", "keyd-widget-scopes-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots: %s", shots)
	r := MustStart(t, nil, devArgs(t.TempDir(), testenv.PostgresURL(t))...)
	api := "http://" + r.App.HTTPAddr
	admin := func(method, path string, body any) map[string]any {
		t.Helper()
		status, out, _ := httpDo(t, method, api+path, r.App.cfg.AdminToken, body)
		if status/100 != 2 {
			t.Fatalf("%s %s: HTTP %d %v", method, path, status, out)
		}
		return out
	}
	admin("PUT", "/v1/permissions/posts:read", map[string]string{"description": "Read posts"})
	admin("PUT", "/v1/permissions/posts:write", map[string]string{"description": "Write posts"})
	admin("PUT", "/v1/roles/editor", map[string]any{"description": "Edits posts", "permissions": []string{"posts:write"}})
	// Eleven organization keys: two pages.
	var orgKeys []string
	for i := range 11 {
		k := admin("POST", "/v1/orgs/acme/keys", map[string]any{"name": fmt.Sprintf("Service %02d", i+1), "permissions": []string{"posts:read"}})
		orgKeys = append(orgKeys, keyOf(k)["id"].(string))
	}
	session := func(user, scope string) string {
		t.Helper()
		s := admin("POST", "/v1/widget/sessions", map[string]any{"org_id": "acme", "user_id": user, "scope": scope, "ttl_seconds": 600})
		return s["token"].(string)
	}
	host := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = hostPage.Execute(w, map[string]string{"API": api, "Token": req.URL.Query().Get("session")})
	}))
	t.Cleanup(host.Close)
	hostURL := strings.Replace(host.URL, "127.0.0.1", "localhost", 1) + "/settings"
	b := startBrowser(t, shots)
	ids := `[...root.querySelectorAll('tbody tr[data-key-id]')].map((r) => r.getAttribute('data-key-id'))`

	// A member, in user scope: an empty list of their own keys; create one.
	alice := session("alice", "user")
	b.navigate(hostURL + "?session=" + alice)
	b.waitFor("the user-scope list", `return visible(byText('h2', 'Your API keys')) && visible(byText('strong', 'No API keys yet')) &&
		![...root.querySelectorAll('th')].some((th) => norm(th.textContent) === 'Owner');`)
	b.shot("user-scope-empty")
	b.click("Create API key", `button('Create API key')`)
	b.waitFor("the create dialog with roles and resources", `return dialog() && field('Name') && field('Resources') && label('editor') && label('posts:read');`)
	b.click("the Name field", `field('Name')`)
	b.typeText("Alice laptop")
	b.click("the posts:read checkbox", `label('posts:read')`)
	b.shot("user-scope-create")
	b.click("Create", `button('Create')`)
	secret := b.waitString("the new secret", `const i = root.querySelector('dialog[open] [data-secret]'); return i && i.value.startsWith('sk_') ? i.value : false;`)
	b.click("Done", `button('Done')`)
	var aliceKey string
	b.poll("alice's key in her list", `const l = `+ids+`; return !dialog() && l.length === 1 ? l[0] : false;`, &aliceKey)
	eventually(t, 5e9, "the key created in user scope is alice's", func() (bool, string) {
		status, k, _ := httpDo(t, "GET", api+"/v1/orgs/acme/keys/"+aliceKey, r.App.cfg.AdminToken, nil)
		o, _ := k["owner"].(map[string]any)
		return status == 200 && o["id"] == "alice" && o["type"] == "user", fmt.Sprint(k)
	})
	b.shot("user-scope-list")
	b.assertSecretGone(secret)

	// An admin, in organization scope: the Owner column, 10 keys a page.
	b.navigate(hostURL + "?session=" + session("admin_1", "organization"))
	b.waitFor("page 1 with 10 keys and an Owner column", `return `+ids+`.length === 10 &&
		[...root.querySelectorAll('th')].some((th) => norm(th.textContent) === 'Owner') && visible(button('Next page')) &&
		button('Previous page').disabled && norm(root.querySelector('.pageinfo').textContent) === 'Page 1';`)
	b.waitFor("alice's key first, owned by alice, with only Revoke, Suspend and Details", fmt.Sprintf(`const r = row(%s);
		return r && norm(r.querySelector('td.owner').textContent) === 'alice' &&
			[...r.querySelectorAll('button')].map((b) => norm(b.textContent)).join() === 'Revoke,Suspend,Details';`, jsString(aliceKey)))
	b.shot("org-scope-page-1")
	// The organization may suspend a member's key (issue 13 beside issue
	// 12's scopes), not resume it or change it.
	b.click("Suspend alice's key", fmt.Sprintf(`button('Suspend', %s)`, jsString(aliceKey)))
	b.waitFor("the suspend dialog", `return dialog() && field('Reason') && root.activeElement === field('Reason');`)
	b.typeText("Access review")
	b.click("Suspend key", `button('Suspend key')`)
	b.waitFor("alice's key suspended, with only Revoke and Details", fmt.Sprintf(`return !dialog() && statusOf(%s) === 'Suspended' &&
		[...row(%[1]s).querySelectorAll('button')].map((b) => norm(b.textContent)).join() === 'Revoke,Details';`, jsString(aliceKey)))
	b.shot("org-scope-member-key-suspended")
	b.click("Details of alice's key", fmt.Sprintf(`button('Details', %s)`, jsString(aliceKey)))
	b.waitFor("the details: owner alice, the suspend in the history", `const d = dialog(); return d && d.querySelector('.history table') &&
		norm(d.querySelector('.facts').textContent).includes('OwnerUser alice') &&
		[...d.querySelectorAll('.history td.ev')].map((td) => norm(td.textContent)).join() === 'Created,Suspended';`)
	b.shot("org-scope-member-key-details")
	b.click("Close", `button('Close')`)
	b.waitFor("the details closed", `return !dialog();`)
	b.click("Next page", `button('Next page')`)
	b.waitFor("page 2 with the 2 oldest keys", fmt.Sprintf(`const l = `+ids+`;
		return l.length === 2 && l[1] === %s && norm(root.querySelector('.pageinfo').textContent) === 'Page 2' && root.activeElement && norm(root.activeElement.textContent) === 'Previous page';`, // Next is disabled on the last page
		jsString(orgKeys[0])))
	b.shot("org-scope-page-2")
	b.click("Previous page", `byText('button', 'Previous page')`)
	b.waitFor("page 1 again", `return `+ids+`.length === 10 && norm(root.querySelector('.pageinfo').textContent) === 'Page 1';`)

	// Filter by owner: one member.
	b.selectOption("Owner", "One member…")
	b.waitFor("the member field has the focus", `return field('Member user id') && root.activeElement === field('Member user id');`)
	b.typeText("alice")
	b.typeText("\r") // Enter submits the search form
	b.waitFor("only alice's key", fmt.Sprintf(`const l = `+ids+`; return l.length === 1 && l[0] === %s && !root.querySelector('.pager');`, jsString(aliceKey)))
	b.shot("org-scope-owner-filter")
	b.click("Clear filters", `button('Clear filters')`)
	b.waitFor("the filters cleared", `return `+ids+`.length === 10 && field('Owner').value === '';`)

	// Keyboard only: from Create API key, Tab reaches the search box; type and press Enter.
	b.eval("focus Create API key", `button('Create API key').focus(); return true;`, nil)
	b.typeText("\t")
	b.waitFor("Tab moves to the search box", `return root.activeElement === field('Search keys');`)
	b.typeText("service 1")
	b.typeText("\r")
	b.waitFor("the search finds Service 10 and 11", `const l = `+ids+`; return l.length === 2 && [...root.querySelectorAll('tbody th')].every((th) => norm(th.textContent).startsWith('Service 1'));`)
	b.shot("org-scope-search")

	// The member grants a role and a resource to their key.
	b.navigate(hostURL + "?session=" + alice)
	b.waitFor("alice's list, her key suspended", fmt.Sprintf(`return !!row(%s) && statusOf(%[1]s) === 'Suspended';`, jsString(aliceKey)))
	b.click("Resume", fmt.Sprintf(`button('Resume', %s)`, jsString(aliceKey)))
	b.waitFor("the resume dialog", `return dialog() && button('Resume key');`)
	b.click("Resume key", `button('Resume key')`)
	b.waitFor("alice's key active again", fmt.Sprintf(`return !dialog() && statusOf(%s) === 'Active';`, jsString(aliceKey)))
	b.click("Edit permissions", fmt.Sprintf(`button('Edit permissions', %s)`, jsString(aliceKey)))
	b.waitFor("the edit dialog", `return dialog() && field('posts:read') && field('posts:read').checked && field('editor') && !field('editor').checked && field('Resources');`)
	b.click("the editor role", `label('editor')`)
	b.click("the Resources field", `field('Resources')`)
	b.typeText("project:p1")
	b.shot("user-scope-edit-role-resource")
	b.click("Save", `button('Save')`)
	b.waitFor("the list shows the role and the resource", fmt.Sprintf(`const r = row(%s);
		return !dialog() && r && norm(r.querySelector('.rolechip').textContent) === 'Role editor' && norm(r.querySelector('.reschip').textContent) === 'Resource project:p1';`, jsString(aliceKey)))
	b.shot("user-scope-role-resource-saved")

	// Verify with and without the resource.
	verify := func(body map[string]any) map[string]any { return admin("POST", "/v1/keys/verify", body) }
	for _, c := range []struct {
		body map[string]any
		code string
	}{
		{map[string]any{"key": secret, "permissions": []string{"posts:write"}}, "valid"}, // through the role
		{map[string]any{"key": secret, "resource": "project:p1"}, "valid"},
		{map[string]any{"key": secret, "resource": "project:p2"}, "resource_not_allowed"},
		{map[string]any{"key": secret, "resource": "bucket:b1"}, "valid"},
	} {
		eventually(t, 5e9, fmt.Sprintf("verify %v says %s", c.body, c.code), func() (bool, string) {
			v := verify(c.body)
			return v["code"] == c.code, fmt.Sprint(v)
		})
	}
	b.checkNoExceptions()
}
