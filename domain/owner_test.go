package domain_test

import (
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func TestValidUserID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in string
		ok bool
	}{
		{"u_1", true},
		{"alice@example.com", true},
		{"auth0|123", false},
		{"google-oauth2:1234+x.y-z", true},
		{strings.Repeat("u", 128), true},
		{strings.Repeat("u", 129), false},
		{"", false},
		{".", false},
		{"..", false},
		{"...", true},
		{"a b", false},
		{"a/b", false},
		{"é", false},
		{"a\x00", false},
	}
	for _, tt := range tests {
		if got := domain.ValidUserID(tt.in); got != tt.ok {
			t.Errorf("ValidUserID(%q) = %v, want %v", tt.in, got, tt.ok)
		}
		err := domain.CheckUserID("owner.id", tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("CheckUserID(%q) = %v", tt.in, err)
		}
		if err != nil && (domain.ErrorCode(err) != domain.EInvalid || !strings.Contains(domain.ErrorMessage(err), "owner.id")) {
			t.Errorf("CheckUserID(%q) = %v, want invalid_argument naming owner.id", tt.in, err)
		}
	}
}

func TestCheckOwner(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      *domain.Owner
		want    domain.Owner
		code    string
		mention string
	}{
		{"absent: the organization", nil, domain.Owner{Type: "organization", ID: "org_1"}, "", ""},
		{"the organization itself", &domain.Owner{Type: "organization", ID: "org_1"}, domain.Owner{Type: "organization", ID: "org_1"}, "", ""},
		{"organization owner mismatch", &domain.Owner{Type: "organization", ID: "org_2"}, domain.Owner{}, domain.EInvalid, "org_2"},
		{"a user", &domain.Owner{Type: "user", ID: "u_1"}, domain.Owner{Type: "user", ID: "u_1"}, "", ""},
		{"a user id of a bad shape", &domain.Owner{Type: "user", ID: "u 1"}, domain.Owner{}, domain.EInvalid, "owner.id"},
		{"user dot", &domain.Owner{Type: "user", ID: "."}, domain.Owner{}, domain.EInvalid, "owner.id"},
		{"unknown type", &domain.Owner{Type: "team", ID: "t"}, domain.Owner{}, domain.EInvalid, "owner.type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := domain.CheckOwner("org_1", tt.in)
			if tt.code != "" {
				wantErr(t, err, tt.code, tt.mention)
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("CheckOwner = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestCheckResource(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		ok      bool
		mention string
	}{
		{"project:p_123", true, ""},
		{"bucket:s3://b/a:b@c-d.e", true, ""}, // split at the first ':'; the id may hold ':' and '/'
		{"bucket:a|b", false, "id"},
		{"repo:org/name", true, ""},
		{"a:" + strings.Repeat("x", 256), true, ""},
		{"a:" + strings.Repeat("x", 257), false, "256"},
		{"a:", false, "1 to 256"},
		{"noseparator", false, "<type>:<id>"},
		{"Project:p1", false, "type"},
		{"1project:p1", false, "type"},
		{strings.Repeat("t", 64) + ":x", true, ""},
		{strings.Repeat("t", 65) + ":x", false, "type"},
		{"project:p 1", false, "id"},
		{"project:p,1", false, "id"},
	}
	for _, tt := range tests {
		err := domain.CheckResource("resource", tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("CheckResource(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if err != nil && !strings.Contains(domain.ErrorMessage(err), tt.mention) {
			t.Errorf("CheckResource(%q) message %q does not mention %q", tt.in, domain.ErrorMessage(err), tt.mention)
		}
	}
}

func TestSplitResourceAtFirstColon(t *testing.T) {
	t.Parallel()
	typ, id, ok := domain.SplitResource("doc:team:a/b:c")
	if !ok || typ != "doc" || id != "team:a/b:c" {
		t.Fatalf("SplitResource = %q, %q, %v; want doc, team:a/b:c", typ, id, ok)
	}
	// The type is what comes before the first ':' only: "doc:team" is not
	// a type (':' is not allowed in one), so this is type doc.
	if err := domain.CheckResource("resource", "doc:team:a"); err != nil {
		t.Fatalf("CheckResource: %v", err)
	}
	rs, _ := domain.NormalizeResources([]string{"doc:team:a"})
	if !domain.ResourceAllowed(rs, "doc:team:a") || domain.ResourceAllowed(rs, "doc:team") {
		t.Error("the id after the first ':' is matched whole")
	}
}

func TestNormalizeResources(t *testing.T) {
	t.Parallel()
	many := func(n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = "project:p" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + "-" + itoa(i)
		}
		return out
	}
	if got, err := domain.NormalizeResources(many(100)); err != nil || len(got) != 100 {
		t.Fatalf("100 resources: %d, %v", len(got), err)
	}
	_, err := domain.NormalizeResources(many(101))
	wantErr(t, err, domain.EInvalid, "101", "100")
	got, err := domain.NormalizeResources([]string{"b:2", "a:1", "b:2"})
	if err != nil || strings.Join(got, ",") != "a:1,b:2" {
		t.Fatalf("NormalizeResources = %v, %v; want sorted and de-duplicated", got, err)
	}
	if got, _ := domain.NormalizeResources(nil); got == nil {
		t.Error("NormalizeResources(nil) is nil, want []")
	}
}

func itoa(i int) string {
	if i == 0 {
		return "0"
	}
	var b []byte
	for ; i > 0; i /= 10 {
		b = append([]byte{byte('0' + i%10)}, b...)
	}
	return string(b)
}

func TestResourceAllowed(t *testing.T) {
	t.Parallel()
	key, _ := domain.NormalizeResources([]string{"project:p1", "project:p2", "repo:keyd/api"})
	tests := []struct {
		resources []string
		resource  string
		want      bool
	}{
		{nil, "project:p9", true},                  // no resources: unrestricted
		{key, "project:p1", true},                  // listed
		{key, "project:p3", false},                 // the type is restricted, the id not listed
		{key, "repo:keyd/api", true},               // listed, with '/'
		{key, "repo:keyd/web", false},              // restricted type
		{key, "bucket:b1", true},                   // a type the key lists nothing for
		{key, "proj:p1", true},                     // a prefix of a restricted type is another type
		{key, "project-x:p1", true},                // so is an extension of it
		{[]string{"a:b:c"}, "a:b", false},          // id split at the first ':'
		{[]string{"a:b:c"}, "a:b:c", true},         //
		{[]string{"a-b:x", "a:y"}, "a:x", false},   // sorting puts "a-b:" before "a:"
		{[]string{"a-b:x", "a:y"}, "a-b:y", false}, //
		{[]string{"a-b:x", "a:y"}, "a_b:y", true},  //
		{[]string{"project:p1"}, "project:p10", false},
	}
	for _, tt := range tests {
		if got := domain.ResourceAllowed(tt.resources, tt.resource); got != tt.want {
			t.Errorf("ResourceAllowed(%v, %q) = %v, want %v", tt.resources, tt.resource, got, tt.want)
		}
	}
}

func TestScopeOfSessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read")
	mine := e.create("org_1", domain.CreateKey{Owner: &domain.Owner{Type: "user", ID: "u_1"}})
	theirs := e.create("org_1", domain.CreateKey{Owner: &domain.Owner{Type: "user", ID: "u_2"}})
	org := e.create("org_1", domain.CreateKey{})
	user := domain.Scope{User: "u_1"}
	orgScope := domain.Scope{Organization: true}

	// A user-scope session: another member's key, and an org key, are not_found.
	for _, id := range []string{theirs.Key.ID, org.Key.ID} {
		_, err := e.svc.RevokeKey(e.ctx, "org_1", domain.RevokeKey{KeyID: id, Meta: domain.Meta{Scope: user}})
		wantErr(t, err, domain.ENotFound)
		_, err = e.svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: id, Name: ptr("x"), Meta: domain.Meta{Scope: user}})
		wantErr(t, err, domain.ENotFound)
		_, err = e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: id, Permissions: []string{}, Meta: domain.Meta{Scope: user}})
		wantErr(t, err, domain.ENotFound)
		_, err = e.svc.RotateKey(e.ctx, "org_1", domain.RotateKey{KeyID: id, GracePeriodSeconds: ptr(int64(0)), Meta: domain.Meta{Scope: user}})
		wantErr(t, err, domain.ENotFound)
	}
	if k := e.load("org_1", theirs.Key.ID); k.Status != domain.StatusActive || k.Version != 1 {
		t.Fatalf("another member's key changed: %+v", k)
	}
	// Its own key it may change.
	if _, err := e.svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: mine.Key.ID, Name: ptr("mine"), Meta: domain.Meta{Scope: user}}); err != nil {
		t.Fatal(err)
	}
	// Creates: absent owner is the user; another owner is permission_denied.
	res, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Meta: domain.Meta{Scope: user}})
	if err != nil || res.Key.Owner != (domain.Owner{Type: "user", ID: "u_1"}) {
		t.Fatalf("user-scope create = %+v, %v; want owned by u_1", res.Key.Owner, err)
	}
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Owner: &domain.Owner{Type: "user", ID: "u_2"}, Meta: domain.Meta{Scope: user}})
	wantErr(t, err, domain.EForbidden)
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Owner: &domain.Owner{Type: "organization", ID: "org_1"}, Meta: domain.Meta{Scope: user}})
	wantErr(t, err, domain.EForbidden)
	// An idempotency key another member used does not reveal their key.
	e.create("org_1", domain.CreateKey{Owner: &domain.Owner{Type: "user", ID: "u_2"}, IdempotencyKey: "idem-1"})
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", IdempotencyKey: "idem-1", Meta: domain.Meta{Scope: user}})
	wantErr(t, err, domain.EConflict, "idempotency_key")

	// An organization-scope session creates org keys only, changes org keys,
	// and revokes any key.
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "n", Owner: &domain.Owner{Type: "user", ID: "u_2"}, Meta: domain.Meta{Scope: orgScope}})
	wantErr(t, err, domain.EForbidden)
	_, err = e.svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: theirs.Key.ID, Name: ptr("x"), Meta: domain.Meta{Scope: orgScope}})
	wantErr(t, err, domain.EForbidden)
	if _, err := e.svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: org.Key.ID, Name: ptr("x"), Meta: domain.Meta{Scope: orgScope}}); err != nil {
		t.Fatal(err)
	}
	r, err := e.svc.RevokeKey(e.ctx, "org_1", domain.RevokeKey{KeyID: theirs.Key.ID, Meta: domain.Meta{Scope: orgScope}})
	if err != nil || r.Key.Status != domain.StatusRevoked {
		t.Fatalf("org-scope revoke of a member's key = %v, %v", r.Key.Status, err)
	}
}
