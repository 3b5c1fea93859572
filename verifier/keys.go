package verifier

import (
	"encoding/json"
	"maps"
	"math"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/keyd-dev/keyd/domain"
)

// entry is what a verification answers about a key (not domain.KeyState:
// the key's full state), compact (56 bytes): the key id and name share one string, and the organization and
// owner, the permission list and the metadata map are interned (shared with
// every key that has equal ones). Immutable once stored; what Verify hands
// out is built from it without allocating.
type entry struct {
	text    string     // key id (keyIDLen bytes) followed by the name
	org     *orgRef    // organization and owner
	perms   *permSet   // what the key was granted, and its effective permissions
	expires *time.Time // nil: never
	meta    map[string]string
	revoked bool
	// suspended: verification answers suspended (after revoked, expired).
	suspended bool
	// version is the key's version (domain.KeyState.Version) for the
	// invariants on apply; it and suspended fit in the struct's padding.
	version uint32
}

// keyIDLen is the length of every key id: "key_" and a ULID.
const keyIDLen = len(domain.KeyIDPrefix) + 26

type orgRef struct {
	id    string
	owner domain.Owner
}

// permSet is one grant: own permissions, roles and resources as a key was
// given them, shared by every key given the same. Its effective value (the
// key's effective permissions and active roles) is computed when the grant
// first appears and again whenever a role it holds or the permission catalog
// changes: one atomic store per grant, whatever the number of keys sharing
// it, and verification reads it with one load.
type permSet struct {
	eff       atomic.Pointer[effective]
	own       []string // granted permissions, as given
	roles     []string // granted roles, sorted
	resources []string // sorted "type:id"; empty: unrestricted
}

// effective is what a grant amounts to at one catalog state. Immutable.
type effective struct {
	list  []string // effective permissions: own active + active roles' active, sorted, de-duplicated
	roles []string // the active roles
}

func (e *entry) id() string { return e.text[:keyIDLen] }

// info returns the KeyInfo of e (no allocation).
func (e *entry) info() KeyInfo {
	eff := e.perms.eff.Load()
	return KeyInfo{
		ID:          e.text[:keyIDLen],
		OrgID:       e.org.id,
		Owner:       e.org.owner,
		Name:        e.text[keyIDLen:],
		Permissions: eff.list,
		ExpiresAt:   e.expires,
		Metadata:    e.meta,
		Roles:       eff.roles,
		Resources:   e.perms.resources,
	}
}

// Shared read-only values for keys without permissions or metadata: the
// contract's JSON has [] and {}, never null.
var (
	emptyPerms    = []string{}
	emptyMetadata = map[string]string{}
)

// interner shares equal strings, organizations, permission lists and
// metadata maps between keys, so that a million keys of a few organizations
// and a few permission sets cost little more than their ids and names. Only
// the applier uses it.
//
// Metadata maps are reference-counted (M2: a tenant that changes one key's
// metadata again and again must not grow every verifier): each entry that
// holds a map counts once, the applier releases an entry's map when the
// entry is replaced, and a map no entry holds leaves the table. Its size is
// bounded by the live keys, not by the number of updates.
type interner struct {
	strs     map[string]string
	orgs     map[string]*orgRef
	perms    map[string]*permSet          // own permissions, roles and resources, each joined by "," (as given), joined by ";" → grant
	meta     map[string]map[string]string // JSON text → map
	metaRefs map[unsafe.Pointer]*metaRef  // a map of meta → its key there and its holders
	buf      []byte
}

type metaRef struct {
	key  string
	refs int
}

// mapID identifies a map by its header (stable for the map's life).
func mapID(m map[string]string) unsafe.Pointer { return reflect.ValueOf(m).UnsafePointer() }

// emptyPermSet is the grant of keys given nothing: never recomputed.
var emptyPermSet = func() *permSet {
	ps := &permSet{own: emptyPerms, roles: emptyPerms, resources: emptyPerms}
	ps.eff.Store(&effective{list: emptyPerms, roles: emptyPerms})
	return ps
}()

func newInterner() *interner {
	return &interner{
		strs:     map[string]string{},
		orgs:     map[string]*orgRef{},
		perms:    map[string]*permSet{},
		meta:     map[string]map[string]string{},
		metaRefs: map[unsafe.Pointer]*metaRef{},
	}
}

// str returns the shared copy of b (the map lookup does not allocate).
func (in *interner) internBytes(b []byte) string {
	if s, ok := in.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	in.strs[s] = s
	return s
}

func (in *interner) intern(s string) string {
	if c, ok := in.strs[s]; ok {
		return c
	}
	in.strs[s] = s
	return s
}

// orgOf returns the shared orgRef of an organization and owner.
func (in *interner) orgOf(org, ownerType, ownerID []byte) *orgRef {
	in.buf = append(append(append(append(append(in.buf[:0], org...), 0), ownerType...), 0), ownerID...)
	if r, ok := in.orgs[string(in.buf)]; ok {
		return r
	}
	r := &orgRef{id: in.internBytes(org), owner: domain.Owner{Type: in.internBytes(ownerType), ID: in.internBytes(ownerID)}}
	in.orgs[string(in.buf)] = r
	return r
}

