package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestMain runs the tests, then removes the keyd binary mustBuild built
// (about 50 MB) and stops the private PostgreSQL server, if any.
func TestMain(m *testing.M) {
	code := m.Run()
	removeBuild()
	testenv.StopPrivatePostgres()
	os.Exit(code)
}

// running is a keyd process started by a test through the real Main.
type running struct {
	App    *App
	Stdout *testenv.SyncBuffer
	Stderr *testenv.SyncBuffer
	stop   func()
}

// MustStart runs `keyd <args>` through Main on free ports and returns once
// it is serving. The process is stopped at cleanup (or by r.Stop()).
func MustStart(t *testing.T, env map[string]string, args ...string) *running {
	t.Helper()
	r := &running{Stdout: &testenv.SyncBuffer{}, Stderr: &testenv.SyncBuffer{}}
	m := NewMain(r.Stdout, r.Stderr, func(k string) string { return env[k] })
	started := make(chan *App, 1)
	m.Started = func(a *App) { started <- a }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, args) }()
	select {
	case r.App = <-started:
	case err := <-done:
		cancel()
		t.Fatalf("keyd %v exited: %v\nstderr:\n%s", args, err, r.Stderr.String())
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatalf("keyd %v did not start in 60s\nstderr:\n%s", args, r.Stderr.String())
	}
	var once sync.Once
	r.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("keyd %v: %v", args, err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("keyd %v did not stop within 30s", args)
			}
		})
	}
	t.Cleanup(r.stop)
	return r
}

func (r *running) Stop() { r.stop() }

// devArgs are the arguments of a keyd dev on free ports.
func devArgs(data, dbURL string) []string {
	return []string{"dev", "--data", data, "--nats-listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--database-url", dbURL}
}

