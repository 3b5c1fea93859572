package verifier

import (
	"encoding/binary"
	"sync/atomic"

	"github.com/keyd-dev/keyd/domain"
)

// The in-memory key table: digest → slot, an open-addressing hash table
// (linear probing) of 16-byte cells, each the first 8 bytes of a digest (the
// tag: HMAC output, so uniformly spread) and a pointer to the key's slot,
// which holds the whole digest, the key's state and its last use in one
// 128-byte block. A verification so touches one cell (4 to a cache line)
// and one slot (an aligned pair of cache lines, which the CPU fetches
// together), where a Go map of pointers costs a control word, a slot of the
// map and then the pointed-to value.
//
// Readers use no lock: the one applier goroutine inserts a key by storing
// its slot pointer and then its tag into an empty cell, and never empties
// a cell, so a reader either sees a key whole or not yet, and a key's probe
// chain never shortens. When the table is three quarters full the applier
// builds one twice the size and publishes it at once; readers still on the
// old one find every key that was in it. A key's digest never changes, so
// a key keeps its slot for life: every later event of the key just stores a
// new immutable state into the slot.

// slot is one key's place in the table. state is replaced whole by the
// applier; lastUsed and queued are written by Verify (see lastused.go).
type slot struct {
	digest   domain.Digest
	state    atomic.Pointer[entry]
	lastUsed atomic.Int64 // unix milliseconds of the last valid verification; 0: none
	queued   atomic.Bool  // in the last-used queue, not yet flushed
}

// slotWithState is how a slot is allocated: with its first state right
// behind it (most keys never change), 128 bytes (an allocation size class,
// so 128-byte aligned: the pair of cache lines the CPU's adjacent-line
// prefetch fetches together). A later state is allocated on its own.
type slotWithState struct {
	slot
	first entry
	_     [128 - 56 - 56]byte
}

func newSlot(d *domain.Digest, ent *entry) *slot {
	s := &slotWithState{first: *ent}
	s.digest = *d
	s.state.Store(&s.first)
	return &s.slot
}

// cell is one place of the table: tag 0 and sl nil while empty.
type cell struct {
	tag atomic.Uint64 // tagOf the digest; stored after sl
	sl  *slot
}

// cells is one generation of the table; len(c) is a power of two.
type cells []cell

// keyTable is the table readers look keys up in. Only the applier writes.
type keyTable struct {
	live atomic.Pointer[cells]
	n    int // keys held (applier only)
}

const minTableCells = 64

func newKeyTable() *keyTable {
	t := &keyTable{}
	c := make(cells, minTableCells)
	t.live.Store(&c)
	return t
}

// tagOf is the first 8 bytes of d, never 0 (0 marks an empty cell).
func tagOf(d *domain.Digest) uint64 {
	return binary.LittleEndian.Uint64(d[:8]) | 1
}

// lookup returns the slot of d, or nil. It does not allocate.
func (t *keyTable) lookup(d *domain.Digest) *slot {
	c := *t.live.Load()
	tag := tagOf(d)
	mask := uint64(len(c) - 1)
	for i := (tag >> 1) & mask; ; i = (i + 1) & mask {
		switch ct := c[i].tag.Load(); ct {
		case 0:
			return nil
		case tag:
			if sl := c[i].sl; sl.digest == *d {
				return sl
			}
		}
	}
}

// insert adds sl, whose digest the table does not hold. Applier only.
func (t *keyTable) insert(sl *slot) {
	c := *t.live.Load()
	if (t.n+1)*4 > len(c)*3 {
		c = t.resized(c, 2*len(c))
	}
	place(c, sl)
	t.n++
}

// reserve makes room for n keys without a resize. Applier only.
func (t *keyTable) reserve(n int) {
	c := *t.live.Load()
	size := len(c)
	for n*4 > size*3 {
		size *= 2
	}
	if size > len(c) {
		t.resized(c, size)
	}
}

// resized publishes a table of size cells holding c's keys, and returns it.
func (t *keyTable) resized(c cells, size int) cells {
	n := make(cells, size)
	for i := range c {
		if sl := c[i].sl; sl != nil {
			place(n, sl)
		}
	}
	t.live.Store(&n)
	return n
}

// place puts sl into the first empty cell of its probe sequence in c.
func place(c cells, sl *slot) {
	tag := tagOf(&sl.digest)
	mask := uint64(len(c) - 1)
	for i := (tag >> 1) & mask; ; i = (i + 1) & mask {
		if c[i].sl == nil {
			c[i].sl = sl
			c[i].tag.Store(tag) // publishes sl
			return
		}
	}
}

// each calls f with every slot. Applier only.
func (t *keyTable) each(f func(*slot)) {
	c := *t.live.Load()
	for i := range c {
		if sl := c[i].sl; sl != nil {
			f(sl)
		}
	}
}

// adopt makes t hold what o holds (the tables built while booting are
// published at once this way). Applier only; o is not used afterwards.
func (t *keyTable) adopt(o *keyTable) {
	t.n = o.n
	t.live.Store(o.live.Load())
}
