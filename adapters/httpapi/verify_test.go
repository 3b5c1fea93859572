package httpapi

import (
	"net/http"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func TestVerifyRoute(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.definePermissions("posts:read", "posts:write")
	k := s.createKey("org_v", "verify me", "posts:read")

	verify := func(body any) map[string]any {
		t.Helper()
		var out map[string]any
		s.must(t, http.StatusOK, "POST", "/v1/keys/verify", adminToken, body).json(t, &out)
		return out
	}
	deadline := time.Now().Add(10 * time.Second)
	for verify(map[string]any{"key": k.Secret})["code"] != "valid" {
		if time.Now().After(deadline) {
			t.Fatal("the verifier never saw the new key")
		}
		time.Sleep(5 * time.Millisecond)
	}
	out := verify(map[string]any{"key": k.Secret, "permissions": []string{"posts:read"}})
	key, _ := out["key"].(map[string]any)
	if out["valid"] != true || key["id"] != k.Key.ID || key["org_id"] != "org_v" || out["sequence"].(float64) < 1 {
		t.Fatalf("valid verify: %v", out)
	}
	if out := verify(map[string]any{"key": k.Secret, "permissions": []string{"posts:write"}}); out["code"] != "insufficient_permissions" || out["valid"] != false {
		t.Fatalf("insufficient: %v", out)
	}
	if out := verify(map[string]any{"key": k.Secret[:len(k.Secret)-1] + "x"}); out["code"] != "malformed" || out["key"] != nil {
		t.Fatalf("malformed: %v", out)
	}
	if out := verify(map[string]any{"key": ""}); out["code"] != "malformed" {
		t.Fatalf("empty key: %v", out)
	}
	s.mustFail(t, domain.EInvalid, "POST", "/v1/keys/verify", adminToken, `{"key":5}`)
	s.mustFail(t, domain.EInvalid, "POST", "/v1/keys/verify", adminToken, `{}`)
	s.mustFail(t, domain.EInvalid, "POST", "/v1/keys/verify", adminToken, map[string]any{"key": k.Secret, "permissions": []string{"NOT A SLUG"}})
	s.mustFail(t, domain.EUnauthorized, "POST", "/v1/keys/verify", "", map[string]any{"key": k.Secret})
	s.mustFail(t, domain.EForbidden, "POST", "/v1/keys/verify", s.session("org_v", "u1"), map[string]any{"key": k.Secret})
}
