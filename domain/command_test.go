package domain_test

import (
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

func TestCheckActor(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a  *domain.Actor
		ok bool
	}{
		{nil, true},
		{&domain.Actor{Type: "user", ID: "u"}, true},
		{&domain.Actor{Type: "service", ID: "s"}, true},
		{&domain.Actor{Type: "system", ID: "x"}, true},
		{&domain.Actor{Type: "admin", ID: "x"}, false},
		{&domain.Actor{Type: "", ID: "x"}, false},
		{&domain.Actor{Type: "user", ID: ""}, false},
		{&domain.Actor{Type: "user", ID: strings.Repeat("a", 200)}, true},
		{&domain.Actor{Type: "user", ID: strings.Repeat("a", 201)}, false},
		{&domain.Actor{Type: "user", ID: "\xff"}, false},
	}
	for _, tt := range tests {
		err := domain.CheckActor(tt.a)
		if got := err == nil; got != tt.ok {
			t.Errorf("CheckActor(%+v) = %v, want ok=%v", tt.a, err, tt.ok)
		}
		if err != nil && (domain.ErrorCode(err) != domain.EInvalid || !strings.Contains(domain.ErrorMessage(err), "actor")) {
			t.Errorf("CheckActor(%+v) = %v, want invalid_argument about actor", tt.a, err)
		}
	}
}
