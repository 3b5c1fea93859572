package httpapi

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// lastSequence returns the stream's last sequence.
func (s *stack) lastSequence(t *testing.T) uint64 {
	t.Helper()
	st, ok := s.store.(interface {
		LastSequence(context.Context) (uint64, error)
	})
	if !ok {
		t.Fatalf("the stack's store %T cannot tell its last sequence", s.store)
	}
	n, err := st.LastSequence(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestH1ControlTextRefusedOverHTTP (finding H1): one U+0000 in any string
// field used to reach the event stream and stop the Postgres projection for
// every tenant. Every vector of the finding, sent as the finding sent it (a
// widget session where one can, else the admin token), is now
// invalid_argument naming the field, and nothing is appended; the
// projection then still applies what comes next. Other C0/C1 and bidi
// controls (I2) are refused the same way.
func TestH1ControlTextRefusedOverHTTP(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read")
	k := s.createKey("orgA", "victim")
	widget := s.session("orgA", "alice")
	keyPath := "/v1/orgs/orgA/keys/" + k.Key.ID
	before := s.lastSequence(t)

	type vector struct {
		name, method, path, token string
		body                      any
		field                     string // the message names it
	}
	vectors := func(c string) []vector {
		return []vector{
			{"name", "POST", "/v1/orgs/orgA/keys", widget, map[string]any{"name": "a" + c + "b"}, "name"},
			{"name on update", "PATCH", keyPath, widget, map[string]any{"name": c}, "name"},
			{"metadata_value", "POST", "/v1/orgs/orgA/keys", widget, map[string]any{"name": "n", "metadata": map[string]string{"team": "x" + c}}, "metadata value"},
			{"metadata_key", "POST", "/v1/orgs/orgA/keys", widget, map[string]any{"name": "n", "metadata": map[string]string{"te" + c + "am": "x"}}, "metadata key"},
			{"metadata on update", "PATCH", keyPath, widget, map[string]any{"metadata": map[string]string{"k": c}}, "metadata value"},
			{"revoke_reason", "POST", keyPath + "/revoke", widget, map[string]any{"reason": "leaked" + c}, "reason"},
			{"idempotency_key", "POST", "/v1/orgs/orgA/keys", widget, map[string]any{"name": "n", "idempotency_key": "i" + c}, "idempotency_key"},
			{"admin_actor", "POST", "/v1/orgs/orgA/keys", adminToken, map[string]any{"name": "n", "actor": map[string]string{"type": "user", "id": "bob" + c}}, "actor.id"},
			{"perm_description", "PUT", "/v1/permissions/posts:write", adminToken, map[string]any{"description": "<b>" + c}, "description"},
			{"session_user", "POST", "/v1/widget/sessions", adminToken, map[string]any{"org_id": "orgA", "user_id": "alice" + c}, "user_id"},
		}
	}
	for _, c := range []string{"\x00", "\x1b[31m", "\r", "\u0085", "\u202e", "\u2066"} {
		for _, v := range vectors(c) {
			r := s.mustFail(t, domain.EInvalid, v.method, v.path, v.token, v.body)
			var e domain.ErrorBody
			r.json(t, &e)
			if !strings.Contains(e.Error.Message, v.field) {
				t.Errorf("%s with %q: message %q does not name %s", v.name, c, e.Error.Message, v.field)
			}
		}
	}
	// Tab and line feed: refused in single-line fields, kept in free text.
	s.mustFail(t, domain.EInvalid, "POST", "/v1/orgs/orgA/keys", widget, map[string]any{"name": "a\tb"})
	s.mustFail(t, domain.EInvalid, "POST", "/v1/orgs/orgA/keys", widget, map[string]any{"name": "n", "metadata": map[string]string{"k": "a\nb"}})
	// The Keyd-Command-Id header (Go's HTTP stack lets tab and bytes over
	// 0x7f through).
	for _, id := range []string{"a\tb", "id\u202e", "id\u0085"} {
		r := s.mustFail(t, domain.EInvalid, "POST", "/v1/orgs/orgA/keys", adminToken, map[string]any{"name": "n"}, "Keyd-Command-Id", id)
		if !strings.Contains(string(r.Body), "Keyd-Command-Id") {
			t.Errorf("command id %q: %s does not name Keyd-Command-Id", id, r.Body)
		}
	}
	if got := s.lastSequence(t); got != before {
		t.Fatalf("refused requests appended events: last sequence %d, was %d", got, before)
	}

	// Free text keeps tab and line feed, and the projection applies it.
	var def domain.PermissionResult
	s.must(t, 200, "PUT", "/v1/permissions/posts:write", adminToken, map[string]any{"description": "Write posts:\n\t- create\n\t- edit"}).json(t, &def)
	var rev domain.KeyResult
	s.must(t, 200, "POST", keyPath+"/revoke", widget, map[string]any{"reason": "leaked\nin CI"}).json(t, &rev)
	var got domain.KeyView
	s.must(t, 200, "GET", keyPath+"?min_sequence="+u64(rev.Sequence), widget, nil).json(t, &got)
	if got.Status != domain.StatusRevoked {
		t.Fatalf("after the revoke the read model says %+v", got)
	}
	var perms struct {
		Data []domain.Permission `json:"data"`
	}
	s.must(t, 200, "GET", "/v1/permissions?min_sequence="+u64(rev.Sequence), widget, nil).json(t, &perms)
	found := false
	for _, p := range perms.Data {
		found = found || (p.Slug == "posts:write" && p.Description == "Write posts:\n\t- create\n\t- edit")
	}
	if !found {
		t.Fatalf("catalog read model: %+v", perms.Data)
	}
}

// TestStrictJSONOverHTTP (finding I3): duplicate and case-folded member
// names are invalid_argument on every body: commands, verify, sessions.
func TestStrictJSONOverHTTP(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	before := s.lastSequence(t)
	for _, c := range []struct {
		method, path, body, mention string
	}{
		{"POST", "/v1/orgs/orgA/keys", `{"name":"a","name":"b"}`, `"name"`},
		{"POST", "/v1/orgs/orgA/keys", `{"NAME":"x"}`, `"NAME"`},
		{"POST", "/v1/orgs/orgA/keys", `{"name":"x","metadata":{"a":"1","a":"2"}}`, `"a"`},
		{"POST", "/v1/keys/verify", `{"key":"sk_a","key":"sk_b"}`, `"key"`},
		{"POST", "/v1/keys/verify", `{"Key":"sk_a"}`, `"Key"`},
		{"POST", "/v1/widget/sessions", `{"org_id":"orgA","user_id":"u","user_id":"v"}`, `"user_id"`},
		{"POST", "/v1/widget/sessions", `{"org_id":"orgA","USER_ID":"u"}`, `"USER_ID"`},
	} {
		r := s.mustFail(t, domain.EInvalid, c.method, c.path, adminToken, c.body)
		if !strings.Contains(string(r.Body), strings.ReplaceAll(c.mention, `"`, `\"`)) {
			t.Errorf("%s %s: %s does not name %s", c.path, c.body, r.Body, c.mention)
		}
	}
	if got := s.lastSequence(t); got != before {
		t.Fatalf("refused requests appended events: last sequence %d, was %d", got, before)
	}
}

// TestControlCharacterKeyIsMalformed: a presented key holding a control or
// bidi character is simply malformed at verification (no lookup, no error).
func TestControlCharacterKeyIsMalformed(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	k := s.createKey("orgA", "k")
	// The stack's runner does not wait for the verifier: wait here.
	for deadline := time.Now().Add(10 * time.Second); ; {
		var ok struct{ Code string }
		s.must(t, http.StatusOK, "POST", "/v1/keys/verify", adminToken, map[string]string{"key": k.Secret}).json(t, &ok)
		if ok.Code == "valid" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the key itself verifies as %q", ok.Code)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range []string{"\x00", "\t", "\n", "\r", "\x1b", "\u0085", "\u202e", "\u2069"} {
		for _, key := range []string{k.Secret + c, c + k.Secret, k.Secret[:10] + c + k.Secret[11:]} {
			var res struct{ Code string }
			s.must(t, http.StatusOK, "POST", "/v1/keys/verify", adminToken, map[string]string{"key": key}).json(t, &res)
			if res.Code != "malformed" {
				t.Errorf("key %q verifies as %q, want malformed", key, res.Code)
			}
		}
	}
}
