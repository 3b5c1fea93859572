package httpapi

import (
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func TestUnauthenticated(t *testing.T) {
	t.Parallel()
	// 70 failures from one address: not the failed-authentication limit's
	// test (TestAuthFailureLimit).
	s := newStack(t, func(s *Server) { s.AuthFailureLimit = -1 })
	k := s.createKey("org_a", "k").Key
	past := NewSessions(domain.DeriveKey([]byte("test deployment secret"), SessionKeyLabel),
		func() time.Time { return time.Now().Add(-2 * time.Hour) })
	expired, _, err := past.Issue("org_a", "u", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	valid := s.session("org_a", "u")
	forged := valid[:len(valid)-2] + "xx"
	routes := [][2]string{
		{"GET", "/v1/orgs/org_a/keys"},
		{"GET", "/v1/orgs/org_a/keys/" + k.ID},
		{"POST", "/v1/orgs/org_a/keys"},
		{"POST", "/v1/orgs/org_a/keys/" + k.ID + "/revoke"},
		{"GET", "/v1/orgs/org_a/events"},
		{"GET", "/v1/permissions"},
		{"PUT", "/v1/permissions/p"},
		{"DELETE", "/v1/permissions/p"},
		{"POST", "/v1/widget/sessions"},
		{"GET", "/v1/widget/session"},
	}
	for _, c := range []struct {
		name, header, inMessage string
	}{
		{"no header", "", "missing"},
		{"basic auth", "Basic YWRtaW46eA==", "Bearer"},
		{"empty bearer", "Bearer ", "Bearer"},
		{"wrong token", "Bearer " + adminToken + "x", "not valid"},
		{"admin token prefix", "Bearer " + adminToken[:10], "not valid"},
		{"forged session", "Bearer " + forged, "not valid"},
		{"expired session", "Bearer " + expired, "expired"},
	} {
		for _, rt := range routes {
			var hdr []string
			if c.header != "" {
				hdr = []string{"Authorization", c.header}
			}
			r := s.mustFail(t, domain.EUnauthorized, rt[0], rt[1], "", `{}`, hdr...)
			if got := r.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Bearer") {
				t.Errorf("%s %s (%s): WWW-Authenticate = %q", rt[0], rt[1], c.name, got)
			}
			if !strings.Contains(string(r.Body), c.inMessage) {
				t.Errorf("%s %s (%s): message %s does not mention %q", rt[0], rt[1], c.name, r.Body, c.inMessage)
			}
		}
	}
	// The scheme is case-insensitive.
	s.must(t, 200, "GET", "/v1/permissions", "", nil, "Authorization", "bearer "+adminToken)
}

func TestWidgetSessionAccess(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read")
	tok := s.session("org_a", "user-1")
	mine := s.createKey("org_a", "mine").Key
	theirs := s.createKey("org_b", "theirs").Key

	// Its own organization, on every (W) route.
	var created domain.CreateKeyResult
	s.must(t, 201, "POST", "/v1/orgs/org_a/keys", tok, `{"name": "w", "permissions": ["posts:read"]}`).json(t, &created)
	if created.Secret == "" {
		t.Fatal("create through a widget session gave no secret")
	}
	own := "/v1/orgs/org_a/keys/" + mine.ID
	s.must(t, 200, "GET", "/v1/orgs/org_a/keys", tok, nil)
	s.must(t, 200, "GET", own+"?min_sequence="+u64(created.Sequence), tok, nil)
	s.must(t, 200, "PATCH", own, tok, `{"name": "renamed"}`)
	s.must(t, 200, "PUT", own+"/permissions", tok, `{"permissions": ["posts:read"]}`)
	s.must(t, 200, "POST", own+"/rotate", tok, `{"grace_period_seconds": 0}`)
	s.must(t, 200, "POST", own+"/revoke", tok, `{}`)
	s.must(t, 200, "GET", "/v1/permissions", tok, nil)
	var sess Session
	s.must(t, 200, "GET", "/v1/widget/session", tok, nil).json(t, &sess)
	if sess.OrgID != "org_a" || sess.UserID != "user-1" || time.Until(sess.ExpiresAt) <= 0 {
		t.Errorf("GET /v1/widget/session = %+v", sess)
	}

	// Another organization: permission_denied, whether or not the key exists.
	other := "/v1/orgs/org_b/keys/" + theirs.ID
	for _, rt := range [][3]string{
		{"GET", "/v1/orgs/org_b/keys", ""},
		{"POST", "/v1/orgs/org_b/keys", `{"name": "x"}`},
		{"GET", other, ""},
		{"PATCH", other, `{"name": "x"}`},
		{"PUT", other + "/permissions", `{"permissions": []}`},
		{"POST", other + "/rotate", `{"grace_period_seconds": 0}`},
		{"POST", other + "/revoke", `{}`},
		{"POST", "/v1/orgs/org_b/keys/key_01J00000000000000000000000/revoke", `{}`},
	} {
		s.mustFail(t, domain.EForbidden, rt[0], rt[1], tok, rt[2])
	}
	// Admin-only routes: permission_denied even for its own organization.
	for _, rt := range [][3]string{
		{"GET", "/v1/orgs/org_a/events", ""},
		{"PUT", "/v1/permissions/posts:write", `{"description": "x"}`},
		{"DELETE", "/v1/permissions/posts:read", ""},
		{"POST", "/v1/widget/sessions", `{"org_id": "org_a", "user_id": "u"}`},
		{"POST", "/v1/widget/sessions", `{"org_id": "org_b", "user_id": "u"}`},
	} {
		s.mustFail(t, domain.EForbidden, rt[0], rt[1], tok, rt[2])
	}
	// Nothing of org_b changed.
	if got := lastEvent(t, s, "org_b", theirs.ID); got.Type != "key.created" {
		t.Errorf("org_b's key has event %s after the denied requests", got.Type)
	}
	// The session route is for widget tokens only.
	s.mustFail(t, domain.EForbidden, "GET", "/v1/widget/session", adminToken, nil)
}

func TestAdminSeesNotFoundAcrossOrgs(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	k := s.createKey("org_a", "k")
	s.mustFail(t, domain.ENotFound, "GET", "/v1/orgs/org_b/keys/"+k.Key.ID+"?min_sequence="+u64(k.Sequence), adminToken, nil)
	if r := s.mustFail(t, domain.ENotFound, "GET", "/v1/orgs/org_a/keys/key_01J00000000000000000000000", adminToken, nil); r.Header.Get(SequenceHeader) == "" {
		t.Error("a 404 read has no Keyd-Sequence header")
	}
}

func TestCreateWidgetSession(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	before := time.Now()
	var res sessionReply
	s.must(t, 200, "POST", "/v1/widget/sessions", adminToken, `{"org_id": "org_a", "user_id": "u"}`).json(t, &res)
	if d := res.ExpiresAt.Sub(before); d < DefaultSessionTTL-time.Second || d > DefaultSessionTTL+5*time.Second {
		t.Errorf("default session lasts %s, want %s", d, DefaultSessionTTL)
	}
	got, err := s.sessions.Verify(res.Token)
	if err != nil || got.OrgID != "org_a" || got.UserID != "u" {
		t.Errorf("issued token verifies as %+v, %v", got, err)
	}
	s.must(t, 200, "POST", "/v1/widget/sessions", adminToken, `{"org_id": "org_a", "user_id": "u", "ttl_seconds": 3600}`).json(t, &res)
	if d := res.ExpiresAt.Sub(before); d < time.Hour-time.Second || d > time.Hour+5*time.Second {
		t.Errorf("a 3600 s session lasts %s", d)
	}
	for _, body := range []string{
		`{"org_id": "org a", "user_id": "u"}`,
		`{"user_id": "u"}`,
		`{"org_id": "org_a"}`,
		`{"org_id": "org_a", "user_id": "` + strings.Repeat("u", 201) + `"}`,
		`{"org_id": "org_a", "user_id": "u", "ttl_seconds": 0}`,
		`{"org_id": "org_a", "user_id": "u", "ttl_seconds": 3601}`,
		`{"org_id": "org_a", "user_id": "u", "ttl_seconds": "600"}`,
		`{"org_id": "org_a", "user_id": "u", "role": "admin"}`,
		`{"org_id": "org_a", "user_id": "u"`,
	} {
		s.mustFail(t, domain.EInvalid, "POST", "/v1/widget/sessions", adminToken, body)
	}
}
