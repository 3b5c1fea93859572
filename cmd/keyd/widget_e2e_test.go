package main

import (
	"context"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// chromiumPath is where the browser test expects Debian's Chromium
// (scripts/test.sh installs it).
const chromiumPath = "/usr/bin/chromium"

// msgSessionExpired is what the widget says inline when its session has
// expired (MSG_SESSION in adapters/widget/keyd-api-keys.js).
const msgSessionExpired = "Your session has expired. Refresh the page to continue."

// hostPage is the settings page of a product that embeds the widget, served
// from an origin other than keyd's. It records every keyd-session-expired
// event the widget dispatches in window.keydExpired.
var hostPage = template.Must(template.New("host").Parse(`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Acme Cloud · Settings · API keys</title>
<style>
  body { margin: 0; background: #f6f7f9; font: 14px/1.45 system-ui, sans-serif; color: #1b1f27; }
  header { padding: 14px 24px; background: #fff; border-bottom: 1px solid #e2e5ea; font-weight: 700; }
  main { max-width: 1180px; margin: 24px auto; padding: 22px; background: #fff; border: 1px solid #e2e5ea; border-radius: 12px; }
  h1 { margin: 0 0 18px; font-size: 20px; }
</style>
<script>
  window.keydExpired = [];
  document.addEventListener('keyd-session-expired', function (e) {
    window.keydExpired.push(e.detail && e.detail.message);
  });
</script>
</head>
<body>
<header>Acme Cloud (host application)</header>
<main>
  <h1>Settings</h1>
  <script src="{{.API}}/widget/keyd-api-keys.js"></script>
  <keyd-api-keys session-token="{{.Token}}" api-base="{{.API}}"></keyd-api-keys>
</main>
</body>
</html>
`))

// TestWidgetInBrowser drives the <keyd-api-keys> widget in headless Chromium,
// embedded on a page of another origin, against a real keyd dev (embedded
// JetStream, real Postgres): create a key and see its secret once, edit its
// permissions, rotate it, revoke the new key, and run into an expired
// session. Each step is checked through keyd's admin API too. Screenshots of
// every state are kept in a temporary directory whose path is logged.
func TestWidgetInBrowser(t *testing.T) {
	t.Parallel()
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("the widget browser test needs Chromium at %s (%v); install it with `apt-get install -y chromium` (scripts/test.sh does this)", chromiumPath, err)
	}
	shots, err := os.MkdirTemp("", "keyd-widget-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots: %s", shots)

	// keyd dev, with two permissions in the catalog.
	data := t.TempDir()
	r := MustStart(t, nil, devArgs(data, testenv.PostgresURL(t))...)
	api := "http://" + r.App.HTTPAddr
	if !strings.HasPrefix(r.App.HTTPAddr, "127.0.0.1:") {
		t.Fatalf("keyd dev listens on %s, want 127.0.0.1", r.App.HTTPAddr)
	}
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
	session := func(ttl int) (string, time.Time) {
		t.Helper()
		body := map[string]any{"org_id": "acme", "user_id": "user_42"}
		if ttl > 0 {
			body["ttl_seconds"] = ttl
		}
		s := admin("POST", "/v1/widget/sessions", body)
		tok, _ := s["token"].(string)
		exp, err := time.Parse(time.RFC3339Nano, fmt.Sprint(s["expires_at"]))
		if tok == "" || err != nil {
			t.Fatalf("widget session reply: %v", s)
		}
		return tok, exp
	}
	verify := func(secret string) map[string]any {
		t.Helper()
		return admin("POST", "/v1/keys/verify", map[string]string{"key": secret})
	}
	// verifyValid waits for the verifier to have applied the key (it follows
	// the stream) and checks that the secret is valid.
	verifyValid := func(secret string) map[string]any {
		t.Helper()
		var v map[string]any
		eventually(t, 5*time.Second, "verify says valid", func() (bool, string) {
			v = verify(secret)
			return v["valid"] == true && v["code"] == "valid", fmt.Sprint(v)
		})
		return v
	}

	// The host application: another origin (localhost, not 127.0.0.1, and
	// another port).
	host := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := hostPage.Execute(w, map[string]string{"API": api, "Token": req.URL.Query().Get("session")}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	}))
	t.Cleanup(host.Close)
	hostURL := strings.Replace(host.URL, "127.0.0.1", "localhost", 1) + "/settings"

	b := startBrowser(t, shots)

	// The demo page of keyd dev, same origin, once.
	b.navigate(r.App.DemoURL) // the printed demo URL, with its one-time token
	b.waitFor("the demo page's widget shows its empty list",
		`return visible(byText('strong', 'No API keys yet')) && !!button('Create API key');`)
	b.shot("demo-page")

	// The host page with a fresh session: an empty list.
	tok, _ := session(0)
	b.navigate(hostURL + "?session=" + tok)
	b.waitFor("the widget shows its empty list", `return visible(byText('strong', 'No API keys yet'));`)
	var origin string
	b.eval("the page's origin", `return location.origin;`, &origin)
	if origin == api || !strings.HasPrefix(origin, "http://localhost:") {
		t.Fatalf("the host page's origin is %s; it must differ from keyd's %s", origin, api)
	}
	b.shot("empty")

	// Create a key: name, posts:read, expires in 30 days.
	b.click("Create API key", `button('Create API key')`)
	b.waitFor("the create dialog", `return dialog() && norm(dialog().querySelector('h3').textContent) === 'New API key';`)
	b.click("the Name field", `field('Name')`)
	b.typeText("CI deploy")
	b.click("the posts:read checkbox", `label('posts:read')`)
	b.selectOption("Expires", "30 days")
	b.waitFor("the form is filled in", `return field('Name').value === 'CI deploy' && field('posts:read').checked &&
		!field('posts:write').checked && field('Expires').value === '30d';`)
	b.shot("create-form")
	b.click("Create", `button('Create')`)
	secret1 := b.waitString("the new secret, shown once",
		`const i = root.querySelector('dialog[open] [data-secret]');
		 return i && i.readOnly && i.value.startsWith('sk_') && dialog().textContent.includes('It will not be shown again') ? i.value : false;`)
	b.shot("secret-shown")
	secrets := []string{secret1}
	v := verifyValid(secret1)
	k1 := v["key"].(map[string]any)
	keyID1, _ := k1["id"].(string)
	if k1["org_id"] != "acme" || k1["name"] != "CI deploy" || !sameStrings(k1["permissions"], "posts:read") {
		t.Fatalf("verify of the created key: %v", v)
	}
	if exp, err := time.Parse(time.RFC3339, fmt.Sprint(k1["expires_at"])); err != nil || exp.Sub(time.Now().Add(30*24*time.Hour)).Abs() > time.Hour {
		t.Fatalf("created key expires at %v, want in 30 days", k1["expires_at"])
	}

	// Done: the list shows the key masked, and the secret is gone from the page.
	b.click("Done", `button('Done')`)
	b.waitFor("the list shows the key, masked", fmt.Sprintf(`return !dialog() && maskOf(%s) === %s && statusOf(%[1]s) === 'Active' &&
		norm(row(%[1]s).querySelector('th').textContent) === 'CI deploy' && chipsOf(%[1]s) === 'posts:read';`,
		jsString(keyID1), jsString("sk_…"+secret1[len(secret1)-4:])))
	b.assertSecretGone(secret1)
	b.shot("list-masked")

	// Edit permissions: add posts:write.
	b.click("Edit permissions", fmt.Sprintf(`button('Edit permissions', %s)`, jsString(keyID1)))
	b.waitFor("the permissions dialog", `return dialog() && norm(dialog().querySelector('h3').textContent) === 'Permissions for CI deploy' &&
		field('posts:read') && field('posts:read').checked && !field('posts:write').checked;`)
	b.click("the posts:write checkbox", `label('posts:write')`)
	b.waitFor("both permissions checked", `return field('posts:read').checked && field('posts:write').checked;`)
	b.shot("edit-permissions")
	b.click("Save", `button('Save')`)
	b.waitFor("the list shows both permissions", fmt.Sprintf(`return !dialog() && chipsOf(%s) === 'posts:read posts:write';`, jsString(keyID1)))
	b.shot("permissions-saved")
	eventually(t, 5*time.Second, "the admin API shows both permissions", func() (bool, string) {
		k := admin("GET", "/v1/orgs/acme/keys/"+keyID1, nil)
		return sameStrings(k["permissions"], "posts:read", "posts:write") && k["version"] == 2.0, fmt.Sprint(k)
	})

	// Rotate with a one-hour grace period: a new secret, shown once.
	b.click("Rotate", fmt.Sprintf(`button('Rotate', %s)`, jsString(keyID1)))
	b.waitFor("the rotate dialog", `return dialog() && norm(dialog().querySelector('h3').textContent) === 'Rotate API key' &&
		field('Keep the old key working for');`)
	b.selectOption("Keep the old key working for", "1 hour")
	b.waitFor("the grace period is chosen", `return field('Keep the old key working for').value === '3600';`)
	b.shot("rotate-form")
	b.click("Rotate key", `button('Rotate key')`)
	secret2 := b.waitString("the rotated secret, shown once",
		`const i = root.querySelector('dialog[open] [data-secret]');
		 return i && i.value.startsWith('sk_') && dialog().textContent.includes('The previous key keeps working until') ? i.value : false;`)
	b.shot("rotated-secret-shown")
	secrets = append(secrets, secret2)
	if secret2 == secret1 {
		t.Fatal("rotate showed the old secret again")
	}
	v = verifyValid(secret2)
	k2 := v["key"].(map[string]any)
	keyID2, _ := k2["id"].(string)
	if keyID2 == keyID1 || k2["name"] != "CI deploy" || !sameStrings(k2["permissions"], "posts:read", "posts:write") {
		t.Fatalf("verify of the rotated key: %v", v)
	}
	if old := verify(secret1); old["valid"] != true {
		t.Fatalf("the old key should keep working for the grace period: %v", old)
	}
	b.click("Done", `button('Done')`)
	b.waitFor("the list shows the new key first and the old one still active", fmt.Sprintf(`
		const ids = [...root.querySelectorAll('tbody tr[data-key-id]')].map((r) => r.getAttribute('data-key-id'));
		return !dialog() && ids.length === 2 && ids[0] === %s && ids[1] === %s &&
			maskOf(%[1]s) === %[3]s && statusOf(%[1]s) === 'Active' && statusOf(%[2]s) === 'Active' &&
			row(%[2]s).textContent.includes('Expires soon');`,
		jsString(keyID2), jsString(keyID1), jsString("sk_…"+secret2[len(secret2)-4:])))
	b.assertSecretGone(secret1, secret2)
	b.shot("list-after-rotate")

	// Revoke the new key.
	b.click("Revoke", fmt.Sprintf(`button('Revoke', %s)`, jsString(keyID2)))
	b.waitFor("the revoke dialog", `return dialog() && norm(dialog().querySelector('h3').textContent) === 'Revoke API key';`)
	b.shot("revoke-confirm")
	b.click("Revoke key", `button('Revoke key')`)
	b.waitFor("the list shows the new key revoked", fmt.Sprintf(`return !dialog() && statusOf(%s) === 'Revoked' &&
		row(%[1]s).querySelectorAll('button').length === 0 && statusOf(%[2]s) === 'Active';`, jsString(keyID2), jsString(keyID1)))
	b.shot("revoked")
	// The widget shows the revoke once keyd has replied, and the process that
	// replied already refuses the key.
	if v := verify(secret2); v["valid"] != false || v["code"] != "revoked" {
		t.Fatalf("verify of the revoked key: %v", v)
	}

	// An expired session: the next action says so inline and the host page
	// hears keyd-session-expired.
	short, exp := session(1)
	b.navigate(hostURL + "?session=" + short)
	loaded := b.waitString("the list with the short session (or its expiry)", fmt.Sprintf(`
		if (row(%s) && row(%s)) return 'loaded';
		const banner = root && root.querySelector('.banner');
		return banner && norm(banner.textContent) === %s ? 'expired' : false;`,
		jsString(keyID1), jsString(keyID2), jsString(msgSessionExpired)))
	time.Sleep(time.Until(exp) + 100*time.Millisecond) // the one fixed wait: let the 1 s session expire
	if loaded == "loaded" {
		b.click("Create API key", `button('Create API key')`)
		b.click("the Name field", `field('Name')`)
		b.typeText("Too late")
		b.click("the posts:read checkbox", `label('posts:read')`)
		b.click("Create", `button('Create')`)
		b.waitFor("the expired-session message in the dialog", fmt.Sprintf(`
			const err = dialog() && dialog().querySelector('[data-err]');
			return err && norm(err.textContent) === %s && !root.querySelector('[data-secret]');`, jsString(msgSessionExpired)))
	} else {
		t.Logf("the 1 s session expired before the first list loaded; checking the list's message instead of an action's")
	}
	b.waitFor("keyd-session-expired reached the host page once", fmt.Sprintf(
		`return window.keydExpired.length === 1 && window.keydExpired[0] === %s;`, jsString(msgSessionExpired)))
	b.shot("session-expired")
	if list := admin("GET", "/v1/orgs/acme/keys?status=all", nil); len(list["data"].([]any)) != 2 {
		t.Fatalf("the expired session created a key: %v", list)
	}

	b.checkNoExceptions()

	// No secret in keyd's logs, nor in any byte it stored.
	r.Stop()
	assertNoSecrets(t, secrets, data, r.Stderr.String()+r.Stdout.String())
}

