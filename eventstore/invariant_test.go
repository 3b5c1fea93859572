package eventstore

import (
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// TestKeyEventInvariant: a notice (key.expiring, key.expired) must carry
// the version the reader last applied for a known, unrevoked key; every
// other key event (key.leaked, key.suspended, ...) the previous + 1.
func TestKeyEventInvariant(t *testing.T) {
	cases := []struct {
		typ     string
		known   bool
		last    int64
		revoked bool
		version int64
		want    string
	}{
		{domain.EventKeyExpiring, true, 3, false, 3, ""},
		{domain.EventKeyExpired, true, 3, false, 3, ""},
		{domain.EventKeyExpiring, true, 3, false, 4, RejectVersion},
		{domain.EventKeyExpired, true, 3, false, 2, RejectVersion},
		{domain.EventKeyExpiring, false, 0, false, 1, RejectVersion},
		{domain.EventKeyExpired, true, 3, true, 3, RejectRevoked},
		{domain.EventKeyLeaked, true, 3, false, 4, ""},
		{domain.EventKeyLeaked, true, 3, false, 3, RejectVersion},
		{domain.EventKeySuspended, true, 3, false, 4, ""},
		{domain.EventKeyResumed, true, 3, true, 4, RejectRevoked},
		{domain.EventKeyCreated, false, 0, false, 1, ""},
	}
	for _, c := range cases {
		if got := KeyEventInvariant(c.typ, c.known, c.last, c.revoked, c.version); got != c.want {
			t.Errorf("KeyEventInvariant(%s, known=%v, last=%d, revoked=%v, version=%d) = %q, want %q",
				c.typ, c.known, c.last, c.revoked, c.version, got, c.want)
		}
	}
}

// TestOrgInvariant: an organization event is the previous version + 1
// (the first is 1); a replay or a gap is set aside.
func TestOrgInvariant(t *testing.T) {
	for _, c := range []struct {
		last, version int64
		want          string
	}{{0, 1, ""}, {4, 5, ""}, {0, 0, RejectVersion}, {0, 2, RejectVersion}, {5, 5, RejectVersion}, {5, 4, RejectVersion}} {
		if got := OrgInvariant(c.last, c.version); got != c.want {
			t.Errorf("OrgInvariant(%d, %d) = %q, want %q", c.last, c.version, got, c.want)
		}
	}
}
