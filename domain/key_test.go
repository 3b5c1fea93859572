package domain_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func TestCheckName(t *testing.T) {
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
	want := []string{"created_at", "expires_at", "id", "last_used_at", "mask", "metadata", "name", "org_id", "owner", "permissions", "revoked_at", "status", "version"}
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