// splitList returns the shared copies of the comma-separated items of
// joined (slugs and resources hold no commas), in order; nil for none.
func (in *interner) splitList(joined string) []string {
	if joined == "" {
		return nil
	}
	var l []string
	for s := range strings.SplitSeq(joined, ",") {
		if s != "" {
			l = append(l, in.intern(s))
		}
	}
	return l
}

// grant returns the shared grant of own permissions, roles and resources
// (each comma-separated), its effective value computed by eff when it is
// new; isNew says whether it is.
func (in *interner) grant(own, roles, resources []byte, eff func(*permSet) *effective) (ps *permSet, isNew bool) {
	if len(own) == 0 && len(roles) == 0 && len(resources) == 0 {
		return emptyPermSet, false
	}
	in.buf = append(append(append(append(append(in.buf[:0], own...), ';'), roles...), ';'), resources...)
	if ps, ok := in.perms[string(in.buf)]; ok {
		return ps, false
	}
	key := string(in.buf)
	ps = &permSet{own: orEmpty(in.splitList(string(own))), roles: orEmpty(in.splitList(string(roles))), resources: orEmpty(in.splitList(string(resources)))}
	slices.Sort(ps.roles)
	ps.roles = slices.Clip(slices.Compact(ps.roles))
	slices.Sort(ps.resources)
	ps.resources = slices.Clip(slices.Compact(ps.resources))
	ps.eff.Store(eff(ps))
	in.perms[key] = ps
	return ps, true
}

// grantSlices is grant for slices.
func (in *interner) grantSlices(own, roles, resources []string, eff func(*permSet) *effective) (*permSet, bool) {
	join := func(ss []string) []byte {
		var b []byte
		for i, s := range ss {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, s...)
		}
		return b
	}
	return in.grant(join(own), join(roles), join(resources), eff)
}

func orEmpty(ss []string) []string {
	if len(ss) == 0 {
		return emptyPerms
	}
	return slices.Clip(ss)
}

// metadataJSON returns the shared map for a JSON object of strings, held
// once more (release it when the entry holding it goes).
func (in *interner) metadataJSON(text []byte) (map[string]string, error) {
	if m, ok := in.meta[string(text)]; ok {
		in.metaRefs[mapID(m)].refs++
		return m, nil
	}
	var m map[string]string
	if err := json.Unmarshal(text, &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		return emptyMetadata, nil
	}
	return in.keepMeta(string(text), m), nil
}

// metadataMap returns the shared map equal to m (which the interner may
// keep), held once more (see metadataJSON).
func (in *interner) metadataMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return emptyMetadata
	}
	text, err := json.Marshal(m) // sorted keys: a canonical form
	if err != nil {
		return maps.Clone(m)
	}
	if c, ok := in.meta[string(text)]; ok {
		in.metaRefs[mapID(c)].refs++
		return c
	}
	return in.keepMeta(string(text), m)
}

func (in *interner) keepMeta(key string, m map[string]string) map[string]string {
	in.meta[key] = m
	in.metaRefs[mapID(m)] = &metaRef{key: key, refs: 1}
	return m
}

// releaseMeta drops one hold on m (from metadataJSON or metadataMap); the
// table forgets m when nothing holds it.
func (in *interner) releaseMeta(m map[string]string) {
	if len(m) == 0 {
		return
	}
	id := mapID(m)
	r := in.metaRefs[id]
	if r == nil {
		return // not interned (a clone)
	}
	if r.refs--; r.refs <= 0 {
		delete(in.meta, r.key)
		delete(in.metaRefs, id)
	}
}

// metaSize is the number of metadata maps the table holds.
func (in *interner) metaSize() int { return len(in.meta) }

// entryFromKey builds the state of a key from the full state an event
// carries (whose id DecodeEvent checked).
func (in *interner) entryFromKey(k *domain.KeyState, perms *permSet) entry {
	ent := entry{
		text:    k.ID + k.Name, // one allocation for both
		org:     in.orgOf([]byte(k.OrgID), []byte(k.Owner.Type), []byte(k.Owner.ID)),
		perms:   perms,
		meta:    in.metadataMap(k.Metadata),
		revoked: k.Status == domain.StatusRevoked,
		version: uint32(min(max(k.Version, 0), math.MaxUint32)),

		suspended: k.Status == domain.StatusSuspended,
	}
	if k.ExpiresAt != nil {
		t := k.ExpiresAt.UTC()
		ent.expires = &t
	}
	return ent
}

// expiredAt reports whether a key expiring at exp (nil: never) has expired
// at now: expires_at <= now.
func expiredAt(exp *time.Time, now time.Time) bool {
	return exp != nil && !now.Before(*exp)
}
