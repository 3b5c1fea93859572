package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestWidgetLifecycleInBrowser drives the widget's lifecycle controls in
// headless Chromium against a real keyd dev, under an organization policy
// (max lifetime 90 days, two allowed permissions): the create dialog offers
// only what the policy allows; suspend with a reason; resume with the
// keyboard alone; edit the expiration; open the key's details and history.
// Each step is checked through keyd's admin API too. Screenshots are kept in
// a temporary directory whose path is logged.
func TestWidgetLifecycleInBrowser(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the widget browser test needs Chromium at %s (%v); install it with `apt-get install -y chromium` (scripts/test.sh does this)", chromiumPath, err)
	}
	shots, err := os.MkdirTemp("", "keyd-widget-lifecycle-")
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
	const org = "globex"
	admin("PUT", "/v1/permissions/posts:read", map[string]string{"description": "Read posts"})
	admin("PUT", "/v1/permissions/posts:write", map[string]string{"description": "Write posts"})
	admin("PUT", "/v1/permissions/admin:all", map[string]string{"description": "Everything"})
	const maxLifetime = 90 * 24 * 3600
	admin("PUT", "/v1/orgs/"+org+"/policy", map[string]any{
		"max_lifetime_seconds": maxLifetime, "allowed_permissions": []string{"posts:read", "posts:write"},
	})
	s := admin("POST", "/v1/widget/sessions", map[string]any{"org_id": org, "user_id": "user_7"})
	token, _ := s["token"].(string)

	host := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		if err := hostPage.Execute(w, map[string]string{"API": api, "Token": req.URL.Query().Get("session")}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	t.Cleanup(host.Close)
	b := startBrowser(t, shots)
	b.navigate(strings.Replace(host.URL, "127.0.0.1", "localhost", 1) + "/settings?session=" + token)
	b.waitFor("the empty list", `return visible(byText('strong', 'No API keys yet'));`)

	// The create dialog offers only what the policy allows.
	b.click("Create API key", `button('Create API key')`)
	b.waitFor("the create dialog under the policy", `
		const opts = field('Expires') && [...field('Expires').options].map((o) => norm(o.textContent)).join('|');
		return opts === '30 days|90 days' && field('posts:read') && field('posts:write') && !label('admin:all') &&
			norm(dialog().querySelector('[data-policy-note]').textContent) === 'Your organization allows keys to last at most 90 days.';`)
	b.shot("create-under-policy")
	b.click("the Name field", `field('Name')`)
	b.typeText("Billing sync")
	b.click("the posts:read checkbox", `label('posts:read')`)
	b.click("Create", `button('Create')`)
	b.waitString("the new secret", `const i = root.querySelector('dialog[open] [data-secret]'); return i && i.value ? 'shown' : false;`)
	b.click("Done", `button('Done')`)
	var keyID string
	b.poll("the new key's row", `const r = root.querySelector('tbody tr[data-key-id]'); return !dialog() && r ? r.getAttribute('data-key-id') : false;`, &keyID)
	k := admin("GET", "/v1/orgs/"+org+"/keys/"+keyID, nil)
	if exp, err := time.Parse(time.RFC3339, fmt.Sprint(k["expires_at"])); err != nil || exp.Sub(time.Now().Add(30*24*time.Hour)).Abs() > time.Hour {
		t.Fatalf("created key expires at %v, want in 30 days", k["expires_at"])
	}
	id := jsString(keyID)

	// Suspend, with a reason.
	b.click("Suspend", fmt.Sprintf(`button('Suspend', %s)`, id))
	b.waitFor("the suspend dialog, its reason field focused", `return dialog() && norm(dialog().querySelector('h3').textContent) === 'Suspend API key' &&
		field('Reason') && root.activeElement === field('Reason');`)
	b.typeText("Unusual traffic from a new region")
	b.shot("suspend-reason")
	b.click("Suspend key", `button('Suspend key')`)
	b.waitFor("the row shows the key suspended, focus on Resume", fmt.Sprintf(`return !dialog() && statusOf(%s) === 'Suspended' &&
		button('Resume', %[1]s) && !button('Rotate', %[1]s) && !button('Suspend', %[1]s) &&
		root.activeElement === button('Resume', %[1]s);`, id))
	b.shot("suspended")
	if v := admin("POST", "/v1/keys/verify", map[string]string{"key": "sk_x"}); v["code"] != "malformed" {
		t.Fatalf("verify sanity: %v", v)
	}
	evs := admin("GET", "/v1/orgs/"+org+"/events", nil)["data"].([]any)
	last := evs[len(evs)-1].(map[string]any)
	if last["type"] != "key.suspended" || last["data"].(map[string]any)["reason"] != "Unusual traffic from a new region" ||
		last["actor"].(map[string]any)["id"] != "user_7" {
		t.Fatalf("the last event: %v", last)
	}

	// Resume with the keyboard alone: Enter on the focused Resume button,
	// then Enter on the dialog's focused "Resume key".
	b.press(kb.Enter)
	b.waitFor("the resume dialog, its submit focused", `return dialog() && norm(dialog().querySelector('h3').textContent) === 'Resume API key' &&
		root.activeElement === button('Resume key');`)
	b.shot("resume-confirm")
	b.press(kb.Enter)
	b.waitFor("the row shows the key active again, focus on Suspend", fmt.Sprintf(`return !dialog() && statusOf(%s) === 'Active' &&
		root.activeElement === button('Suspend', %[1]s);`, id))
	if k := admin("GET", "/v1/orgs/"+org+"/keys/"+keyID, nil); k["status"] != "active" || k["version"] != 3.0 {
		t.Fatalf("after resume: %v", k)
	}

	// Edit expiration: the policy's choices only (no "No expiration").
	b.click("Edit expiration", fmt.Sprintf(`button('Edit expiration', %s)`, id))
	b.waitFor("the expiration dialog", `const s = field('New expiration');
		return dialog() && s && [...s.options].map((o) => norm(o.textContent)).join('|') === '30 days|90 days|On a date…|Now (the key stops working at once)';`)
	b.selectOption("New expiration", "90 days")
	b.shot("edit-expiration")
	b.click("Save expiration", `button('Save expiration')`)
	b.waitFor("the dialog closes", `return !dialog();`)
	eventually(t, 5*time.Second, "the key expires in 90 days", func() (bool, string) {
		k := admin("GET", "/v1/orgs/"+org+"/keys/"+keyID, nil)
		exp, err := time.Parse(time.RFC3339, fmt.Sprint(k["expires_at"]))
		return err == nil && exp.Sub(time.Now().Add(maxLifetime*time.Second)).Abs() < 5*time.Minute && k["version"] == 4.0, fmt.Sprint(k)
	})
	b.shot("expiration-saved")

	// Details: the key's history, oldest first; Escape closes it and
	// focus returns to the Details button.
	b.click("Details", fmt.Sprintf(`button('Details', %s)`, id))
	b.waitFor("the details view with the history", `const d = dialog();
		if (!d || norm(d.querySelector('h3').textContent) !== 'Billing sync') return false;
		const evs = [...d.querySelectorAll('tbody tr[data-event]')].map((r) => r.getAttribute('data-event')).join(' ');
		return evs === 'key.created key.suspended key.resumed key.expiry_changed' &&
			norm(d.querySelector('tbody tr[data-event="key.suspended"]').textContent).includes('User user_7');`)
	b.shot("details-history")
	b.press(kb.Escape)
	b.waitFor("Escape closed the details, focus back on Details", fmt.Sprintf(`return !dialog() && root.activeElement === button('Details', %s);`, id))

	// The same history through the API.
	h := admin("GET", "/v1/orgs/"+org+"/keys/"+keyID+"/history", nil)
	var types []string
	for _, e := range h["data"].([]any) {
		types = append(types, fmt.Sprint(e.(map[string]any)["type"]))
	}
	if got := strings.Join(types, " "); got != "key.created key.suspended key.resumed key.expiry_changed" {
		t.Fatalf("history: %s", got)
	}
	b.checkNoExceptions()
}

// press presses key (a chromedp/kb constant) on the focused element.
func (b *browser) press(key string) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, chromedp.KeyEvent(key)); err != nil {
		b.fail("press "+key, err)
	}
}
