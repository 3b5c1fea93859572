package projections

import (
	"bytes"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// TestReplayedRoleEventNotProjected (H2 for roles): keyd's own signed
// role.defined, published again after the role was redefined, carries a
// role catalog version that is not the last + 1: neither the projector nor
// a rebuild applies it (the role keeps its redefinition, the keys holding
// it their effective permissions), each reports it with its sequence, and
// keyd's next role event (version 3) applies.
func TestReplayedRoleEventNotProjected(t *testing.T) {
	t.Parallel()
	e := newKeydEnv(t)
	var mu sync.Mutex
	var got []eventstore.Rejection
	p := e.projector(e.pool)
	p.OnRejected = func(r eventstore.Rejection) { mu.Lock(); got = append(got, r); mu.Unlock() }
	e.start(p)

	e.define("posts:read", "read")
	e.define("posts:write", "write")
	first := e.defineRole("editor", "posts:read", "posts:write")
	k, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "holder", Roles: []string{"editor"}})
	if err != nil {
		t.Fatal(err)
	}
	e.defineRole("editor", "posts:read")
	old := e.w.Raw(t, first)
	seq := e.w.Publish(t, domain.RolesSubject, old.Data, old.Header.Get(domain.SignatureHeader))
	e.caughtUp(p)
	if s := p.Status(); s.Err != nil {
		t.Fatalf("the projector stopped: %v", s.Err)
	}
	check := func(when, wantPerms string, wantVersion int) {
		t.Helper()
		if r := e.rows(`SELECT array_to_string(permissions, ',') || ' ' || version FROM roles WHERE slug = 'editor'`); len(r) != 1 || r[0] != fmt.Sprintf("%s %d", wantPerms, wantVersion) {
			t.Errorf("%s: role row %v, want %s %d", when, r, wantPerms, wantVersion)
		}
		if r := e.rows(`SELECT array_to_string(effective_permissions, ',') FROM keys WHERE key_id = $1`, k.Key.ID); len(r) != 1 || r[0] != wantPerms {
			t.Errorf("%s: the holder's effective permissions %v, want %s", when, r, wantPerms)
		}
	}
	check("projector", "posts:read", 2)
	mu.Lock()
	if len(got) != 1 || got[0].Sequence != seq || got[0].Reason != eventstore.RejectVersion || got[0].Subject != domain.RolesSubject {
		t.Errorf("projector set aside %+v, want the replay at %d (version)", got, seq)
	}
	mu.Unlock()

	var out bytes.Buffer
	if err := Rebuild(e.ctx, e.pool, e.js, testEventKey, &out); err != nil {
		t.Fatalf("rebuild: %v\n%s", err, out.String())
	}
	check("rebuild", "posts:read", 2)
	if !strings.Contains(out.String(), fmt.Sprintf("set aside the event at sequence %d ", seq)) {
		t.Errorf("the rebuild's report does not name sequence %d:\n%s", seq, out.String())
	}

	// The projector, which yielded to the rebuild, goes on.
	e.defineRole("editor", "posts:read", "posts:write")
	e.caughtUp(p)
	check("keyd's next role event", "posts:read,posts:write", 3)
}

func (e *env) defineRole(slug string, perms ...string) uint64 {
	e.t.Helper()
	r, err := e.svc.DefineRole(e.ctx, domain.DefineRole{Slug: slug, Description: "role " + slug, Permissions: perms})
	if err != nil {
		e.t.Fatalf("define role %s: %v", slug, err)
	}
	return r.Sequence
}
