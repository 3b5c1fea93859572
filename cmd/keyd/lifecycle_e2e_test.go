package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestLifecycleOverNATS drives suspend, resume, set_expiry and set_policy
// as a NATS client would, against a real keyd dev (embedded JetStream, real
// Postgres): each reply, the events a plain subscriber to the organization's
// audit subjects sees, what verify answers right after the reply, that
// repeats append nothing, and every policy rule refusing with a message that
// names it.
func TestLifecycleOverNATS(t *testing.T) {
	t.Parallel()
	r := MustStart(t, nil, devArgs(t.TempDir(), testenv.PostgresURL(t))...)
	nc := connect(t, r.App.NATSURL)
	api := "http://" + r.App.HTTPAddr
	token := r.App.cfg.AdminToken
	const org = "life"

	keyEvents, err := nc.SubscribeSync("keyd.events.keys." + org + ".>")
	if err != nil {
		t.Fatal(err)
	}
	orgEvents, err := nc.SubscribeSync("keyd.events.orgs." + org)
	if err != nil {
		t.Fatal(err)
	}
	// nextEvent returns the next event sub delivers, of type typ.
	nextEvent := func(t *testing.T, sub *nats.Subscription, typ string) map[string]any {
		t.Helper()
		for {
			msg, err := sub.NextMsg(5 * time.Second)
			if err != nil {
				t.Fatalf("waiting for %s: %v", typ, err)
			}
			var ev map[string]any
			if err := json.Unmarshal(msg.Data, &ev); err != nil {
				t.Fatalf("event is not JSON: %q", msg.Data)
			}
			if ev["type"] == typ {
				if h := msg.Header.Get("Keyd-Event-Type"); h != typ {
					t.Errorf("%s: header Keyd-Event-Type %q", typ, h)
				}
				return ev
			}
		}
	}
	lastSeq := func() uint64 {
		s, err := r.App.Store.LastSequence(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cmd := func(name string, body any) map[string]any {
		t.Helper()
		return request(t, nc, "keyd.cmd.keys."+org+"."+name, body)
	}
	verify := func(secret string) string {
		t.Helper()
		st, out, _ := httpDo(t, "POST", api+"/v1/keys/verify", token, map[string]any{"key": secret})
		if st != 200 {
			t.Fatalf("verify: %d %v", st, out)
		}
		c, _ := out["code"].(string)
		return c
	}
	wantError := func(t *testing.T, reply map[string]any, code string, words ...string) {
		t.Helper()
		if got := errCode(reply); got != code {
			t.Fatalf("code %q, want %q: %v", got, code, reply)
		}
		msg := fmt.Sprint(reply["error"].(map[string]any)["message"])
		for _, w := range words {
			if !strings.Contains(msg, w) {
				t.Errorf("message %q does not say %q", msg, w)
			}
		}
	}

	mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"posts:read","description":"Read posts"}`))
	mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"posts:write","description":"Write posts"}`))
	created := mustOK(t, cmd("create", map[string]any{"name": "exporter", "permissions": []string{"posts:read"}}))
	secret, _ := created["secret"].(string)
	keyID, _ := keyOf(created)["id"].(string)
	nextEvent(t, keyEvents, "key.created")

	if !t.Run("suspend: verify refuses at once; again appends nothing", func(t *testing.T) {
		rep := mustOK(t, cmd("suspend", map[string]any{"key_id": keyID, "reason": "unusual traffic", "actor": map[string]string{"type": "user", "id": "u_1"}}))
		if k := keyOf(rep); k["status"] != "suspended" || k["version"] != 2.0 {
			t.Fatalf("suspend reply: %v", rep)
		}
		// Read-your-suspension: the process that answered already refuses it.
		if c := verify(secret); c != "suspended" {
			t.Fatalf("verify right after the suspend reply: %q", c)
		}
		ev := nextEvent(t, keyEvents, "key.suspended")
		if d, _ := ev["data"].(map[string]any); d["reason"] != "unusual traffic" || ev["key_id"] != keyID {
			t.Fatalf("key.suspended event: %v", ev)
		}
		if a, _ := ev["actor"].(map[string]any); a["id"] != "u_1" {
			t.Fatalf("key.suspended actor: %v", ev["actor"])
		}
		before := lastSeq()
		again := mustOK(t, cmd("suspend", map[string]any{"key_id": keyID, "reason": "again"}))
		if keyOf(again)["status"] != "suspended" || lastSeq() != before {
			t.Fatalf("a second suspend: %v, stream %d -> %d", again, before, lastSeq())
		}
		st, list, _ := httpDo(t, "GET", fmt.Sprintf("%s/v1/orgs/%s/keys?status=suspended&min_sequence=%v", api, org, rep["sequence"]), token, nil)
		if ids := listedIDs(list); st != 200 || len(ids) != 1 || ids[0] != keyID {
			t.Fatalf("status=suspended listing: %d %v", st, list)
		}
		// A suspended key cannot be rotated.
		wantError(t, cmd("rotate", map[string]any{"key_id": keyID, "grace_period_seconds": 0}), "failed_precondition", "suspended")
	}) {
		return
	}

	if !t.Run("resume: verify accepts again; again appends nothing", func(t *testing.T) {
		rep := mustOK(t, cmd("resume", map[string]any{"key_id": keyID}))
		if k := keyOf(rep); k["status"] != "active" || k["version"] != 3.0 {
			t.Fatalf("resume reply: %v", rep)
		}
		nextEvent(t, keyEvents, "key.resumed")
		if c := verify(secret); c != "valid" {
			t.Fatalf("verify after the resume reply: %q", c)
		}
		before := lastSeq()
		if again := mustOK(t, cmd("resume", map[string]any{"key_id": keyID})); keyOf(again)["status"] != "active" || lastSeq() != before {
			t.Fatalf("a second resume: %v, stream %d -> %d", again, before, lastSeq())
		}
	}) {
		return
	}

	if !t.Run("set_expiry: a future time, null, then now", func(t *testing.T) {
		at := time.Now().Add(48 * time.Hour).UTC().Truncate(time.Second)
		rep := mustOK(t, cmd("set_expiry", map[string]any{"key_id": keyID, "expires_at": at.Format(time.RFC3339)}))
		if k := keyOf(rep); k["expires_at"] != at.Format(time.RFC3339) || k["status"] != "active" {
			t.Fatalf("set_expiry reply: %v", rep)
		}
		ev := nextEvent(t, keyEvents, "key.expiry_changed")
		if d, _ := ev["data"].(map[string]any); d["expires_at"] != at.Format(time.RFC3339) {
			t.Fatalf("key.expiry_changed: %v", ev)
		}
		rep = mustOK(t, cmd("set_expiry", map[string]any{"key_id": keyID, "expires_at": nil}))
		if k := keyOf(rep); k["expires_at"] != nil {
			t.Fatalf("set_expiry null reply: %v", rep)
		}
		nextEvent(t, keyEvents, "key.expiry_changed")
		// expires_at is required: absent is not null.
		wantError(t, cmd("set_expiry", map[string]any{"key_id": keyID}), "invalid_argument", "expires_at")

		rep = mustOK(t, cmd("set_expiry", map[string]any{"key_id": keyID, "expires_at": "2001-01-01T00:00:00Z"}))
		if k := keyOf(rep); k["status"] != "expired" {
			t.Fatalf("set_expiry in the past: %v", rep)
		}
		if c := verify(secret); c != "expired" {
			t.Fatalf("verify after expiring now: %q", c)
		}
		wantError(t, cmd("set_expiry", map[string]any{"key_id": keyID, "expires_at": nil}), "failed_precondition")
		wantError(t, cmd("suspend", map[string]any{"key_id": keyID}), "failed_precondition")
		wantError(t, cmd("resume", map[string]any{"key_id": keyID}), "failed_precondition")
	}) {
		return
	}

	t.Run("set_policy: every rule refuses by name; the policy reads back", func(t *testing.T) {
		policy := func(body map[string]any) map[string]any {
			t.Helper()
			rep := mustOK(t, request(t, nc, "keyd.cmd.orgs."+org+".set_policy", body))
			ev := nextEvent(t, orgEvents, "org.policy_changed")
			if ev["org_id"] != org {
				t.Fatalf("org.policy_changed: %v", ev)
			}
			p, _ := rep["policy"].(map[string]any)
			if p == nil || rep["sequence"] == nil {
				t.Fatalf("set_policy reply: %v", rep)
			}
			return p
		}
		wantError(t, request(t, nc, "keyd.cmd.orgs."+org+".set_policy", `{"leak_action":"explode"}`), "invalid_argument", "leak_action")
		wantError(t, request(t, nc, "keyd.cmd.orgs."+org+".set_policy", `{"expiry_notice_seconds":0}`), "invalid_argument", "expiry_notice_seconds")
		wantError(t, request(t, nc, "keyd.cmd.orgs."+org+".frobnicate", `{}`), "invalid_argument", "set_policy")

		p := policy(map[string]any{"require_expiry": true})
		if p["require_expiry"] != true || p["leak_action"] != "revoke" || p["expiry_notice_seconds"] != 604800.0 || p["max_lifetime_seconds"] != nil {
			t.Fatalf("policy: %v", p)
		}
		wantError(t, cmd("create", map[string]any{"name": "no expiry"}), "failed_precondition", "require_expiry")

		p = policy(map[string]any{"max_lifetime_seconds": 3600, "allowed_permissions": []string{"posts:read"}})
		if p["require_expiry"] != false || p["max_lifetime_seconds"] != 3600.0 || !sameStrings(p["allowed_permissions"], "posts:read") {
			t.Fatalf("policy (absent fields take their defaults): %v", p)
		}
		// Without an expiry a key gets now + the max lifetime.
		rep := mustOK(t, cmd("create", map[string]any{"name": "capped", "permissions": []string{"posts:read"}}))
		exp, err := time.Parse(time.RFC3339, fmt.Sprint(keyOf(rep)["expires_at"]))
		if err != nil || exp.Sub(time.Now().Add(time.Hour)).Abs() > time.Minute {
			t.Fatalf("create under max_lifetime_seconds: expires_at %v", keyOf(rep)["expires_at"])
		}
		capped, _ := keyOf(rep)["id"].(string)
		later := time.Now().Add(2 * time.Hour).UTC().Format(time.RFC3339)
		wantError(t, cmd("create", map[string]any{"name": "too long", "expires_at": later}), "failed_precondition", "max_lifetime_seconds")
		wantError(t, cmd("set_expiry", map[string]any{"key_id": capped, "expires_at": later}), "failed_precondition", "max_lifetime_seconds")
		wantError(t, cmd("set_expiry", map[string]any{"key_id": capped, "expires_at": nil}), "failed_precondition", "max_lifetime_seconds")
		wantError(t, cmd("create", map[string]any{"name": "writer", "permissions": []string{"posts:write"}}), "failed_precondition", "allowed_permissions", "posts:write")
		wantError(t, cmd("set_permissions", map[string]any{"key_id": capped, "permissions": []string{"posts:read", "posts:write"}}), "failed_precondition", "allowed_permissions")

		// max_active_keys: the org has one live key (capped); allow two.
		policy(map[string]any{"max_active_keys": 2})
		mustOK(t, cmd("create", map[string]any{"name": "second"}))
		wantError(t, cmd("create", map[string]any{"name": "third"}), "failed_precondition", "max_active_keys")
		// A suspended key still counts; a revoked one frees its slot.
		mustOK(t, cmd("suspend", map[string]any{"key_id": capped}))
		wantError(t, cmd("create", map[string]any{"name": "third"}), "failed_precondition", "max_active_keys")
		mustOK(t, cmd("revoke", map[string]any{"key_id": capped}))
		mustOK(t, cmd("create", map[string]any{"name": "third"}))

		// Every reader sees the last policy set.
		last := policy(map[string]any{"leak_action": "suspend", "expiry_notice_seconds": 86400})
		st, rep, _ := httpDo(t, "GET", api+"/v1/orgs/"+org+"/policy", token, nil)
		got, _ := rep["policy"].(map[string]any) // the same reply as set_policy's
		if st != 200 || got["leak_action"] != "suspend" || got["expiry_notice_seconds"] != 86400.0 || got["version"] != last["version"] || got["max_active_keys"] != nil {
			t.Fatalf("GET policy: %d %v (set: %v)", st, got, last)
		}
	})
}

// listedIDs returns the key ids of a listing reply.
func listedIDs(list map[string]any) []string {
	var ids []string
	data, _ := list["data"].([]any)
	for _, k := range data {
		if m, ok := k.(map[string]any); ok {
			id, _ := m["id"].(string)
			ids = append(ids, id)
		}
	}
	return ids
}
