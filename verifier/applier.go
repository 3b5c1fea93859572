package verifier

import (
	"encoding/hex"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// applier owns the key state while it changes: it is used by one goroutine
// only (the stream follower), so writers never contend; readers see only
// what it publishes.
type applier struct {
	v       *Verifier
	in      *interner
	retired map[string]struct{} // retired catalog permissions
	catalog int64               // the catalog's version (invariants on apply)
	orgs    map[string]int64    // organizations' versions (invariants on apply)
	applied uint64              // last stream sequence applied
	keys    int
	// roles is the role catalog, at version rolesVersion (invariants on
	// apply); holders indexes the grants holding each role, so a role
	// change recomputes exactly those.
	roles        map[string]roleState
	rolesVersion int64
	holders      map[string][]*permSet

	// While booting, keys go into a private table, published at once when
	// the verifier has caught up; after boot, into the live table (see
	// table.go).
	work *keyTable
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
	a.catalog = 0
	a.orgs = map[string]int64{}
	a.roles = map[string]roleState{}
	a.holders = map[string][]*permSet{}
	a.rolesVersion = 0
	a.work = newKeyTable()
	a.applied = 0
	a.keys = 0
	a.v.policyCIDRs.Store(nil)
}

// presize makes the (booting) table ready for n keys.
func (a *applier) presize(n int) {
	if a.work != nil {
		a.work.reserve(n)
	}
}

// table is the table the applier writes: the private one while booting,
// else the live one.
func (a *applier) table() *keyTable {
	if a.work != nil {
		return a.work
	}
	return a.v.keys
}

// put stores ent as the state of the key with digest d.
func (a *applier) put(d domain.Digest, ent *entry) {
	t := a.table()
	if sl := t.lookup(&d); sl != nil {
		a.store(sl, ent)
		return
	}
	t.insert(newSlot(&d, ent))
	a.keys++
}

// store replaces the state in an existing slot by a copy of ent, and
// releases the metadata the old state held.
func (a *applier) store(sl *slot, ent *entry) {
	old := sl.state.Load()
	if old.id() != ent.id() {
		// Two keys with one digest: impossible short of a broken
		// digester. Keep the first key; say so.
		a.v.log.Error("verifier: two keys have the same digest; keeping the first",
			"first", old.id(), "second", ent.id())
		a.in.releaseMeta(ent.meta)
		return
	}
	n := *ent
	sl.state.Store(&n)
	a.in.releaseMeta(old.meta)
}

// current returns the state the applier holds for digest d (nil: none).
func (a *applier) current(d *domain.Digest) *entry {
	if sl := a.table().lookup(d); sl != nil {
		return sl.state.Load()
	}
	return nil
}

// commit ends a batch: new keys are in the live table as soon as inserted
// (see table.go); this publishes the count.
func (a *applier) commit() {
	a.v.nkeys.Store(int64(a.keys))
}

// publishWork publishes the table built while booting.
func (a *applier) publishWork() {
	a.v.keys.adopt(a.work)
	a.work = nil
	a.v.nkeys.Store(int64(a.keys))
}

// apply applies one event, stored on subject. An event that breaks the
// invariants on apply (eventstore.KeyEventInvariant, CatalogInvariant,
// OrgInvariant) is not applied: rejected says why. Errors describe an event
// that cannot be applied.
func (a *applier) apply(subject string, data []byte) (rejected string, err error) {
	ev, err := domain.DecodeEvent(data)
	if err != nil {
		return "", err
	}
	if err := ev.CheckSubject(subject); err != nil {
		return "", err
	}
	if ev.IsKeyEvent() {
		k, err := ev.KeyState()
		if err != nil {
			return "", err
		}
		var d domain.Digest
		if len(k.Digest) != 2*len(d) {
			return "", fmt.Errorf("event %s carries no valid digest for key %s", ev.ID, k.ID)
		}
		if _, err := hex.Decode(d[:], []byte(k.Digest)); err != nil {
			return "", fmt.Errorf("event %s carries no valid digest for key %s", ev.ID, k.ID)
		}
		cur := a.current(&d)
		known := cur != nil && cur.id() == k.ID
		var version int64
		var revoked bool
		if known {
			version, revoked = int64(cur.version), cur.revoked
		}
		if why := eventstore.KeyEventInvariant(ev.Type, known, version, revoked, k.Version); why != "" {
			return why, nil
		}
		ps := a.grantSlices(k.Permissions, k.Roles, k.Resources)
		ent := a.in.entryFromKey(&k, ps)
		a.put(d, &ent)
		return "", nil
	}
	if ev.IsOrgEvent() {
		o, err := ev.OrgState()
		if err != nil {
			return "", err
		}
		if why := eventstore.OrgInvariant(a.orgs[o.Policy.OrgID], o.Version); why != "" {
			return why, nil
		}
		if err := a.setPolicyCIDRs(o.Policy.OrgID, o.Policy.AllowedCIDRs); err != nil {
			return "", err
		}
		a.orgs[o.Policy.OrgID] = o.Version
		return "", nil
	}
	if ev.IsRoleEvent() {
		rc, err := ev.RoleCatalog()
		if err != nil {
			return "", err
		}
		if why := eventstore.RoleCatalogInvariant(a.rolesVersion, rc.Version()); why != "" {
			return why, nil
		}
		a.rolesVersion = rc.Version()
		a.setRoles(rc.List())
		return "", nil
	}
	c, err := ev.Catalog()
	if err != nil {
		return "", err
	}
	if why := eventstore.CatalogInvariant(a.catalog, c.Version()); why != "" {
		return why, nil
	}
	a.catalog = c.Version()
	a.setCatalog(c.List())
	return "", nil
}

// setPolicyCIDRs takes an organization's allowed_cidrs (nil: none): every
// verification of its keys applies them as soon as this returns.
func (a *applier) setPolicyCIDRs(org string, cidrs []string) error {
	var ps []netip.Prefix
	for _, c := range cidrs {
		p, err := domain.ParseCIDR(c)
		if err != nil {
			return fmt.Errorf("organization %s: allowed_cidrs %q: %w", org, c, err)
		}
		ps = append(ps, p)
	}
	cur := a.v.policyCIDRs.Load()
	if cur == nil && ps == nil {
		return nil
	}
	next := map[string][]netip.Prefix{}
	if cur != nil {
		next = maps.Clone(*cur)
	}
	if ps == nil {
		delete(next, org)
	} else {
		next[org] = ps
	}
	a.v.policyCIDRs.Store(&next)
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

// loadRow adds one row of snapshotQuery to the (private, booting) table.
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
		perms:   a.grantRaw(vals[6], vals[11], vals[12]),
		meta:    emptyMetadata,
		revoked: string(vals[8]) == domain.StatusRevoked,

		suspended: string(vals[8]) == domain.StatusSuspended,
	}
	if v, ok := parseInt(vals[10]); ok && v >= 0 && v <= math.MaxUint32 {
		ent.version = uint32(v)
	} else {
		return fmt.Errorf("version %q is not a key version", vals[10])
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