// browser is one headless Chromium tab driven through chromedp.
type browser struct {
	t       *testing.T
	ctx     context.Context
	shots   string
	n       int
	console *testenv.SyncBuffer
	mu      sync.Mutex
	thrown  []string
}

func startBrowser(t *testing.T, shots string) *browser {
	t.Helper()
	profile := t.TempDir() // removed after the browser has exited (cleanups run last-in, first-out)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(chromiumPath),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(profile),
		// Chromium's own temporary directories (org.chromium.Chromium.*)
		// go into the profile too, so they are removed with it.
		chromedp.Env("TMPDIR="+profile),
		chromedp.WindowSize(1280, 900),
	)
	t.Cleanup(cancelAlloc) // waits for the browser process to exit
	tab, cancelTab := chromedp.NewContext(alloc)
	t.Cleanup(cancelTab)

	b := &browser{t: t, ctx: tab, shots: shots, console: &testenv.SyncBuffer{}}
	messages := chromedp.Console(tab) // starts the browser
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			fmt.Fprintf(b.console, "%s %s\n", m.String(), m.URL)
			if m.IsException() {
				b.mu.Lock()
				b.thrown = append(b.thrown, m.Text)
				b.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("browser console:\n%s", b.console.String())
		}
	})
	if _, err := chromedp.Run(tab, chromedp.Evaluate[int](`1`)); err != nil {
		t.Fatalf("starting %s: %v", chromiumPath, err)
	}
	return b
}