// request sends a NATS request and decodes the JSON reply.
func request(t *testing.T, nc *nats.Conn, subject string, payload any) map[string]any {
	t.Helper()
	var data []byte
	switch p := payload.(type) {
	case string:
		data = []byte(p)
	case []byte:
		data = p
	default:
		data, _ = json.Marshal(p)
	}
	msg, err := nc.Request(subject, data, 10*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	var out map[string]any
	if err := json.Unmarshal(msg.Data, &out); err != nil {
		t.Fatalf("reply to %s is not JSON: %q", subject, msg.Data)
	}
	return out
}

func errCode(reply map[string]any) string {
	e, _ := reply["error"].(map[string]any)
	c, _ := e["code"].(string)
	return c
}

func mustOK(t *testing.T, reply map[string]any) map[string]any {
	t.Helper()
	if c := errCode(reply); c != "" {
		t.Fatalf("unexpected error reply: %v", reply)
	}
	return reply
}

func keyOf(reply map[string]any) map[string]any {
	k, _ := reply["key"].(map[string]any)
	return k
}

func connect(t *testing.T, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// httpDo sends an HTTP request with the bearer token and decodes the reply.
func httpDo(t *testing.T, method, url, token string, body any) (int, map[string]any, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, url, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var out map[string]any
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, resp.Header
}

// TestDevEndToEnd drives the whole key lifecycle over NATS against the real
// keyd dev wiring, restarts it, and then checks that no issued secret is in
// any stored byte (JetStream files, Postgres rows, logs).
func TestDevEndToEnd(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	db := testenv.PostgresURL(t)
	r := MustStart(t, nil, devArgs(data, db)...)
	nc := connect(t, r.App.NATSURL)
	var secrets []string

	// Watch the audit stream of org_1 live, as a plain NATS subscriber.
	audit, err := nc.SubscribeSync("keyd.events.keys.org_1.>")
	if err != nil {
		t.Fatal(err)
	}

	// Each step needs the ones before it: the first that fails ends the
	// scenario.
	var secret, keyID string
	if !t.Run("define and create", func(t *testing.T) {
		mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"posts:read","description":"Read posts"}`))
		def := mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"posts:write","description":"Write posts"}`))
		if p, _ := def["permission"].(map[string]any); p["status"] != "active" || p["slug"] != "posts:write" {
			t.Fatalf("define reply: %v", def)
		}

		created := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.create", map[string]any{
			"name": "CI deploy", "permissions": []string{"posts:read"}, "metadata": map[string]string{"team": "infra"},
			"actor": map[string]string{"type": "user", "id": "user_7"},
		}))
		secret, _ = created["secret"].(string)
		if !strings.HasPrefix(secret, "sk_") {
			t.Fatalf("create reply has no secret: %v", created)
		}
		secrets = append(secrets, secret)
		k := keyOf(created)
		keyID, _ = k["id"].(string)
		for _, f := range []string{"id", "org_id", "name", "owner", "mask", "permissions", "status", "created_at", "expires_at", "revoked_at", "last_used_at", "metadata", "version"} {
			if _, ok := k[f]; !ok {
				t.Errorf("KeyView lacks %q: %v", f, k)
			}
		}
		if k["status"] != "active" || k["mask"] != "sk_…"+secret[len(secret)-4:] || k["version"] != 1.0 {
			t.Fatalf("created key: %v", k)
		}
		if created["sequence"].(float64) < 3 {
			t.Fatalf("sequence: %v", created["sequence"])
		}
	}) {
		return
	}

	if !t.Run("bad input gets a structured error and appends nothing", func(t *testing.T) {
		before, _ := r.App.Store.LastSequence(context.Background())
		for _, tc := range []struct{ subject, payload, code string }{
			{"keyd.cmd.keys.org_1.create", `{"name":`, "invalid_argument"},
			{"keyd.cmd.keys.org_1.create", `{"name":"x","bogus":1}`, "invalid_argument"},
			{"keyd.cmd.keys.org_1.create", `{"name":5}`, "invalid_argument"},
			{"keyd.cmd.keys.org_1.create", `{"name":"x","permissions":["posts:delete"]}`, "invalid_argument"},
			{"keyd.cmd.keys.org_1.create", `{"name":"x","expires_at":"2001-01-01T00:00:00Z"}`, "invalid_argument"},
			{"keyd.cmd.keys.org_1.explode", `{}`, "invalid_argument"},
			{"keyd.cmd.keys.org_1.revoke", `{"key_id":"nope"}`, "invalid_argument"},
			{"keyd.cmd.keys.org_1.revoke", `{"key_id":"key_01ARZ3NDEKTSV4RRFFQ69G5FAV"}`, "not_found"},
			{"keyd.cmd.keys.org_2.revoke", `{"key_id":"` + keyID + `"}`, "not_found"},
			{"keyd.cmd.keys.org_1.create", `{"name":"` + strings.Repeat("x", 70<<10) + `"}`, "too_large"},
			{"keyd.cmd.permissions.retire", `{"slug":"nope:nope"}`, "not_found"},
		} {
			if got := errCode(request(t, nc, tc.subject, tc.payload)); got != tc.code {
				t.Errorf("%s %.60s: code %q, want %q", tc.subject, tc.payload, got, tc.code)
			}
		}
		if after, _ := r.App.Store.LastSequence(context.Background()); after != before {
			t.Fatalf("bad commands appended events: %d -> %d", before, after)
		}
	}) {
		return
	}

	if !t.Run("set permissions, update, rotate, revoke", func(t *testing.T) {
		sp := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.set_permissions", map[string]any{"key_id": keyID, "permissions": []string{"posts:read", "posts:write"}, "expected_version": 1}))
		if keyOf(sp)["version"] != 2.0 {
			t.Fatalf("set_permissions: %v", sp)
		}
		if got := errCode(request(t, nc, "keyd.cmd.keys.org_1.set_permissions", map[string]any{"key_id": keyID, "permissions": []string{}, "expected_version": 1})); got != "conflict" {
			t.Fatalf("stale expected_version: %q", got)
		}
		up := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.update", map[string]any{"key_id": keyID, "name": "CI deploy (prod)"}))
		if keyOf(up)["name"] != "CI deploy (prod)" {
			t.Fatalf("update: %v", up)
		}
		rot := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.rotate", map[string]any{"key_id": keyID, "grace_period_seconds": 3600}))
		newSecret, _ := rot["secret"].(string)
		secrets = append(secrets, newSecret)
		newKey := keyOf(rot)
		prev, _ := rot["previous"].(map[string]any)
		if newSecret == "" || newSecret == secret || newKey["name"] != "CI deploy (prod)" || prev["expires_at"] == nil || prev["id"] != keyID {
			t.Fatalf("rotate: %v", rot)
		}
		rev := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.revoke", map[string]any{"key_id": keyID, "reason": "rotated out"}))
		if keyOf(rev)["status"] != "revoked" {
			t.Fatalf("revoke: %v", rev)
		}
		rev2 := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.revoke", map[string]any{"key_id": keyID}))
		if rev2["sequence"] != rev["sequence"] {
			t.Fatalf("second revoke appended: %v vs %v", rev2["sequence"], rev["sequence"])
		}
		if got := errCode(request(t, nc, "keyd.cmd.keys.org_1.rotate", map[string]any{"key_id": keyID, "grace_period_seconds": 0})); got != "failed_precondition" {
			t.Fatalf("rotate revoked key: %q", got)
		}
	}) {
		return
	}

	if !t.Run("the audit stream delivered every key event of org_1, in order", func(t *testing.T) {
		wantTypes := []string{"key.created", "key.permissions_changed", "key.updated", "key.created", "key.rotated", "key.revoked"}
		var gotTypes []string
		for range wantTypes {
			m, err := audit.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("audit stream after %v: %v", gotTypes, err)
			}
			gotTypes = append(gotTypes, m.Header.Get("Keyd-Event-Type"))
			var env map[string]any
			if err := json.Unmarshal(m.Data, &env); err != nil || env["type"] != m.Header.Get("Keyd-Event-Type") {
				t.Fatalf("audit event: %s", m.Data)
			}
		}
		if strings.Join(gotTypes, ",") != strings.Join(wantTypes, ",") {
			t.Fatalf("audit types %v, want %v", gotTypes, wantTypes)
		}
	}) {
		return
	}

	// Idempotency keys hold across a restart.
	idem := map[string]any{"name": "once", "idempotency_key": "req-42"}
	var first map[string]any
	if !t.Run("an idempotency key repeats the create", func(t *testing.T) {
		first = mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.create", idem))
		secrets = append(secrets, first["secret"].(string))
		again := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.create", idem))
		if keyOf(again)["id"] != keyOf(first)["id"] || again["secret"] != nil {
			t.Fatalf("idempotent create: %v vs %v", again, first)
		}
	}) {
		return
	}
	r.Stop()
	r2 := MustStart(t, nil, devArgs(data, db)...)
	nc2 := connect(t, r2.App.NATSURL)
	if !t.Run("after a restart the key and the kept admin token hold", func(t *testing.T) {
		third := mustOK(t, request(t, nc2, "keyd.cmd.keys.org_1.create", idem))
		if keyOf(third)["id"] != keyOf(first)["id"] || third["secret"] != nil {
			t.Fatalf("idempotent create after restart: %v", third)
		}
		// The admin token and secret were kept under --data.
		if !strings.Contains(r2.Stdout.String(), strings.TrimSpace(readFile(t, filepath.Join(data, "admin-token")))) {
			t.Fatalf("restart did not reuse the kept admin token:\n%s", r2.Stdout.String())
		}
	}) {
		return
	}

	// No secret in any stored byte: JetStream files, every row of every
	// table in Postgres, logs.
	t.Run("no secret in any stored byte", func(t *testing.T) {
		dump := dumpDatabase(t, r2.App)
		r2.Stop()
		assertNoSecrets(t, secrets, data, r.Stderr.String()+r2.Stderr.String()+dump)
	})
}

