package domain_test

import (
	"context"
	"slices"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// listedKeys is a key directory that lists what the test says, stale
// entries included (a lagging listing).
type listedKeys map[string][]string

func (l listedKeys) UserKeyIDs(_ context.Context, org, user string) ([]string, uint64, error) {
	return l[org+"/"+user], 1, nil
}

func TestRevokeUserKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	u1 := &domain.Owner{Type: "user", ID: "u_1"}
	a := e.create("org_1", domain.CreateKey{Owner: u1})
	b := e.create("org_1", domain.CreateKey{Owner: u1})
	done := e.create("org_1", domain.CreateKey{Owner: u1})
	other := e.create("org_1", domain.CreateKey{Owner: &domain.Owner{Type: "user", ID: "u_2"}})
	if _, err := e.svc.RevokeKey(e.ctx, "org_1", domain.RevokeKey{KeyID: done.Key.ID}); err != nil {
		t.Fatal(err)
	}
	// The directory lists a revoked key and, wrongly, another user's: the
	// command decides on each key's own state.
	e.svc.Keys = listedKeys{"org_1/u_1": {a.Key.ID, b.Key.ID, done.Key.ID, other.Key.ID}}

	res, err := e.svc.RevokeUserKeys(e.ctx, "org_1", domain.RevokeUserKeys{UserID: "u_1", Reason: "offboarded"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{a.Key.ID, b.Key.ID}; !slices.Equal(res.Revoked, want) {
		t.Fatalf("revoked %v, want %v", res.Revoked, want)
	}
	if res.Sequence != e.lastSeq() {
		t.Errorf("sequence %d, want the last event's %d", res.Sequence, e.lastSeq())
	}
	for _, id := range res.Revoked {
		k := e.load("org_1", id)
		ev, _ := e.lastEvent("org_1", id)
		if k.Status != domain.StatusRevoked || k.RevokeReason != "offboarded" || ev.Type != domain.EventKeyRevoked {
			t.Errorf("%s: %s %q (%s)", id, k.Status, k.RevokeReason, ev.Type)
		}
	}
	if k := e.load("org_1", other.Key.ID); k.Status != domain.StatusActive {
		t.Error("another user's key was revoked")
	}
	last := e.lastSeq()
	again, err := e.svc.RevokeUserKeys(e.ctx, "org_1", domain.RevokeUserKeys{UserID: "u_1"})
	if err != nil || len(again.Revoked) != 0 || again.Revoked == nil || e.lastSeq() != last || again.Sequence < 1 {
		t.Fatalf("repeat: %+v %v (appended %d)", again, err, e.lastSeq()-last)
	}

	_, err = e.svc.RevokeUserKeys(e.ctx, "org_1", domain.RevokeUserKeys{UserID: "bad user"})
	wantErr(t, err, domain.EInvalid, "user_id")
	e.svc.Keys = nil
	_, err = e.svc.RevokeUserKeys(e.ctx, "org_1", domain.RevokeUserKeys{UserID: "u_1"})
	wantErr(t, err, domain.EUnavailable)
}