// jsLib is prepended to every script: helpers that find the widget's
// elements through its open shadow root by their visible text.
const jsLib = `
const host = document.querySelector('keyd-api-keys');
const root = host && host.shadowRoot;
const norm = (s) => (s || '').replace(/\s+/g, ' ').trim();
const visible = (el) => !!el && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== 'hidden';
const dialog = () => { const d = root && root.querySelector('dialog'); return d && d.open ? d : null; };
const row = (keyId) => root && root.querySelector('tr[data-key-id="' + CSS.escape(keyId) + '"]');
const scope = (keyId) => keyId ? row(keyId) : (dialog() || root);
const byText = (sel, text, keyId) => {
	const s = root && scope(keyId);
	if (!s) return null;
	return [...s.querySelectorAll(sel)].find((el) => norm(el.textContent) === text && visible(el)) || null;
};
const button = (text, keyId) => byText('button', text, keyId);
const label = (text) => byText('label', text);
const field = (text) => { const l = label(text); return l ? (l.control || null) : null; };
const maskOf = (keyId) => { const r = row(keyId); return r ? norm(r.querySelector('code.mask').textContent) : null; };
const statusOf = (keyId) => { const r = row(keyId); return r ? norm(r.querySelector('.badge').textContent) : null; };
const chipsOf = (keyId) => { const r = row(keyId); return r ? [...r.querySelectorAll('.chip')].map((c) => c.textContent).join(' ') : null; };
`

