package verifier

import (
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// applier owns the key state while it changes: it is used by one goroutine
// only (the stream follower), so writers never contend; readers see only
// what it publishes.
type applier struct {
	v       *Verifier
	in      *interner
	retired map[string]struct{} // retired catalog permissions
	applied uint64              // last stream sequence applied
	keys    int
	// roles is the role catalog; holders indexes the grants holding each
	// role, so a role change recomputes exactly those.
	roles   map[string]roleState
	holders map[string][]*permSet

	// While booting, keys go into private tables, published at once when
	// the verifier has caught up.
	work *[nShards]table
	// After boot, a shard that gains keys is copied once per batch and
	// published at the end of the batch.
	fresh   [nShards]table
	touched []int
}

func newApplier(v *Verifier) *applier {
	a := &applier{v: v}
	a.reset()
	return a
}

// reset forgets everything (before a full replay). Only while booting.
func (a *applier) reset() {
	a.in = newInterner()
	a.retired = map[string]struct{}{}
	a.roles = map[string]roleState{}
	a.holders = map[string][]*permSet{}
	a.work = new([nShards]table)
	a.applied = 0
	a.keys = 0
}

// presize makes the (booting) tables ready for n keys.
func (a *applier) presize(n int) {
	per := n / nShards
	if per < 8 {
		return
	}
	per += per / 8 // the shards' counts vary
	for s := range a.work {
		if a.work[s] == nil {
			a.work[s] = make(table, per)
		}
	}
}

// put stores ent as the state of the key with digest d.
func (a *applier) put(d domain.Digest, ent *entry) {
	s := shardOf(&d)
	var t table
	if a.work != nil {
		t = a.work[s]
		if t == nil {
			t = make(table)
			a.work[s] = t
		}
	} else if t = a.fresh[s]; t == nil {
		cur := *a.v.keys.shards[s].Load()
		if sl := cur[d]; sl != nil {
			a.store(sl, ent)
			return
		}
		t = maps.Clone(cur)
		if t == nil {
			t = make(table)
		}
		a.fresh[s] = t
		a.touched = append(a.touched, s)
	}
	if sl := t[d]; sl != nil {
		a.store(sl, ent)
		return
	}
	t[d] = newSlot(ent)
	a.keys++
}

// store replaces the state in an existing slot by a copy of ent.
func (a *applier) store(sl *slot, ent *entry) {
	if old := sl.state.Load(); old.id() != ent.id() {
		// Two keys with one digest: impossible short of a broken
		// digester. Keep the first key; say so.
		a.v.log.Error("verifier: two keys have the same digest; keeping the first",
			"first", old.id(), "second", ent.id())
		return
	}
	n := *ent
	sl.state.Store(&n)
}

// commit publishes the shards copied in this batch.
func (a *applier) commit() {
	for _, s := range a.touched {
		t := a.fresh[s]
		a.v.keys.shards[s].Store(&t)
		a.fresh[s] = nil
	}
	a.touched = a.touched[:0]
	a.v.nkeys.Store(int64(a.keys))
}

// publishWork publishes the tables built while booting.
func (a *applier) publishWork() {
	for s, t := range a.work {
		if t == nil {
			a.v.keys.shards[s].Store(&emptyTable)
		} else {
			a.v.keys.shards[s].Store(&t)
		}
	}
	a.work = nil
	a.v.nkeys.Store(int64(a.keys))
}

// apply applies one event, stored on subject. Errors describe an event that
// cannot be applied.
func (a *applier) apply(subject string, data []byte) error {
	ev, err := domain.DecodeEvent(data)
	if err != nil {
		return err
	}
	if err := ev.CheckSubject(subject); err != nil {
		return err
	}
	if ev.IsKeyEvent() {
		k, err := ev.KeyState()
		if err != nil {
			return err
		}
		var d domain.Digest
		if len(k.Digest) != 2*len(d) {
			return fmt.Errorf("event %s carries no valid digest for key %s", ev.ID, k.ID)
		}
		if _, err := hex.Decode(d[:], []byte(k.Digest)); err != nil {
			return fmt.Errorf("event %s carries no valid digest for key %s", ev.ID, k.ID)
		}
		ps := a.grantSlices(k.Permissions, k.Roles, k.Resources)
		ent := a.in.entryFromKey(&k, ps)
		a.put(d, &ent)
		return nil
	}
	if ev.IsRoleEvent() {
		rc, err := ev.RoleCatalog()
		if err != nil {
			return err
		}
		a.setRoles(rc.List())
		return nil
	}
	c, err := ev.Catalog()
	if err != nil {
		return err
	}
	a.setCatalog(c.List())
	return nil
}

// setCatalog takes the catalog after a catalog event. Newly retired
// permissions are taken out of every key that holds them (retired slugs are
// never defined again, so nothing is ever put back).
func (a *applier) setCatalog(list []domain.Permission) {
	retired := make(map[string]struct{}, len(a.retired))
	added := false
	for _, p := range list {
		if p.Status == domain.PermissionRetired {
			retired[p.Slug] = struct{}{}
			if _, had := a.retired[p.Slug]; !had {
				added = true
			}
		}
	}
	for s := range a.retired {
		if _, still := retired[s]; !still {
			// Not possible through keyd's commands; keys stay without it.
			a.v.log.Warn("verifier: the catalog no longer lists a retired permission as retired; keys that held it do not get it back", "permission", s)
			retired[s] = struct{}{}
		}
	}
	a.retired = retired
	if !added {
		return
	}
	// Every grant is recomputed: the retired permission may be its own or
	// come through a role. One store per grant, not per key.
	for _, ps := range a.in.perms {
		ps.eff.Store(a.effective(ps))
	}
}

// roleState is one role of the catalog, as the verifier needs it.
type roleState struct {
	perms  []string
	active bool
}

// setRoles takes the role catalog after a role event, and recomputes the
// grants holding a role that changed (through holders), at once.
func (a *applier) setRoles(list []domain.Role) {
	var changed []string
	for _, r := range list {
		st := roleState{perms: r.Permissions, active: r.Status == domain.PermissionActive}
		old, had := a.roles[r.Slug]
		if had && old.active == st.active && slices.Equal(old.perms, st.perms) {
			continue
		}
		a.roles[r.Slug] = st
		changed = append(changed, r.Slug)
	}
	for _, slug := range changed {
		for _, ps := range a.holders[slug] {
			ps.eff.Store(a.effective(ps))
		}
	}
}

// effective computes what grant ps amounts to now.
func (a *applier) effective(ps *permSet) *effective {
	list := domain.EffectivePermissions(ps.own, ps.roles,
		func(p string) bool { _, gone := a.retired[p]; return !gone },
		func(r string) ([]string, bool) { st, ok := a.roles[r]; return st.perms, ok && st.active })
	for i, p := range list {
		list[i] = a.in.intern(p)
	}
	roles := domain.ActiveRoles(ps.roles, func(r string) bool { return a.roles[r].active })
	return &effective{list: orEmpty(list), roles: orEmpty(roles)}
}

// grantSlices returns the shared grant of own, roles and resources,
// indexing a new one under each of its roles.
func (a *applier) grantSlices(own, roles, resources []string) *permSet {
	ps, isNew := a.in.grantSlices(own, roles, resources, a.effective)
	if isNew {
		a.index(ps)
	}
	return ps
}

func (a *applier) index(ps *permSet) {
	for _, r := range ps.roles {
		a.holders[r] = append(a.holders[r], ps)
	}
}

// loadRow adds one row of snapshotQuery to the (private, booting) tables.
func (a *applier) loadRow(vals [][]byte) error {
	if len(vals) != snapshotColumns {
		return fmt.Errorf("%d columns, want %d", len(vals), snapshotColumns)
	}
	for i, c := range vals[:7] {
		if c == nil {
			return fmt.Errorf("column %d is NULL", i+1)
		}
	}
	var d domain.Digest
	if len(vals[0]) != 2*len(d) {
		return fmt.Errorf("digest is %d bytes, want %d", len(vals[0])/2, len(d))
	}
	if _, err := hex.Decode(d[:], vals[0]); err != nil {
		return fmt.Errorf("digest: %w", err)
	}
	id, name := vals[1], vals[5]
	if len(id) != keyIDLen || string(id[:len(domain.KeyIDPrefix)]) != domain.KeyIDPrefix {
		return fmt.Errorf("key_id %q is not a key id", id)
	}
	// (Not inside the literal: its conversions may be evaluated after its
	// calls, which reuse the buffer.)
	a.in.buf = append(append(a.in.buf[:0], id...), name...)
	text := string(a.in.buf)
	ent := entry{
		text:    text,
		org:     a.in.orgOf(vals[2], vals[3], vals[4]),
		perms:   a.grantRaw(vals[6], vals[10], vals[11]),
		meta:    emptyMetadata,
		revoked: string(vals[8]) == domain.StatusRevoked,
	}
	if vals[7] != nil {
		us, ok := parseInt(vals[7])
		if !ok {
			return fmt.Errorf("expires_at %q is not a number of microseconds", vals[7])
		}
		t := time.UnixMicro(us).UTC()
		ent.expires = &t
	}
	if vals[9] != nil {
		md, err := a.in.metadataJSON(vals[9])
		if err != nil {
			return fmt.Errorf("metadata: %w", err)
		}
		ent.meta = md
	}
	a.put(d, &ent)
	return nil
}

// grantRaw is grantSlices for comma-joined columns of the snapshot.
func (a *applier) grantRaw(own, roles, resources []byte) *permSet {
	ps, isNew := a.in.grant(own, roles, resources, a.effective)
	if isNew {
		a.index(ps)
	}
	return ps
}
