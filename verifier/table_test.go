package verifier

import (
	"encoding/binary"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"unsafe"

	"github.com/keyd-dev/keyd/domain"
)

func randomDigest(r *rand.Rand) domain.Digest {
	var d domain.Digest
	for i := 0; i < len(d); i += 8 {
		binary.LittleEndian.PutUint64(d[i:], r.Uint64())
	}
	return d
}

// TestKeyTable: every inserted key is found (through resizes), digests not
// inserted are not, digests sharing a tag are told apart, and a slot is
// 128-byte aligned.
func TestKeyTable(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(1, 2))
	tab := newKeyTable()
	ds := make([]domain.Digest, 5000)
	for i := range ds {
		ds[i] = randomDigest(r)
		tab.insert(newSlot(&ds[i], &entry{}))
		if i%997 == 0 {
			for _, d := range ds[:i+1] {
				if sl := tab.lookup(&d); sl == nil || sl.digest != d {
					t.Fatalf("after %d inserts: %x not found", i+1, d[:8])
				}
			}
		}
	}
	for range 1000 {
		d := randomDigest(r)
		if tab.lookup(&d) != nil {
			t.Fatalf("%x found, never inserted", d[:8])
		}
	}
	// Same first 8 bytes (so the same tag and probe start), other digest.
	twin := ds[0]
	twin[31] ^= 1
	if tab.lookup(&twin) != nil {
		t.Fatal("a digest sharing the tag of a key was found")
	}
	tab.insert(newSlot(&twin, &entry{}))
	if sl := tab.lookup(&twin); sl == nil || sl.digest != twin || tab.lookup(&ds[0]).digest != ds[0] {
		t.Fatal("two digests sharing a tag are not told apart")
	}
	n := 0
	tab.each(func(*slot) { n++ })
	if n != len(ds)+1 {
		t.Errorf("each saw %d slots, want %d", n, len(ds)+1)
	}
	if c := *tab.live.Load(); (len(ds)+1)*4 > len(c)*3 {
		t.Errorf("%d keys in %d cells: over three quarters full", len(ds)+1, len(c))
	}
	for _, d := range ds[:100] {
		if p := uintptr(unsafe.Pointer(tab.lookup(&d))); p%128 != 0 {
			t.Errorf("slot at %#x is not 128-byte aligned", p)
		}
	}
}

// TestKeyTableConcurrent: readers looking keys up while the applier inserts
// (and resizes) always find every key inserted before they started (run
// with -race).
func TestKeyTableConcurrent(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(3, 4))
	tab := newKeyTable()
	ds := make([]domain.Digest, 20000)
	for i := range ds {
		ds[i] = randomDigest(r)
	}
	var inserted atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range ds {
			tab.insert(newSlot(&ds[i], &entry{}))
			inserted.Store(int64(i + 1))
		}
	})
	for g := range 4 {
		wg.Go(func() {
			rr := rand.New(rand.NewPCG(uint64(g), 9))
			for inserted.Load() < int64(len(ds)) {
				n := inserted.Load()
				if n == 0 {
					continue
				}
				d := ds[rr.IntN(int(n))]
				if sl := tab.lookup(&d); sl == nil || sl.digest != d {
					t.Errorf("key %x inserted, not found", d[:8])
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestKeyTableAdoptReserve: reserve sizes for n keys without a resize on
// insert; adopt publishes a table built aside.
func TestKeyTableAdoptReserve(t *testing.T) {
	t.Parallel()
	r := rand.New(rand.NewPCG(5, 6))
	work := newKeyTable()
	work.reserve(3000)
	before := len(*work.live.Load())
	d := make([]domain.Digest, 3000)
	for i := range d {
		d[i] = randomDigest(r)
		work.insert(newSlot(&d[i], &entry{}))
	}
	if after := len(*work.live.Load()); after != before {
		t.Errorf("reserve(3000) gave %d cells, inserting 3000 resized to %d", before, after)
	}
	live := newKeyTable()
	live.adopt(work)
	if live.n != 3000 || live.lookup(&d[1234]) == nil {
		t.Error("adopt did not publish the table built aside")
	}
}