// dumpDatabase returns every row of every table of the public schema as
// JSON text, waiting first for the read models to catch up.
func dumpDatabase(t *testing.T, a *App) string {
	t.Helper()
	ctx := context.Background()
	last, err := a.Store.LastSequence(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Reads.WaitForSequence(ctx, last, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	rows, err := a.Pool.Query(ctx, `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`)
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for rows.Next() {
		var n string
		_ = rows.Scan(&n)
		tables = append(tables, n)
	}
	rows.Close()
	var b strings.Builder
	for _, table := range tables {
		rows, err := a.Pool.Query(ctx, `SELECT row_to_json(t)::text FROM "`+table+`" t`)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			var line string
			_ = rows.Scan(&line)
			b.WriteString(line + "\n")
			n++
		}
		rows.Close()
		if table == "keys" && n < 3 {
			t.Fatalf("the keys table holds %d rows; the dump would prove nothing", n)
		}
	}
	return b.String()
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// assertNoSecrets greps every file under dir and the given text for each
// secret (and its random body alone).
func assertNoSecrets(t *testing.T, secrets []string, dir, text string) {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		for _, s := range secrets {
			if bytes.Contains(b, []byte(s)) || bytes.Contains(b, []byte(s[strings.LastIndex(s, "_")+1:])) {
				t.Errorf("secret %s…found in %s", s[:6], p)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("no stored files under %s to check", dir)
	}
	for _, s := range secrets {
		if strings.Contains(text, s[strings.LastIndex(s, "_")+1:]) {
			t.Errorf("secret %s… found in the logs", s[:6])
		}
	}
}

// TestDevWithANewDataDirectory: keyd dev started with a fresh data
// directory (a new, empty stream) on a database holding the read models of
// an older stream rebuilds them from the stream at hand and is ready.
func TestDevWithANewDataDirectory(t *testing.T) {
	t.Parallel()
	db := testenv.PostgresURL(t)
	r := MustStart(t, nil, devArgs(t.TempDir(), db)...)
	token := strings.TrimSpace(r.App.cfg.AdminToken)
	base := "http://" + r.App.HTTPAddr
	if st, out, _ := httpDo(t, "POST", base+"/v1/orgs/acme/keys", token, map[string]any{"name": "old"}); st != 201 {
		t.Fatalf("create: %d %v", st, out)
	}
	last, _ := r.App.Store.LastSequence(context.Background())
	if _, err := r.App.Reads.WaitForSequence(context.Background(), last, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	r.Stop()

	r2 := MustStart(t, nil, devArgs(t.TempDir(), db)...)
	base2 := "http://" + r2.App.HTTPAddr
	token2 := r2.App.cfg.AdminToken
	testenv.WaitFor(t, 10*time.Second, "keyd dev on the new data directory to be ready", func() bool { st, _, _ := httpDo(t, "GET", base2+"/readyz", "", nil); return st == 200 })
	st, out, _ := httpDo(t, "GET", base2+"/v1/orgs/acme/keys", token2, nil)
	if st != 200 || len(out["data"].([]any)) != 0 {
		t.Fatalf("keys of the old stream are still listed: %d %v", st, out)
	}
}