// script wraps a function body that uses jsLib into an expression.
func script(body string) string {
	return "(() => {" + jsLib + "\n" + body + "\n})()"
}

// jsString is s as a JavaScript string literal.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// poll waits until body returns something truthy and decodes it into out.
func (b *browser) poll(what, body string, out any) {
	b.t.Helper()
	raw, err := chromedp.Run(b.ctx, chromedp.Poll[[]byte](script(body),
		chromedp.WithPollingInterval(25*time.Millisecond), chromedp.WithPollingTimeout(15*time.Second)))
	if err == nil && out != nil {
		err = json.Unmarshal(raw, out)
	}
	if err != nil {
		b.fail(what, err)
	}
}

func (b *browser) waitFor(what, body string) {
	b.t.Helper()
	b.poll(what, body, nil)
}

func (b *browser) waitString(what, body string) string {
	b.t.Helper()
	var s string
	b.poll(what, body, &s)
	return s
}

func (b *browser) eval(what, body string, out any) {
	b.t.Helper()
	raw, err := chromedp.Run(b.ctx, chromedp.Evaluate[[]byte](script(body)))
	if err == nil && out != nil {
		err = json.Unmarshal(raw, out)
	}
	if err != nil {
		b.fail(what, err)
	}
}

// fail ends the test with what the widget shows and a screenshot.
func (b *browser) fail(what string, err error) {
	b.t.Helper()
	var state string
	if raw, e := chromedp.Run(b.ctx, chromedp.Evaluate[string](script(
		`if (!root) return '(no widget on the page)';
		 const rows = [...root.querySelectorAll('tbody tr[data-key-id]')].map((r) =>
			r.getAttribute('data-key-id') + ' ' + norm(r.textContent));
		 return 'widget: ' + norm(root.querySelector('.root').textContent) +
			'\nrows:\n  ' + rows.join('\n  ') +
			'\ndialog: ' + (dialog() ? norm(dialog().textContent) : '(closed)');`))); e == nil {
		state = raw
	}
	b.shot("FAILED")
	b.t.Fatalf("%s: %v\n%s", what, err, state)
}

