package domain_test

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func TestCheckName(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		in   string
		ok   bool
	}{
		{"empty", "", false},
		{"one rune", "a", true},
		{"one multibyte rune", "é", true},
		{"200 runes", strings.Repeat("n", 200), true},
		{"201 runes", strings.Repeat("n", 201), false},
		{"200 multibyte runes (800 bytes)", strings.Repeat("🔑", 200), true},
		{"201 multibyte runes", strings.Repeat("🔑", 201), false},
		{"invalid UTF-8", "name\xff", false},
		{"truncated UTF-8", "🔑"[:2], false},
		{"spaces", "CI deploy", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := domain.CheckName(tt.in)
			if got := err == nil; got != tt.ok {
				t.Fatalf("CheckName(%q) = %v, want ok=%v", tt.in, err, tt.ok)
			}
			if err != nil {
				if got, want := domain.ErrorCode(err), domain.EInvalid; got != want {
					t.Errorf("code = %q, want %q", got, want)
				}
				if !strings.Contains(domain.ErrorMessage(err), "name") {
					t.Errorf("message %q does not say what was wrong", domain.ErrorMessage(err))
				}
			}
		})
	}
}

func entries(n, valueLen int) map[string]string {
	m := make(map[string]string, n)
	for i := range n {
		m[fmt.Sprintf("k%02d", i)] = strings.Repeat("v", valueLen)
	}
	return m
}

func TestCheckMetadata(t *testing.T) {
	t.Parallel()
	// 4 entries of a 3-byte key each: 12 bytes of keys.
	sized := func(total int) map[string]string {
		m := entries(4, 0)
		m["k00"] = strings.Repeat("v", total-12)
		return m
	}
	tests := []struct {
		name    string
		in      map[string]string
		ok      bool
		mention string
	}{
		{"nil", nil, true, ""},
		{"empty", map[string]string{}, true, ""},
		{"32 entries", entries(32, 1), true, ""},
		{"33 entries", entries(33, 1), false, "33"},
		{"4096 bytes", sized(4096), true, ""},
		{"4097 bytes", sized(4097), false, "4097"},
		{"empty key", map[string]string{"": "v"}, false, "key"},
		{"64-byte key", map[string]string{strings.Repeat("k", 64): "v"}, true, ""},
		{"65-byte key", map[string]string{strings.Repeat("k", 65): "v"}, false, "64"},
		{"empty value", map[string]string{"k": ""}, true, ""},
		{"invalid UTF-8 key", map[string]string{"k\xff": "v"}, false, "UTF-8"},
		{"invalid UTF-8 value", map[string]string{"k": "\xc3"}, false, "UTF-8"},
		{"unicode", map[string]string{"ключ": "значение"}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := domain.CheckMetadata(tt.in)
			if got := err == nil; got != tt.ok {
				t.Fatalf("CheckMetadata = %v, want ok=%v", err, tt.ok)
			}
			if err != nil {
				if got, want := domain.ErrorCode(err), domain.EInvalid; got != want {
					t.Errorf("code = %q, want %q", got, want)
				}
				if msg := domain.ErrorMessage(err); !strings.Contains(msg, "metadata") || !strings.Contains(msg, tt.mention) {
					t.Errorf("message %q does not mention metadata and %q", msg, tt.mention)
				}
			}
		})
	}
}

