package domain_test

import (
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func TestEventCheckSubject(t *testing.T) {
	t.Parallel()
	key := domain.Event{ID: "e1", Type: domain.EventKeyRevoked, OrgID: "org_a", KeyID: "key_01ARZ3NDEKTSV4RRFFQ69G5FAV"}
	cat := domain.Event{ID: "e2", Type: domain.EventPermissionDefined}
	for _, tc := range []struct {
		ev      domain.Event
		subject string
		ok      bool
	}{
		{key, "keyd.events.keys.org_a.key_01ARZ3NDEKTSV4RRFFQ69G5FAV", true},
		{key, "keyd.events.keys.org_b.key_01ARZ3NDEKTSV4RRFFQ69G5FAV", false}, // another org's subject
		{key, "keyd.events.keys.org_a.key_01ARZ3NDEKTSV4RRFFQ69G5FAW", false},
		{key, domain.CatalogSubject, false},
		{cat, domain.CatalogSubject, true},
		{cat, "keyd.events.keys.org_a.key_01ARZ3NDEKTSV4RRFFQ69G5FAV", false},
	} {
		err := tc.ev.CheckSubject(tc.subject)
		if (err == nil) != tc.ok || (err != nil && domain.ErrorCode(err) != domain.EInvalid) {
			t.Errorf("%s on %s: %v, want ok=%v", tc.ev.Type, tc.subject, err, tc.ok)
		}
	}
}