func (b *browser) navigate(url string) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, chromedp.Navigate(url)); err != nil {
		b.t.Fatalf("navigate to %s: %v", url, err)
	}
}

// click clicks, with the mouse, the element find (a jsLib expression)
// returns, once it is visible, enabled and not covered by anything else.
func (b *browser) click(what, find string) {
	b.t.Helper()
	var at struct{ X, Y float64 }
	b.poll("click "+what, `const el = (`+find+`);
		if (!el || !visible(el) || el.disabled) return false;
		el.scrollIntoView({block: 'center', inline: 'nearest'});
		const r = el.getBoundingClientRect();
		const x = r.left + r.width / 2, y = r.top + r.height / 2;
		const hit = root.elementFromPoint(x, y);
		if (!hit || !(hit === el || el.contains(hit))) return false;
		return {X: x, Y: y};`, &at)
	if err := chromedp.Do(b.ctx, chromedp.MouseClickXY(at.X, at.Y)); err != nil {
		b.fail("click "+what, err)
	}
}

// typeText types s with the keyboard into the focused element.
func (b *browser) typeText(s string) {
	b.t.Helper()
	if err := chromedp.Do(b.ctx, chromedp.KeyEvent(s)); err != nil {
		b.fail("type "+s, err)
	}
}

// selectOption picks the option shown as option in the select labelled
// label, as a change by the user would.
func (b *browser) selectOption(label, option string) {
	b.t.Helper()
	b.poll("choose "+option+" for "+label, fmt.Sprintf(`const s = field(%s);
		if (!s || s.tagName !== 'SELECT' || !visible(s)) return false;
		const o = [...s.options].find((o) => norm(o.textContent) === %s);
		if (!o) return false;
		s.focus();
		s.value = o.value;
		s.dispatchEvent(new Event('input', {bubbles: true}));
		s.dispatchEvent(new Event('change', {bubbles: true}));
		return true;`, jsString(label), jsString(option)), nil)
}

