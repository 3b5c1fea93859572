package domain_test

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func catalogOf(ps ...domain.Permission) domain.Catalog { return domain.NewCatalog(ps) }

func active(slug, desc string) domain.Permission {
	return domain.Permission{Slug: slug, Description: desc, Status: domain.PermissionActive}
}

func retired(slug, desc string) domain.Permission {
	return domain.Permission{Slug: slug, Description: desc, Status: domain.PermissionRetired}
}

func TestCatalogDefine(t *testing.T) {
	t.Parallel()
	base := catalogOf(active("posts:read", "Read posts"), retired("old", "Old"))
	full := make([]domain.Permission, domain.MaxPermissions)
	for i := range full {
		full[i] = active(fmt.Sprintf("p%04d", i), "")
	}
	tests := []struct {
		name        string
		c           domain.Catalog
		slug, desc  string
		wantChanged bool
		wantCode    string
		wantDesc    string
	}{
		{"new", base, "posts:write", "Write posts", true, "", "Write posts"},
		{"same again", base, "posts:read", "Read posts", false, "", "Read posts"},
		{"new description", base, "posts:read", "Read all posts", true, "", "Read all posts"},
		{"empty description", base, "x", "", true, "", ""},
		{"retired", base, "old", "Old", false, domain.EPrecondition, ""},
		{"retired with new description", base, "old", "New", false, domain.EPrecondition, ""},
		{"bad slug", base, "Posts", "x", false, domain.EInvalid, ""},
		{"long description", base, "x", strings.Repeat("é", domain.MaxDescriptionLength+1), false, domain.EInvalid, ""},
		{"longest description", base, "x", strings.Repeat("é", domain.MaxDescriptionLength), true, "", strings.Repeat("é", domain.MaxDescriptionLength)},
		{"invalid UTF-8 description", base, "x", "\xff", false, domain.EInvalid, ""},
		{"full catalog, new slug", catalogOf(full...), "zzz", "", false, domain.EPrecondition, ""},
		{"full catalog, existing slug", catalogOf(full...), "p0001", "changed", true, "", "changed"},
		{"zero catalog", domain.Catalog{}, "a", "A", true, "", "A"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.c.List()
			p, next, changed, err := tt.c.Define(tt.slug, tt.desc)
			if got := domain.ErrorCode(err); got != tt.wantCode {
				t.Fatalf("Define(%q) error = %v, want code %q", tt.slug, err, tt.wantCode)
			}
			if err != nil {
				mention := `"` + tt.slug + `"`
				switch tt.name {
				case "long description", "invalid UTF-8 description":
					mention = "description"
				case "full catalog, new slug":
					mention = fmt.Sprint(domain.MaxPermissions)
				}
				if msg := domain.ErrorMessage(err); !strings.Contains(msg, mention) {
					t.Errorf("message %q does not mention %s", msg, mention)
				}
				return
			}
			if changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			want := active(tt.slug, tt.wantDesc)
			if p != want {
				t.Errorf("permission = %+v, want %+v", p, want)
			}
			if got, ok := next.Get(tt.slug); !ok || got != want {
				t.Errorf("next catalog has %+v (%v), want %+v", got, ok, want)
			}
			if !reflect.DeepEqual(tt.c.List(), before) {
				t.Errorf("Define changed the catalog it was called on")
			}
		})
	}
}

func TestCatalogRetire(t *testing.T) {
	t.Parallel()
	base := catalogOf(active("posts:read", "Read posts"), retired("old", "Old"))
	tests := []struct {
		name        string
		slug        string
		wantChanged bool
		wantCode    string
	}{
		{"active", "posts:read", true, ""},
		{"already retired", "old", false, ""},
		{"unknown", "nope", false, domain.ENotFound},
		{"bad slug", "No", false, domain.EInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, next, changed, err := base.Retire(tt.slug)
			if got := domain.ErrorCode(err); got != tt.wantCode {
				t.Fatalf("Retire(%q) error = %v, want code %q", tt.slug, err, tt.wantCode)
			}
			if err != nil {
				if !strings.Contains(domain.ErrorMessage(err), `"`+tt.slug+`"`) {
					t.Errorf("message %q does not name %q", domain.ErrorMessage(err), tt.slug)
				}
				return
			}
			if changed != tt.wantChanged {
				t.Errorf("changed = %v, want %v", changed, tt.wantChanged)
			}
			if p.Status != domain.PermissionRetired || p.Slug != tt.slug {
				t.Errorf("permission = %+v, want %s retired", p, tt.slug)
			}
			if got, _ := next.Get(tt.slug); got.Status != domain.PermissionRetired || got.Description == "" {
				t.Errorf("next catalog has %+v, want it retired with its description", got)
			}
			if got, _ := base.Get("posts:read"); got.Status != domain.PermissionActive {
				t.Errorf("Retire changed the catalog it was called on")
			}
		})
	}
	// Retire twice: the second changes nothing.
	_, once, changed1, _ := base.Retire("posts:read")
	_, twice, changed2, err := once.Retire("posts:read")
	if err != nil || !changed1 || changed2 || twice.Len() != once.Len() {
		t.Errorf("retire twice: changed %v then %v, err %v", changed1, changed2, err)
	}
	// A retired slug can never be defined again.
	if _, _, _, err := twice.Define("posts:read", "Read posts"); domain.ErrorCode(err) != domain.EPrecondition {
		t.Errorf("Define of a retired slug: %v, want failed_precondition", err)
	}
}

func TestCatalogCheckGrantable(t *testing.T) {
	t.Parallel()
	c := catalogOf(active("a", ""), active("b:c", ""), retired("old", ""))
	tests := []struct {
		name  string
		slugs []string
		ok    bool
		names string
		word  string
	}{
		{"none", nil, true, "", ""},
		{"all active", []string{"a", "b:c"}, true, "", ""},
		{"undefined", []string{"a", "posts:delete"}, false, `"posts:delete"`, "not defined"},
		{"retired", []string{"old"}, false, `"old"`, "retired"},
		{"retired after active", []string{"a", "b:c", "old"}, false, `"old"`, "retired"},
	}
	for _, tt := range tests {
		err := c.CheckGrantable(tt.slugs)
		if got := err == nil; got != tt.ok {
			t.Errorf("%s: CheckGrantable = %v, want ok=%v", tt.name, err, tt.ok)
			continue
		}
		if err != nil {
			msg := domain.ErrorMessage(err)
			if domain.ErrorCode(err) != domain.EInvalid || !strings.Contains(msg, tt.names) || !strings.Contains(msg, tt.word) {
				t.Errorf("%s: error %v, want invalid_argument naming %s (%s)", tt.name, err, tt.names, tt.word)
			}
		}
	}
}

func TestCatalogList(t *testing.T) {
	t.Parallel()
	c := catalogOf(active("c", ""), retired("a", ""), active("b", ""))
	var got []string
	for _, p := range c.List() {
		got = append(got, p.Slug)
	}
	if want := "a,b,c"; strings.Join(got, ",") != want {
		t.Errorf("List = %v, want %s (sorted, retired included)", got, want)
	}
	if got, want := c.Len(), 3; got != want {
		t.Errorf("Len = %d, want %d", got, want)
	}
	var zero domain.Catalog
	if zero.Len() != 0 || len(zero.List()) != 0 {
		t.Errorf("zero catalog is not empty")
	}
	if _, ok := zero.Get("a"); ok {
		t.Errorf("zero catalog has a")
	}
}