func TestNormalizePermissions(t *testing.T) {
	t.Parallel()
	tooMany := make([]string, 101)
	for i := range tooMany {
		tooMany[i] = fmt.Sprintf("p%03d", i)
	}
	hundred := tooMany[:100]
	tests := []struct {
		name    string
		in      []string
		want    []string
		wantErr string // substring of the message
	}{
		{"nil", nil, []string{}, ""},
		{"empty", []string{}, []string{}, ""},
		{"sorted", []string{"b", "a", "c:x"}, []string{"a", "b", "c:x"}, ""},
		{"duplicates", []string{"x", "a", "x", "a"}, []string{"a", "x"}, ""},
		{"100", hundred, hundred, ""},
		{"101", tooMany, nil, "101"},
		{"101 duplicates still too many", slices.Repeat([]string{"a"}, 101), nil, "101"},
		{"invalid slug named", []string{"ok", "Not:OK"}, nil, `"Not:OK"`},
		{"empty slug", []string{""}, nil, `""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := slices.Clone(tt.in)
			got, err := domain.NormalizePermissions(in)
			if tt.wantErr != "" {
				if err == nil || domain.ErrorCode(err) != domain.EInvalid || !strings.Contains(domain.ErrorMessage(err), tt.wantErr) {
					t.Fatalf("NormalizePermissions = %v, %v; want invalid_argument naming %s", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got == nil || !slices.Equal(got, tt.want) {
				t.Errorf("NormalizePermissions(%q) = %#v, want %#v", tt.in, got, tt.want)
			}
			if !slices.Equal(in, tt.in) {
				t.Errorf("NormalizePermissions changed its input to %q", in)
			}
		})
	}
}

func TestEffectiveStatus(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { t := now.Add(d); return &t }
	tests := []struct {
		name    string
		status  string
		expires *time.Time
		want    string
	}{
		{"active, no expiry", domain.StatusActive, nil, domain.StatusActive},
		{"expires later", domain.StatusActive, at(time.Nanosecond), domain.StatusActive},
		{"expires exactly now", domain.StatusActive, at(0), domain.StatusExpired},
		{"expired a nanosecond ago", domain.StatusActive, at(-time.Nanosecond), domain.StatusExpired},
		{"revoked", domain.StatusRevoked, nil, domain.StatusRevoked},
		{"revoked and expired", domain.StatusRevoked, at(-time.Hour), domain.StatusRevoked},
	}
	for _, tt := range tests {
		k := domain.KeyState{Status: tt.status, ExpiresAt: tt.expires}
		if got := k.EffectiveStatus(now); got != tt.want {
			t.Errorf("%s: EffectiveStatus = %q, want %q", tt.name, got, tt.want)
		}
		if got := k.View(now, nil).Status; got != tt.want {
			t.Errorf("%s: View().Status = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestViewShape(t *testing.T) {
	t.Parallel()
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	k := domain.KeyState{ID: "key_01J0000000000000000000000Z", OrgID: "org_1", Name: "n",
		Owner: domain.Owner{Type: "organization", ID: "org_1"}, Mask: "sk_…abcd", Digest: "deadbeef",
		Status: domain.StatusActive, CreatedAt: now, Version: 3}
	v := k.View(now, nil)
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	got := slices.Sorted(mapKeys(m))
	want := []string{"created_at", "expires_at", "id", "last_used_at", "mask", "metadata", "name", "org_id", "owner", "permissions", "resources", "revoked_at", "roles", "status", "version"}
	if !slices.Equal(got, want) {
		t.Errorf("KeyView JSON keys = %q, want %q", got, want)
	}
	// Nil slices and maps are [] and {}, absent times null.
	for field, wantJSON := range map[string]string{"permissions": "[]", "metadata": "{}", "expires_at": "null", "revoked_at": "null", "last_used_at": "null"} {
		raw, _ := json.Marshal(m[field])
		if string(raw) != wantJSON {
			t.Errorf("%s = %s, want %s", field, raw, wantJSON)
		}
	}
	if strings.Contains(string(b), "deadbeef") {
		t.Errorf("KeyView JSON %s contains the digest", b)
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// ---- the key's rules ----------------------------------------------------------

// The rules are decided against a state and a time with no store.

var ruleNow = time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)

func at(d time.Duration) *time.Time { t := ruleNow.Add(d); return &t }

// activeKey is a key at version 3 holding a and b.
func activeKey() domain.KeyState {
	return domain.KeyState{
		ID: "key_01J0000000000000000000000Z", OrgID: "org_1", Name: "ci",
		Owner: domain.Owner{Type: "organization", ID: "org_1"}, Mask: "sk_…abcd", Digest: "00ff",
		Permissions: []string{"a", "b"}, Status: domain.StatusActive, CreatedAt: ruleNow.Add(-time.Hour),
		Metadata: map[string]string{"team": "ops"}, Version: 3,
	}
}

func revokedKey() domain.KeyState {
	k := activeKey()
	k.Status, k.RevokedAt = domain.StatusRevoked, at(-time.Minute)
	return k
}

func expiredKey() domain.KeyState {
	k := activeKey()
	k.ExpiresAt = at(-time.Second)
	return k
}

// wantRuleErr checks a rule's error: none when code is "", else that code
// and a message mentioning mention.
func wantRuleErr(t *testing.T, err error, code, mention string) {
	t.Helper()
	if code == "" {
		if err != nil {
			t.Fatalf("error %v, want none", err)
		}
		return
	}
	if domain.ErrorCode(err) != code || !strings.Contains(domain.ErrorMessage(err), mention) {
		t.Fatalf("error %v, want %s mentioning %q", err, code, mention)
	}
}

// unchangedInput checks that a rule left the state it was given alone.
func unchangedInput(t *testing.T, got, was domain.KeyState) {
	t.Helper()
	if !reflect.DeepEqual(got, was) {
		t.Errorf("the rule changed its input:\n got %+v\nwant %+v", got, was)
	}
}

func TestKeyRevoke(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		k       domain.KeyState
		changed bool
	}{
		{"active", activeKey(), true},
		{"expired (still revocable)", expiredKey(), true},
		{"already revoked", revokedKey(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			was := deepCopy(tt.k)
			d, changed := tt.k.Revoke("leaked", ruleNow)
			unchangedInput(t, tt.k, was)
			if changed != tt.changed {
				t.Fatalf("changed = %v, want %v", changed, tt.changed)
			}
			if !changed {
				if !reflect.DeepEqual(d, domain.KeyRevokedData{}) {
					t.Errorf("no change but payload %+v", d)
				}
				return
			}
			want := tt.k
			want.Status, want.RevokedAt, want.RevokeReason, want.Version = domain.StatusRevoked, &ruleNow, "leaked", tt.k.Version+1
			if !reflect.DeepEqual(d, domain.KeyRevokedData{Reason: "leaked", Key: want}) {
				t.Errorf("payload %+v,\nwant key %+v", d, want)
			}
		})
	}
}

func TestKeySetPermissions(t *testing.T) {
	t.Parallel()
	catalog := domain.NewCatalog([]domain.Permission{
		{Slug: "a", Status: domain.PermissionActive}, {Slug: "b", Status: domain.PermissionActive},
		{Slug: "c", Status: domain.PermissionActive}, {Slug: "old", Status: domain.PermissionRetired},
	})
	v := func(n int64) *int64 { return &n }
	tests := []struct {
		name     string
		k        domain.KeyState
		perms    []string
		expected *int64
		changed  bool
		code     string
		mention  string
	}{
		{"replace", activeKey(), []string{"a", "c"}, nil, true, "", ""},
		{"remove all", activeKey(), []string{}, nil, true, "", ""},
		{"at the expected version", activeKey(), []string{"c"}, v(3), true, "", ""},
		{"the same permissions", activeKey(), []string{"a", "b"}, nil, false, "", ""},
		{"the same, at the expected version", activeKey(), []string{"a", "b"}, v(3), false, "", ""},
		{"another version than expected", activeKey(), []string{"c"}, v(2), false, domain.EConflict, "version 3"},
		{"undefined permission", activeKey(), []string{"a", "nope"}, nil, false, domain.EInvalid, `"nope" is not defined`},
		{"retired permission", activeKey(), []string{"old"}, nil, false, domain.EInvalid, "retired"},
		// The catalog is checked first, then the version, then the status.
		{"retired permission on a revoked key", revokedKey(), []string{"old"}, nil, false, domain.EInvalid, "retired"},
		{"wrong version of a revoked key", revokedKey(), []string{"c"}, v(1), false, domain.EConflict, "expected version 1"},
		{"revoked key", revokedKey(), []string{"c"}, nil, false, domain.EPrecondition, "revoked"},
		{"expired key", expiredKey(), []string{"c"}, nil, false, domain.EPrecondition, "expired"},
		{"revoked key, the same permissions", revokedKey(), []string{"a", "b"}, nil, false, domain.EPrecondition, "cannot be changed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			was := deepCopy(tt.k)
			d, changed, err := tt.k.SetPermissions(tt.perms, catalog, tt.expected, ruleNow)
			wantRuleErr(t, err, tt.code, tt.mention)
			unchangedInput(t, tt.k, was)
			if changed != tt.changed {
				t.Fatalf("changed = %v, want %v", changed, tt.changed)
			}
			if !changed {
				return
			}
			want := deepCopy(tt.k)
			want.Permissions, want.Version = tt.perms, tt.k.Version+1
			if !reflect.DeepEqual(d, domain.KeyPermissionsChangedData{Permissions: tt.perms, Previous: tt.k.Permissions, Key: want}) {
				t.Errorf("payload %+v", d)
			}
		})
	}
}

// deepCopy returns k with its own permissions and metadata.
func deepCopy(k domain.KeyState) domain.KeyState {
	k.Permissions = append([]string(nil), k.Permissions...)
	md := make(map[string]string, len(k.Metadata))
	for key, v := range k.Metadata {
		md[key] = v
	}
	k.Metadata = md
	return k
}

func TestKeyUpdate(t *testing.T) {
	t.Parallel()
	name := func(s string) *string { return &s }
	tests := []struct {
		name     string
		k        domain.KeyState
		newName  *string
		md       map[string]string
		wantData domain.KeyUpdatedData // without Key
		changed  bool
		code     string
	}{
		{"rename", activeKey(), name("deploy"), nil, domain.KeyUpdatedData{Name: name("deploy")}, true, ""},
		{"new metadata", activeKey(), nil, map[string]string{"team": "dev"}, domain.KeyUpdatedData{Metadata: map[string]string{"team": "dev"}}, true, ""},
		{"clear metadata", activeKey(), nil, map[string]string{}, domain.KeyUpdatedData{Metadata: map[string]string{}}, true, ""},
		{"both", activeKey(), name("deploy"), map[string]string{"x": "y"}, domain.KeyUpdatedData{Name: name("deploy"), Metadata: map[string]string{"x": "y"}}, true, ""},
		{"same name, new metadata: only metadata named", activeKey(), name("ci"), map[string]string{"x": "y"}, domain.KeyUpdatedData{Metadata: map[string]string{"x": "y"}}, true, ""},
		{"same name and metadata", activeKey(), name("ci"), map[string]string{"team": "ops"}, domain.KeyUpdatedData{}, false, ""},
		{"nothing given", activeKey(), nil, nil, domain.KeyUpdatedData{}, false, ""},
		{"revoked key", revokedKey(), name("deploy"), nil, domain.KeyUpdatedData{}, false, domain.EPrecondition},
		{"expired key, no change", expiredKey(), name("ci"), nil, domain.KeyUpdatedData{}, false, domain.EPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			was := deepCopy(tt.k)
			d, changed, err := tt.k.Update(tt.newName, tt.md, ruleNow)
			wantRuleErr(t, err, tt.code, "cannot be updated")
			unchangedInput(t, tt.k, was)
			if changed != tt.changed {
				t.Fatalf("changed = %v, want %v", changed, tt.changed)
			}
			if !changed {
				return
			}
			want := deepCopy(tt.k)
			if tt.wantData.Name != nil {
				want.Name = *tt.wantData.Name
			}
			if tt.wantData.Metadata != nil {
				want.Metadata = tt.wantData.Metadata
			}
			want.Version = tt.k.Version + 1
			tt.wantData.Key = want
			if !reflect.DeepEqual(d, tt.wantData) {
				t.Errorf("payload %+v,\nwant %+v", d, tt.wantData)
			}
		})
	}
}

func TestKeyRotate(t *testing.T) {
	t.Parallel()
	next := domain.Credential{KeyID: "key_01J0000000000000000000001Z", Mask: "sk_…wxyz", Digest: "11ee"}
	expiresSoon := activeKey()
	expiresSoon.ExpiresAt = at(10 * time.Minute)
	tests := []struct {
		name      string
		k         domain.KeyState
		grace     time.Duration
		oldExpiry time.Time
		code      string
	}{
		{"no grace: the old key ends now", activeKey(), 0, ruleNow, ""},
		{"grace period", activeKey(), time.Hour, ruleNow.Add(time.Hour), ""},
		{"grace beyond an earlier expiry does not extend it", expiresSoon, time.Hour, ruleNow.Add(10 * time.Minute), ""},
		{"grace within an earlier expiry", expiresSoon, time.Minute, ruleNow.Add(time.Minute), ""},
		{"revoked key", revokedKey(), time.Hour, time.Time{}, domain.EPrecondition},
		{"expired key", expiredKey(), time.Hour, time.Time{}, domain.EPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			was := deepCopy(tt.k)
			created, rotated, err := tt.k.Rotate(next, tt.grace, domain.DefaultPolicy("org_1"), domain.RoleCatalog{}, ruleNow)
			wantRuleErr(t, err, tt.code, "cannot be rotated")
			unchangedInput(t, tt.k, was)
			if err != nil {
				return
			}
			wantNew := domain.KeyState{
				ID: next.KeyID, OrgID: "org_1", Name: "ci", Owner: domain.Owner{Type: "organization", ID: "org_1"},
				Mask: next.Mask, Digest: next.Digest, Permissions: []string{"a", "b"}, Status: domain.StatusActive,
				CreatedAt: ruleNow, Metadata: map[string]string{"team": "ops"}, RotatedFrom: tt.k.ID, Version: 1,
				ExpiresAt: tt.k.ExpiresAt, // v1.1: the new key keeps the old key's expiry
				Roles:     []string{}, Resources: []string{},
			}
			if !reflect.DeepEqual(created, domain.KeyCreatedData{Key: wantNew, RotatedFrom: tt.k.ID}) {
				t.Errorf("created %+v,\nwant key %+v", created, wantNew)
			}
			wantOld := deepCopy(tt.k)
			wantOld.ExpiresAt, wantOld.RotatedTo, wantOld.Version = &tt.oldExpiry, next.KeyID, tt.k.Version+1
			wantRotated := domain.KeyRotatedData{NewKeyID: next.KeyID, GracePeriodSeconds: int64(tt.grace / time.Second), ExpiresAt: tt.oldExpiry, Key: wantOld}
			if !reflect.DeepEqual(rotated, wantRotated) {
				t.Errorf("rotated %+v,\nwant %+v", rotated, wantRotated)
			}
			// The new key shares nothing with the old one.
			created.Key.Permissions[0], created.Key.Metadata["team"] = "z", "z"
			if tt.k.Permissions[0] != "a" || tt.k.Metadata["team"] != "ops" {
				t.Error("the new key's permissions or metadata alias the old key's")
			}
		})
	}
}
