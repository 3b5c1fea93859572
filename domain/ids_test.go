package domain_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func TestValidOrgID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bool
	}{
		{"org_123", true},
		{"a", true},
		{"A-Z_a-z_0-9", true},
		{"_leading", true},
		{"-leading", true},
		{strings.Repeat("o", 64), true},
		{strings.Repeat("o", 65), false},
		{"", false},
		{"org.123", false}, // a dot would split the NATS subject
		{"org*", false},
		{"org>", false},
		{"org 1", false},
		{"org/1", false},
		{"orgé", false},
		{"組織", false},
		{"org\x00", false},
		{"org\n", false},
	}
	for _, tt := range tests {
		if got := domain.ValidOrgID(tt.in); got != tt.want {
			t.Errorf("ValidOrgID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestValidKeyID(t *testing.T) {
	t.Parallel()
	id, err := domain.NewULID(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC), bytes.NewReader(make([]byte, 16)))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		in   string
		want bool
	}{
		{"key_" + id, true},
		{"key_01J0000000000000000000000Z", true},
		{"key_7ZZZZZZZZZZZZZZZZZZZZZZZZZ", true},  // largest ULID
		{"key_8ZZZZZZZZZZZZZZZZZZZZZZZZZ", false}, // overflows 128 bits
		{id, false},
		{"kez_" + id, false},
		{"KEY_" + id, false},
		{"key-" + id, false},
		{"key_" + id[:25], false},
		{"key_" + id + "0", false},
		{"key_", false},
		{"", false},
		{"key_01J000000000000000000000IL", false}, // I and L are not Crockford base32
		{"key_01J000000000000000000000U0", false},
		{"key_01J00000000000000000000-00", false},
		{"key_01J00000000000000000000é0", false},
	}
	for _, tt := range tests {
		if got := domain.ValidKeyID(tt.in); got != tt.want {
			t.Errorf("ValidKeyID(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestValidSlug(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want bool
	}{
		{"posts:read", true},
		{"a", true},
		{"0", true},
		{"a.b_c-d:e", true},
		{"a" + strings.Repeat("b", 127), true},
		{"a" + strings.Repeat("b", 128), false},
		{strings.Repeat("x", 129), false},
		{"", false},
		{"Posts:read", false},
		{"posts:Read", false},
		{"_posts", false},
		{"-posts", false},
		{".posts", false},
		{":posts", false},
		{"posts read", false},
		{"posts*", false},
		{"posts>", false},
		{"posts/read", false},
		{"pósts", false},
		{"ключ", false},
		{"posts\n", false},
	}
	for _, tt := range tests {
		if got := domain.ValidSlug(tt.in); got != tt.want {
			t.Errorf("ValidSlug(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestNewULID(t *testing.T) {
	t.Parallel()
	at := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	a, err := domain.NewULID(at, bytes.NewReader(bytes.Repeat([]byte{1}, 10)))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := domain.NewULID(at, bytes.NewReader(bytes.Repeat([]byte{1}, 10)))
	c, _ := domain.NewULID(at.Add(time.Millisecond), bytes.NewReader(bytes.Repeat([]byte{1}, 10)))
	if a != b {
		t.Errorf("NewULID is not deterministic: %q, %q", a, b)
	}
	if !(a < c) {
		t.Errorf("a later ULID %q does not sort after %q", c, a)
	}
	if !domain.ValidKeyID(domain.KeyIDPrefix + a) {
		t.Errorf("key_%s is not a valid key id", a)
	}
	if _, err := domain.NewULID(at, bytes.NewReader(nil)); err == nil {
		t.Errorf("NewULID with an empty reader succeeded")
	}
}
