package verifier

import (
	"encoding/binary"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// The in-memory key table: digest → slot, split into nShards maps by the
// first bytes of the digest (HMAC output, so uniformly spread). Each shard is
// an atomic pointer to an immutable map: readers load it without a lock; the
// one applier goroutine replaces a shard by a copy when it adds keys. A key's
// digest never changes, so a key keeps its slot for life: every later event
// of the key just stores a new immutable state into the slot, without
// copying any map.
const (
	shardBits = 10
	nShards   = 1 << shardBits
)

type table = map[domain.Digest]*slot

// emptyTable is what every shard holds until it has keys. Never written.
var emptyTable = table{}

func shardOf(d *domain.Digest) int {
	return int(binary.LittleEndian.Uint16(d[:2]) & (nShards - 1))
}

// slot is one key's place in the table. state is replaced whole by the
// applier; lastUsed and queued are written by Verify (see lastused.go).
type slot struct {
	state    atomic.Pointer[entry]
	lastUsed atomic.Int64 // unix milliseconds of the last valid verification; 0: none
	queued   atomic.Bool  // in the last-used queue, not yet flushed
}

// slotWithState is how a slot is allocated: with its first state right
// behind it, so a verification touches one place in memory after the map
// (most keys never change). A later state is allocated on its own.
type slotWithState struct {
	slot
	first entry
}

func newSlot(ent *entry) *slot {
	s := &slotWithState{first: *ent}
	s.state.Store(&s.first)
	return &s.slot
}

// entry is what a verification answers about a key (not domain.KeyState:
// the key's full state), compact (56 bytes): the key id and name share one string, and the organization and
// owner, the permission list and the metadata map are interned (shared with
// every key that has equal ones). Immutable once stored; what Verify hands
// out is built from it without allocating.
type entry struct {
	text    string     // key id (keyIDLen bytes) followed by the name
	org     *orgRef    // organization and owner
	perms   *permSet   // effective permissions
	expires *time.Time // nil: never
	meta    map[string]string
	revoked bool
	// suspended: verification answers suspended (after revoked, expired).
	suspended bool
}

// keyIDLen is the length of every key id: "key_" and a ULID.
const keyIDLen = len(domain.KeyIDPrefix) + 26

type orgRef struct {
	id    string
	owner domain.Owner
}

type permSet struct{ list []string }

func (e *entry) id() string { return e.text[:keyIDLen] }

// info returns the KeyInfo of e (no allocation).
func (e *entry) info() KeyInfo {
	return KeyInfo{
		ID:          e.text[:keyIDLen],
		OrgID:       e.org.id,
		Owner:       e.org.owner,
		Name:        e.text[keyIDLen:],
		Permissions: e.perms.list,
		ExpiresAt:   e.expires,
		Metadata:    e.meta,
	}
}

// keyTable is the published table.
type keyTable struct {
	shards [nShards]atomic.Pointer[table]
}

func newKeyTable() *keyTable {
	t := &keyTable{}
	for i := range t.shards {
		t.shards[i].Store(&emptyTable)
	}
	return t
}

// lookup returns the slot of d, or nil. It does not allocate.
func (t *keyTable) lookup(d *domain.Digest) *slot {
	return (*t.shards[shardOf(d)].Load())[*d]
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
type interner struct {
	strs  map[string]string
	orgs  map[string]*orgRef
	perms map[string]*permSet          // slugs joined by "," (as given) → effective list
	meta  map[string]map[string]string // JSON text → map
	buf   []byte
}

var emptyPermSet = &permSet{list: emptyPerms}

func newInterner() *interner {
	return &interner{
		strs:  map[string]string{},
		orgs:  map[string]*orgRef{},
		perms: map[string]*permSet{},
		meta:  map[string]map[string]string{},
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

// permList returns the shared, sorted, de-duplicated list of the slugs in
// joined (comma-separated; slugs hold no commas) minus the retired ones.
func (in *interner) permList(joined []byte, retired map[string]struct{}) *permSet {
	if len(joined) == 0 {
		return emptyPermSet
	}
	if l, ok := in.perms[string(joined)]; ok {
		return l
	}
	key := string(joined)
	var l []string
	for s := range strings.SplitSeq(key, ",") {
		if _, gone := retired[s]; !gone && s != "" {
			l = append(l, in.intern(s))
		}
	}
	slices.Sort(l)
	l = slices.Clip(slices.Compact(l))
	ps := emptyPermSet
	if len(l) > 0 {
		ps = &permSet{list: l}
	}
	in.perms[key] = ps
	return ps
}

// permSlice is permList for a slice of slugs.
func (in *interner) permSlice(slugs []string, retired map[string]struct{}) *permSet {
	var buf []byte
	for i, s := range slugs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, s...)
	}
	return in.permList(buf, retired)
}

// forgetPerms drops the permission lists, after the catalog retired slugs.
func (in *interner) forgetPerms() { clear(in.perms) }

// metadataJSON returns the shared map for a JSON object of strings.
func (in *interner) metadataJSON(text []byte) (map[string]string, error) {
	if m, ok := in.meta[string(text)]; ok {
		return m, nil
	}
	var m map[string]string
	if err := json.Unmarshal(text, &m); err != nil {
		return nil, err
	}
	if len(m) == 0 {
		m = emptyMetadata
	}
	in.meta[string(text)] = m
	return m, nil
}

// metadataMap returns the shared map equal to m (which the interner may keep).
func (in *interner) metadataMap(m map[string]string) map[string]string {
	if len(m) == 0 {
		return emptyMetadata
	}
	text, err := json.Marshal(m) // sorted keys: a canonical form
	if err != nil {
		return maps.Clone(m)
	}
	if c, ok := in.meta[string(text)]; ok {
		return c
	}
	in.meta[string(text)] = m
	return m
}

// entryFromKey builds the state of a key from the full state an event
// carries (whose id DecodeEvent checked).
func (in *interner) entryFromKey(k *domain.KeyState, retired map[string]struct{}) entry {
	ent := entry{
		text:    k.ID + k.Name, // one allocation for both
		org:     in.orgOf([]byte(k.OrgID), []byte(k.Owner.Type), []byte(k.Owner.ID)),
		perms:   in.permSlice(k.Permissions, retired),
		meta:    in.metadataMap(k.Metadata),
		revoked: k.Status == domain.StatusRevoked,

		suspended: k.Status == domain.StatusSuspended,
	}
	if k.ExpiresAt != nil {
		t := k.ExpiresAt.UTC()
		ent.expires = &t
	}
	return ent
}

// withoutRetired returns ent with the retired slugs taken out of its
// permissions, or ent itself when it holds none of them.
func (in *interner) withoutRetired(ent *entry, retired map[string]struct{}) *entry {
	hit := false
	for _, p := range ent.perms.list {
		if _, gone := retired[p]; gone {
			hit = true
			break
		}
	}
	if !hit {
		return ent
	}
	n := *ent
	n.perms = in.permSlice(ent.perms.list, retired)
	return &n
}

// expiredAt reports whether a key expiring at exp (nil: never) has expired
// at now: expires_at <= now.
func expiredAt(exp *time.Time, now time.Time) bool {
	return exp != nil && !now.Before(*exp)
}
