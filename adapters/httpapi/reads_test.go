package httpapi

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// sequenceOf returns the Keyd-Sequence header of a read reply, failing the
// test if it is missing.
func sequenceOf(t *testing.T, r reply) uint64 {
	t.Helper()
	v := r.Header.Get(SequenceHeader)
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("%s header %q: %v", SequenceHeader, v, err)
	}
	return n
}

func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read")
	created := s.createKey("org_a", "fresh", "posts:read")

	q := "?min_sequence=" + u64(created.Sequence)
	var list keyList
	r := s.must(t, 200, "GET", "/v1/orgs/org_a/keys"+q, adminToken, nil)
	r.json(t, &list)
	if len(list.Data) != 1 || list.Data[0].ID != created.Key.ID {
		t.Fatalf("list after min_sequence=%d: %s", created.Sequence, r.Body)
	}
	if seq := sequenceOf(t, r); seq < created.Sequence {
		t.Errorf("Keyd-Sequence %d < min_sequence %d", seq, created.Sequence)
	}

	var rev domain.KeyResult
	s.must(t, 200, "POST", "/v1/orgs/org_a/keys/"+created.Key.ID+"/revoke", adminToken, nil).json(t, &rev)
	var got domain.KeyView
	r = s.must(t, 200, "GET", "/v1/orgs/org_a/keys/"+created.Key.ID+"?min_sequence="+u64(rev.Sequence), adminToken, nil)
	r.json(t, &got)
	if got.Status != "revoked" || got.Version != rev.Key.Version || sequenceOf(t, r) < rev.Sequence {
		t.Errorf("get after revoke with min_sequence: %s (Keyd-Sequence %s)", r.Body, r.Header.Get(SequenceHeader))
	}

	// A sequence that is not reached in time: 503 after the wait.
	start := time.Now()
	r = s.mustFail(t, domain.EUnavailable, "GET", "/v1/orgs/org_a/keys?min_sequence="+u64(rev.Sequence+1000), adminToken, nil)
	if waited := time.Since(start); waited < s.srv.MinSequenceWait || waited > s.srv.MinSequenceWait+3*time.Second {
		t.Errorf("waited %s for an unreachable sequence, want about %s", waited, s.srv.MinSequenceWait)
	}
	if seq := sequenceOf(t, r); seq < rev.Sequence {
		t.Errorf("503 reply Keyd-Sequence %d < %d", seq, rev.Sequence)
	}
	for _, path := range []string{"/v1/orgs/org_a/keys", "/v1/orgs/org_a/keys/" + created.Key.ID, "/v1/orgs/org_a/events", "/v1/permissions"} {
		s.mustFail(t, domain.EInvalid, "GET", path+"?min_sequence=-1", adminToken, nil)
		s.mustFail(t, domain.EInvalid, "GET", path+"?min_sequence=abc", adminToken, nil)
		s.must(t, 200, "GET", path+"?min_sequence=0", adminToken, nil)
	}
}