// shot saves a full-page screenshot as NN-name.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	b.n++
	if err := os.WriteFile(filepath.Join(b.shots, fmt.Sprintf("%02d-%s.png", b.n, name)), png, 0o644); err != nil {
		b.t.Errorf("screenshot %s: %v", name, err)
	}
}

// assertSecretGone checks that no secret is anywhere in the page: its markup,
// the widget's shadow DOM, the value of any input, or a string the element
// holds.
func (b *browser) assertSecretGone(secrets ...string) {
	b.t.Helper()
	var found []string
	b.eval("look for secrets in the page", fmt.Sprintf(`const secrets = %s;
		const places = {
			'document markup': document.documentElement.outerHTML,
			'shadow root markup': root.innerHTML,
			'page text': document.documentElement.textContent + ' ' + root.textContent,
			'input values': [...document.querySelectorAll('input, textarea'), ...root.querySelectorAll('input, textarea')]
				.map((i) => i.value).join(' '),
		};
		const held = [];
		for (const k of Object.keys(host)) {
			const v = host[k];
			if (typeof v === 'string') held.push(v);
			else if (v && typeof v === 'object' && !(v instanceof Node)) { try { held.push(JSON.stringify(v)); } catch (_) {} }
		}
		places['element properties'] = held.join(' ');
		const found = [];
		for (const s of secrets) for (const [where, text] of Object.entries(places)) {
			if (text.includes(s) || text.includes(s.slice(s.indexOf('_') + 1))) found.push(s.slice(0, 6) + '… in ' + where);
		}
		return found;`, mustJSON(secrets)), &found)
	if len(found) > 0 {
		b.shot("FAILED-secret-in-page")
		b.t.Fatalf("a secret is still in the page after the panel closed: %v", found)
	}
}

// checkNoExceptions fails the test if the page threw anything uncaught.
func (b *browser) checkNoExceptions() {
	b.t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.thrown) > 0 {
		b.t.Errorf("uncaught exceptions in the page: %q", b.thrown)
	}
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// sameStrings reports whether v (a decoded JSON array) holds exactly want,
// in any order.
func sameStrings(v any, want ...string) bool {
	arr, _ := v.([]any)
	got := make([]string, 0, len(arr))
	for _, x := range arr {
		s, _ := x.(string)
		got = append(got, s)
	}
	slices.Sort(got)
	want = slices.Clone(want)
	slices.Sort(want)
	return slices.Equal(got, want)
}

// eventually retries check until it holds or d has passed.
func eventually(t *testing.T, d time.Duration, what string, check func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, last := check()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, d, last)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
