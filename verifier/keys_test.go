package verifier

import (
	"reflect"
	"slices"
	"testing"
	"unsafe"

	"github.com/keyd-dev/keyd/domain"
)

// TestSizes guards the memory per key: a slot with its first state is one
// 128-byte allocation (a size class: 128-byte aligned), plus a 16-byte cell.
func TestSizes(t *testing.T) {
	t.Parallel()
	if got := unsafe.Sizeof(entry{}); got != 56 {
		t.Errorf("entry is %d bytes, want 56", got)
	}
	if got := unsafe.Sizeof(slotWithState{}); got != 128 {
		t.Errorf("slotWithState is %d bytes, want 128", got)
	}
	if got := unsafe.Sizeof(cell{}); got != 16 {
		t.Errorf("cell is %d bytes, want 16", got)
	}
}

func TestInterner(t *testing.T) {
	t.Parallel()
	in := newInterner()
	a := newApplier(New(Config{}))
	a.retired["old"] = struct{}{}
	a.setRoles([]domain.Role{{Slug: "ops", Permissions: []string{"c", "old"}, Status: domain.PermissionActive}})
	g1, _ := in.grant([]byte("b,a,old,a"), nil, nil, a.effective)
	g2, _ := in.grantSlices([]string{"b", "a", "old", "a"}, nil, nil, a.effective)
	if g1 != g2 {
		t.Error("equal grants are not shared")
	}
	if got := g1.eff.Load().list; !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("effective = %v, want [a b]", got)
	}
	g3, _ := in.grant([]byte("a"), []byte("ops,gone"), []byte("project:p1"), a.effective)
	if got := g3.eff.Load(); !slices.Equal(got.list, []string{"a", "c"}) || !slices.Equal(got.roles, []string{"ops"}) {
		t.Fatalf("effective with roles = %+v, want [a c] and roles [ops]", got)
	}
	if g, _ := in.grant(nil, nil, nil, a.effective); g != emptyPermSet || g.eff.Load().list == nil {
		t.Error("empty grants must be the shared non-nil empty one")
	}
	o1 := in.orgOf([]byte("org_1"), []byte("organization"), []byte("org_1"))
	o2 := in.orgOf([]byte("org_1"), []byte("organization"), []byte("org_1"))
	o3 := in.orgOf([]byte("org_1"), []byte("user"), []byte("u_1"))
	if o1 != o2 || o1 == o3 || o3.owner.ID != "u_1" {
		t.Errorf("orgOf: %p %p %p %+v", o1, o2, o3, o3)
	}
	m1 := in.metadataMap(map[string]string{"a": "1", "b": "2"})
	m2 := in.metadataMap(map[string]string{"b": "2", "a": "1"})
	if reflect.ValueOf(m1).Pointer() != reflect.ValueOf(m2).Pointer() || len(m2) != 2 {
		t.Error("equal metadata maps are not shared")
	}
	if in.metadataMap(nil) == nil {
		t.Error("empty metadata must be the shared non-nil map")
	}
}

func TestParseInt(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]int64{"0": 0, "1767225600000000": 1767225600000000, "-5": -5} {
		if got, ok := parseInt([]byte(s)); !ok || got != want {
			t.Errorf("parseInt(%q) = %d, %v", s, got, ok)
		}
	}
	for _, s := range []string{"", "-", "1.5", "x"} {
		if _, ok := parseInt([]byte(s)); ok {
			t.Errorf("parseInt(%q) ok", s)
		}
	}
}