func TestListKeys(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	var secrets []string
	var last domain.CreateKeyResult
	for i := range 5 {
		last = s.createKey("org_a", "key "+strconv.Itoa(i))
		secrets = append(secrets, last.Secret)
	}
	s.createKey("org_b", "elsewhere")
	var rev domain.KeyResult
	s.must(t, 200, "POST", "/v1/orgs/org_a/keys/"+last.Key.ID+"/revoke", adminToken, nil).json(t, &rev)
	q := "min_sequence=" + u64(rev.Sequence)

	// Pages of two, newest first, masked, no secrets.
	var ids []string
	cursor := ""
	for page := 0; ; page++ {
		var list keyList
		r := s.must(t, 200, "GET", "/v1/orgs/org_a/keys?limit=2&"+q+"&cursor="+cursor, adminToken, nil)
		r.json(t, &list)
		sequenceOf(t, r)
		for _, secret := range secrets {
			if strings.Contains(string(r.Body), secret) {
				t.Fatalf("a list reply contains a secret")
			}
		}
		for _, k := range list.Data {
			if k.OrgID != "org_a" || !strings.Contains(k.Mask, "…") {
				t.Errorf("listed key %+v", k)
			}
			ids = append(ids, k.ID)
		}
		if list.NextCursor == nil {
			if !strings.Contains(string(r.Body), `"next_cursor":null`) {
				t.Errorf("last page: %s, want next_cursor null", r.Body)
			}
			break
		}
		cursor = *list.NextCursor
		if page > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(ids) != 5 || ids[0] != last.Key.ID {
		t.Errorf("paged ids = %v, want 5 newest first", ids)
	}
	count := func(status string) int {
		var list keyList
		s.must(t, 200, "GET", "/v1/orgs/org_a/keys?status="+status, adminToken, nil).json(t, &list)
		return len(list.Data)
	}
	if a, r, e, all := count("active"), count("revoked"), count("expired"), count("all"); a != 4 || r != 1 || e != 0 || all != 5 {
		t.Errorf("by status: active %d, revoked %d, expired %d, all %d; want 4, 1, 0, 5", a, r, e, all)
	}
	// An organization without keys: an empty array, not null.
	r := s.must(t, 200, "GET", "/v1/orgs/org_none/keys", adminToken, nil)
	if !strings.Contains(string(r.Body), `"data":[]`) {
		t.Errorf("empty list: %s", r.Body)
	}
	for _, bad := range []string{"limit=0", "limit=101", "limit=x", "status=gone", "cursor=nope"} {
		s.mustFail(t, domain.EInvalid, "GET", "/v1/orgs/org_a/keys?"+bad, adminToken, nil)
	}
}

func TestListEvents(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	k := s.createKey("org_a", "k")
	s.createKey("org_b", "other org")
	base := "/v1/orgs/org_a/keys/" + k.Key.ID
	s.must(t, 200, "PATCH", base, adminToken, `{"name": "k2"}`)
	var rev domain.KeyResult
	s.must(t, 200, "POST", base+"/revoke", adminToken, `{"reason": "test"}`).json(t, &rev)

	type ev struct {
		Sequence uint64       `json:"sequence"`
		Type     string       `json:"type"`
		OrgID    string       `json:"org_id"`
		KeyID    string       `json:"key_id"`
		Actor    domain.Actor `json:"actor"`
	}
	var all []ev
	var pages strings.Builder
	after := uint64(0)
	for range 10 {
		var page struct {
			Data      []json.RawMessage `json:"data"`
			NextAfter uint64            `json:"next_after"`
		}
		r := s.must(t, 200, "GET", "/v1/orgs/org_a/events?limit=2&after="+u64(after)+"&min_sequence="+u64(rev.Sequence), adminToken, nil)
		r.json(t, &page)
		sequenceOf(t, r)
		pages.Write(r.Body)
		if len(page.Data) == 0 {
			if page.NextAfter != after {
				t.Errorf("empty page: next_after %d, want %d", page.NextAfter, after)
			}
			break
		}
		for _, raw := range page.Data {
			var e ev
			if err := json.Unmarshal(raw, &e); err != nil {
				t.Fatal(err)
			}
			all = append(all, e)
		}
		after = page.NextAfter
	}
	want := []string{"key.created", "key.updated", "key.revoked"}
	if len(all) != len(want) {
		t.Fatalf("events = %+v, want types %v", all, want)
	}
	for i, e := range all {
		if e.Type != want[i] || e.OrgID != "org_a" || e.KeyID != k.Key.ID || e.Actor != adminActor || e.Sequence == 0 ||
			(i > 0 && e.Sequence <= all[i-1].Sequence) {
			t.Errorf("event %d = %+v", i, e)
		}
	}
	if all[2].Sequence != rev.Sequence {
		t.Errorf("revoke event at %d, reply said %d", all[2].Sequence, rev.Sequence)
	}
	if strings.Contains(pages.String(), k.Secret) {
		t.Error("an audit event contains the key's secret")
	}
	for _, bad := range []string{"after=-1", "after=x", "limit=0", "limit=1001"} {
		s.mustFail(t, domain.EInvalid, "GET", "/v1/orgs/org_a/events?"+bad, adminToken, nil)
	}
}

func TestListPermissions(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	var list permissionList
	r := s.must(t, 200, "GET", "/v1/permissions", adminToken, nil)
	r.json(t, &list)
	if list.Data == nil || len(list.Data) != 0 || !strings.Contains(string(r.Body), `"data":[]`) {
		t.Errorf("empty catalog: %s", r.Body)
	}
	s.definePermissions("posts:write", "posts:read")
	var ret domain.PermissionResult
	s.must(t, 200, "DELETE", "/v1/permissions/posts:write", adminToken, nil).json(t, &ret)
	r = s.must(t, 200, "GET", "/v1/permissions?min_sequence="+u64(ret.Sequence), adminToken, nil)
	r.json(t, &list)
	want := []domain.Permission{
		{Slug: "posts:read", Description: "allows posts:read", Status: "active"},
		{Slug: "posts:write", Description: "allows posts:write", Status: "retired"},
	}
	if len(list.Data) != 2 || list.Data[0] != want[0] || list.Data[1] != want[1] {
		t.Errorf("catalog = %+v, want %+v", list.Data, want)
	}
	if sequenceOf(t, r) < ret.Sequence {
		t.Errorf("Keyd-Sequence below the retire's sequence")
	}
}

func TestEveryReadCarriesSequence(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	k := s.createKey("org_a", "k")
	tok := s.session("org_a", "u")
	for _, c := range []struct{ path, token string }{
		{"/v1/orgs/org_a/keys", adminToken},
		{"/v1/orgs/org_a/keys", tok},
		{"/v1/orgs/org_a/keys/" + k.Key.ID + "?min_sequence=" + u64(k.Sequence), adminToken},
		{"/v1/orgs/org_a/keys/" + k.Key.ID, tok},
		{"/v1/orgs/org_a/events", adminToken},
		{"/v1/permissions", adminToken},
		{"/v1/permissions", tok},
	} {
		r := s.must(t, 200, "GET", c.path, c.token, nil)
		sequenceOf(t, r)
	}
}
