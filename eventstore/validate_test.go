package eventstore

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func TestCheckSubject(t *testing.T) {
	t.Parallel()
	for subject, ok := range map[string]bool{
		domain.KeySubject("org", "key"):     true,
		domain.CatalogSubject:               true,
		"keyd.events.":                      false,
		"keyd.events":                       false,
		"keyd.events.keys..k":               false,
		"keyd.events.keys.*.k":              false,
		"keyd.events.keys.o.>":              false,
		"keyd.events.keys.o k":              false,
		"other.events.x":                    false,
		"":                                  false,
		domain.OrgEventsSubject("org"):      false,
		domain.KeySubject("org", "k") + ".": false,
	} {
		if err := checkSubject(subject); (err == nil) != ok {
			t.Errorf("checkSubject(%q) = %v, want ok=%v", subject, err, ok)
		}
	}
}

func TestConflictWraps(t *testing.T) {
	t.Parallel()
	cause := fmt.Errorf("server said no")
	err := conflict("keyd.events.keys.o.k", 7, cause)
	if !errors.Is(err, domain.ErrConflict) || !errors.Is(err, cause) {
		t.Fatalf("conflict(...) = %v: not both ErrConflict and the cause", err)
	}
}
