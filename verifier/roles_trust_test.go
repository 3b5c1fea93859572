package verifier

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// TestReplayedRoleEventIsSetAside (H2 for roles): keyd's own signed
// role.defined, published again after the role was redefined (its role
// catalog version is not the last + 1), and an unsigned role event are set
// aside by a live verifier and one booted from the snapshot: the key keeps
// the redefined role's permissions, and keyd's next role event applies.
func TestReplayedRoleEventIsSetAside(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("posts:read", "posts:write", "users:read")
	first := e.defineRole("editor", "posts:read", "posts:write")
	k := e.create("org_1", domain.CreateKey{Roles: []string{"editor"}})
	e.defineRole("editor", "posts:read")
	old := e.w.Raw(t, first)
	e.project()
	var liveRj, bootedRj rejections
	live := e.verifier(func(c *Config) { c.OnRejected = liveRj.add })

	// Replayed after the live verifier subscribed; the booted one boots
	// from the snapshot taken before the replays, then tails them.
	replayed := e.w.Publish(t, domain.RolesSubject, old.Data, old.Header.Get(domain.SignatureHeader))
	forged := forgedRoleEvent(t, "editor", []string{"posts:read", "posts:write", "users:read"}, 3)
	unsigned := e.w.Publish(t, domain.RolesSubject, forged, "")
	booted := e.verifier(func(c *Config) { c.OnRejected = bootedRj.add })
	want := []string{"posts:read"}
	for name, v := range map[string]*Verifier{"live": live, "booted": booted} {
		if err := v.WaitApplied(e.ctx, unsigned); err != nil {
			t.Fatal(err)
		}
		if r := verify(t, v, k.Secret); !r.Valid || !slices.Equal(r.Key.Permissions, want) {
			t.Errorf("%s verifier after the replays: %s %v, want %v", name, r.Code, r.Key.Permissions, want)
		}
	}
	for name, got := range map[string][]string{"live": liveRj.reasons(), "booted": bootedRj.reasons()} {
		if !slices.Equal(got, []string{eventstore.RejectVersion, eventstore.RejectUnsigned}) {
			t.Errorf("%s verifier set aside %v, want [version unsigned] (sequences %d, %d)", name, got, replayed, unsigned)
		}
	}

	// The command side builds on version 2 too; both verifiers apply it.
	seq := e.defineRole("editor", "posts:read", "users:read")
	want = []string{"posts:read", "users:read"}
	for name, v := range map[string]*Verifier{"live": live, "booted": booted} {
		if err := v.WaitApplied(e.ctx, seq); err != nil {
			t.Fatal(err)
		}
		if r := verify(t, v, k.Secret); !slices.Equal(r.Key.Permissions, want) {
			t.Errorf("%s verifier after keyd's next role event: %v, want %v", name, r.Key.Permissions, want)
		}
	}
	roles, _, err := e.svc.Roles(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if roles.Version() != 3 {
		t.Errorf("role catalog version %d after three role events of keyd, want 3", roles.Version())
	}
}

// forgedRoleEvent is a role.defined any NATS client could publish: role slug
// with perms, the catalog at version.
func forgedRoleEvent(t *testing.T, slug string, perms []string, version int64) []byte {
	t.Helper()
	r := domain.Role{Slug: slug, Description: "forged", Permissions: perms, Status: domain.PermissionActive}
	data, err := json.Marshal(domain.RoleEventData{Role: r, Roles: []domain.Role{r}, Version: version})
	if err != nil {
		t.Fatal(err)
	}
	out, err := json.Marshal(domain.Event{ID: "evt_forged_role", Type: domain.EventRoleDefined, OccurredAt: time.Now().UTC(),
		Actor: domain.Actor{Type: "user", ID: "mallory"}, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
