package httpapi

import (
	"context"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// issued is a POST /v1/widget/sessions reply.
func (s *stack) issue(t *testing.T, body any) sessionReply {
	t.Helper()
	var res sessionReply
	s.must(t, 200, "POST", "/v1/widget/sessions", adminToken, body).json(t, &res)
	if res.ID == "" || res.Token == "" {
		t.Fatalf("session reply %+v lacks id or token", res)
	}
	return res
}

// TestNarrowedSessions (finding L4: every session could grant any
// permission of the global catalog): a session issued with "permissions"
// may grant only those, on create and on set_permissions (else
// permission_denied); GET /v1/widget/session reports them (null: every
// active permission); rotate keeps what was granted.
func TestNarrowedSessions(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read", "posts:write", "billing:admin")
	narrow := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "u", "permissions": []string{"posts:write", "posts:read", "posts:read"}})
	open := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "u"})

	var got Session
	s.must(t, 200, "GET", "/v1/widget/session", narrow.Token, nil).json(t, &got)
	if got.ID != narrow.ID || !slices.Equal(got.Permissions, []string{"posts:read", "posts:write"}) {
		t.Errorf("narrowed session describes itself as %+v, want id %s and [posts:read posts:write]", got, narrow.ID)
	}
	r := s.must(t, 200, "GET", "/v1/widget/session", open.Token, nil)
	if !strings.Contains(string(r.Body), `"permissions":null`) {
		t.Errorf("an unrestricted session reports %s, want \"permissions\":null", r.Body)
	}

	var created domain.CreateKeyResult
	s.must(t, 201, "POST", "/v1/orgs/org_a/keys", narrow.Token, map[string]any{"name": "ok", "permissions": []string{"posts:read"}}).json(t, &created)
	e := s.mustFail(t, domain.EForbidden, "POST", "/v1/orgs/org_a/keys", narrow.Token, map[string]any{"name": "too much", "permissions": []string{"posts:read", "billing:admin"}})
	if !strings.Contains(string(e.Body), "billing:admin") {
		t.Errorf("refusal %s does not name the permission", e.Body)
	}
	path := "/v1/orgs/org_a/keys/" + created.Key.ID + "/permissions"
	s.mustFail(t, domain.EForbidden, "PUT", path, narrow.Token, map[string]any{"permissions": []string{"billing:admin"}})
	s.must(t, 200, "PUT", path, narrow.Token, map[string]any{"permissions": []string{"posts:write"}})
	s.must(t, 200, "POST", "/v1/orgs/org_a/keys/"+created.Key.ID+"/rotate", narrow.Token, map[string]any{"grace_period_seconds": 0})
	// The unrestricted session and the admin token may grant any.
	s.must(t, 201, "POST", "/v1/orgs/org_a/keys", open.Token, map[string]any{"name": "any", "permissions": []string{"billing:admin"}})
	s.must(t, 201, "POST", "/v1/orgs/org_a/keys", adminToken, map[string]any{"name": "any", "permissions": []string{"billing:admin"}})
	// A session narrowed to nothing grants nothing.
	none := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "u", "permissions": []string{}})
	s.must(t, 201, "POST", "/v1/orgs/org_a/keys", none.Token, map[string]any{"name": "bare"})
	s.mustFail(t, domain.EForbidden, "POST", "/v1/orgs/org_a/keys", none.Token, map[string]any{"name": "x", "permissions": []string{"posts:read"}})
	// The list is the token's: the signature covers it.
	if parts := strings.SplitN(narrow.Token, ".", 2); len(parts) == 2 {
		s.mustFail(t, domain.EUnauthorized, "GET", "/v1/widget/session", open.Token[:strings.Index(open.Token, ".")]+"."+parts[1], nil)
	}

	for _, body := range []string{
		`{"org_id": "org_a", "user_id": "u", "permissions": ["Posts:Read"]}`,
		`{"org_id": "org_a", "user_id": "u", "permissions": "posts:read"}`,
		`{"org_id": "org_a", "user_id": "u", "permissions": [` + strings.Repeat(`"p",`, MaxSessionPermissions) + `"p"]}`,
	} {
		s.mustFail(t, domain.EInvalid, "POST", "/v1/widget/sessions", adminToken, body)
	}
	many := make([]string, MaxSessionPermissions)
	for i := range many {
		many[i] = "perm:" + strings.Repeat("x", 110) + string(rune('a'+i%26)) + string(rune('a'+i/26))
	}
	big := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "u", "permissions": many})
	s.must(t, 200, "GET", "/v1/widget/session", big.Token, nil)
}

