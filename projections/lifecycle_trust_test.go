package projections

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// TestLifecycleEventsUnderInvariants: keyd's signed lifecycle events pass
// the projector's invariants on apply (key.expiring keeps the key's version
// and is projected; the suspend after it is the next version), and a replay
// of keyd's own signed org.policy_changed after a later one is set aside
// (version), by the projector and by a rebuild: the policies row stays as
// the last set_policy left it, with the organization's version.
func TestLifecycleEventsUnderInvariants(t *testing.T) {
	t.Parallel()
	e := newKeydEnv(t)
	var mu sync.Mutex
	var got []eventstore.Rejection
	p := e.projector(e.pool)
	p.OnRejected = func(r eventstore.Rejection) { mu.Lock(); got = append(got, r); mu.Unlock() }
	e.start(p)

	const org = "org_lc"
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Millisecond)
	k, err := e.svc.CreateKey(e.ctx, org, domain.CreateKey{Name: "noticed", ExpiresAt: &exp})
	if err != nil {
		t.Fatal(err)
	}
	if ok, _, err := e.svc.AppendNotice(e.ctx, org, k.Key.ID, domain.EventKeyExpiring); err != nil || !ok {
		t.Fatalf("AppendNotice = %v, %v", ok, err)
	}
	if _, err := e.svc.SuspendKey(e.ctx, org, domain.SuspendKey{KeyID: k.Key.ID, Reason: "after the notice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.svc.SetPolicy(e.ctx, org, domain.SetPolicy{AllowedCIDRs: []string{"10.0.0.0/8"}}); err != nil {
		t.Fatal(err)
	}
	first := e.w.LastRaw(t, domain.OrgSubject(org))
	if _, err := e.svc.SetPolicy(e.ctx, org, domain.SetPolicy{LeakAction: ptr(domain.LeakNotify)}); err != nil {
		t.Fatal(err)
	}
	replay := e.w.Publish(t, domain.OrgSubject(org), first.Data, first.Header.Get(domain.SignatureHeader))
	e.caughtUp(p)
	if s := p.Status(); s.Err != nil {
		t.Fatalf("the projector stopped: %v", s.Err)
	}
	check := func(when string) {
		t.Helper()
		row := e.rows(`SELECT status || ' ' || version || ' ' || (expiring_noticed = expires_at)::text FROM keys WHERE key_id = $1`, k.Key.ID)
		if len(row) != 1 || row[0] != "suspended 2 true" {
			t.Errorf("%s: key row %v, want suspended at version 2 with key.expiring noticed", when, row)
		}
		pol := e.rows(`SELECT (policy->>'leak_action') || ' ' || coalesce(array_to_string(allowed_cidrs, ','), 'any') || ' ' || version FROM policies WHERE org_id = $1`, org)
		if len(pol) != 1 || pol[0] != "notify any 2" {
			t.Errorf("%s: policies row %v, want notify any 2 (the replay of the first policy set aside)", when, pol)
		}
		if n := e.count(`SELECT count(*) FROM audit_events WHERE key_id = $1`, k.Key.ID); n != 3 {
			t.Errorf("%s: %d audit events for the key, want 3 (created, expiring, suspended)", when, n)
		}
	}
	check("projector")
	mu.Lock()
	if len(got) != 1 || got[0].Reason != eventstore.RejectVersion || got[0].Sequence != replay {
		t.Errorf("projector set aside %+v, want only the replay at %d (version)", got, replay)
	}
	mu.Unlock()

	var out bytes.Buffer
	if err := Rebuild(e.ctx, e.pool, e.js, testEventKey, &out); err != nil {
		t.Fatalf("rebuild: %v\n%s", err, out.String())
	}
	check("rebuild")
	if n := strings.Count(out.String(), "set aside the event at sequence"); n != 1 {
		t.Errorf("the rebuild set aside %d events, want 1:\n%s", n, out.String())
	}
}

func ptr[T any](v T) *T { return &v }