// TestEndSession (finding L4: a session stayed valid for up to an hour
// after the host removed its user): DELETE /v1/widget/sessions/{id}
// (admin only) ends a session at once on the process that answered and,
// through the JetStream bucket, on every other; other sessions go on.
func TestEndSession(t *testing.T) {
	t.Parallel()
	base := newStack(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // before the stack's NATS server stops
	// Two processes: each its own Server and its own watch of the bucket.
	process := func() (*stack, *metrics.Metrics) {
		ended, err := StartEndedSessions(ctx, base.js, 1, nil)
		if err != nil {
			t.Fatal(err)
		}
		m := metrics.New()
		srv := &Server{Runner: base.srv.Runner, Reads: base.reads, AdminToken: adminToken, Sessions: base.sessions,
			EndedSessions: ended, Metrics: m, Log: base.srv.Log}
		h := httptest.NewServer(srv.Handler())
		t.Cleanup(h.Close)
		return &stack{t: t, http: h}, m
	}
	s, _ := process()
	s2, m2 := process()

	victim := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "leaver"})
	stays := s.issue(t, map[string]any{"org_id": "org_a", "user_id": "stays"})
	s.must(t, 200, "GET", "/v1/orgs/org_a/keys", victim.Token, nil)
	s2.must(t, 200, "GET", "/v1/orgs/org_a/keys", victim.Token, nil)

	s.mustFail(t, domain.EForbidden, "DELETE", "/v1/widget/sessions/"+victim.ID, stays.Token, nil)
	s.mustFail(t, domain.EInvalid, "DELETE", "/v1/widget/sessions/not%20an%20id", adminToken, nil)
	r := s.must(t, 200, "DELETE", "/v1/widget/sessions/"+victim.ID, adminToken, nil)
	if !strings.Contains(string(r.Body), `"ended":true`) {
		t.Errorf("DELETE reply %s", r.Body)
	}
	e := s.mustFail(t, domain.EUnauthorized, "GET", "/v1/orgs/org_a/keys", victim.Token, nil)
	if !strings.Contains(string(e.Body), "ended") {
		t.Errorf("an ended session's refusal %s does not say it was ended", e.Body)
	}
	s.mustFail(t, domain.EUnauthorized, "POST", "/v1/orgs/org_a/keys", victim.Token, map[string]any{"name": "after"})
	testenv.WaitFor(t, 5*time.Second, "the other process to refuse the ended session", func() bool {
		return s2.do(t, "GET", "/v1/orgs/org_a/keys", victim.Token, nil).Status == 401
	})
	if got := counterValue(t, m2.AuthFailures.WithLabelValues(metrics.AuthEnded)); got < 1 {
		t.Errorf("keyd_auth_failures_total{reason=ended} = %v on the other process", got)
	}
	s.must(t, 200, "GET", "/v1/orgs/org_a/keys", stays.Token, nil)
	s2.must(t, 200, "GET", "/v1/orgs/org_a/keys", stays.Token, nil)
	// Ending it again is fine.
	s.must(t, 200, "DELETE", "/v1/widget/sessions/"+victim.ID, adminToken, nil)

	// A process started later loads the ended ids before it serves.
	late, err := StartEndedSessions(ctx, base.js, 1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !late.Ended(victim.ID) || late.Ended(stays.ID) {
		t.Errorf("a later process: ended(victim) = %v, ended(stays) = %v; want true, false", late.Ended(victim.ID), late.Ended(stays.ID))
	}
	// Without EndedSessions the route says so.
	s3 := newStack(t)
	s3.mustFail(t, domain.EUnavailable, "DELETE", "/v1/widget/sessions/"+victim.ID, adminToken, nil)
}
