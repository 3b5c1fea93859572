package httpapi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// signer is a test's own P-256 key pair, listed as GitHub lists its keys.
type signer struct {
	id   string
	priv *ecdsa.PrivateKey
}

func newSigner(t *testing.T, id string) signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return signer{id: id, priv: k}
}

func (s signer) entry(t *testing.T) map[string]any {
	der, err := x509.MarshalPKIXPublicKey(&s.priv.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]any{"key_identifier": s.id, "is_current": true,
		"key": string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))}
}

func (s signer) sign(t *testing.T, body []byte) string {
	h := sha256.Sum256(body)
	sig, err := ecdsa.SignASN1(rand.Reader, s.priv, h[:])
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

func TestLeakReports(t *testing.T) {
	github := newSigner(t, "gh-key-1")
	other := newSigner(t, "gh-key-1") // same id, another key: a forgery
	list, _ := json.Marshal(map[string]any{"public_keys": []any{github.entry(t)}})
	keys, err := ParseLeakKeys(list)
	if err != nil {
		t.Fatal(err)
	}
	s := newStack(t, func(srv *Server) { srv.LeakKeys = keys })
	k := s.createKey("org_leak", "ci")
	if err := s.srv.Verifier.WaitApplied(t.Context(), k.Sequence); err != nil {
		t.Fatal(err)
	}
	url := "https://github.com/acme/app/blob/abc/.env"
	body, _ := json.Marshal([]map[string]string{
		{"token": k.Secret, "type": "keyd_api_key", "url": url, "source": "content"},
		{"token": "sk_notakeyatall", "type": "keyd_api_key", "url": url, "source": "content"},
	})
	post := func(sig, id string, b []byte) reply {
		return s.do(t, http.MethodPost, "/v1/leaks", "", b, LeakKeyIDHeader, id, LeakSignatureHeader, sig)
	}

	if r := post(other.sign(t, body), github.id, body); r.Status != http.StatusUnauthorized {
		t.Fatalf("bad signature: %d %s", r.Status, r.Body)
	}
	if r := post(github.sign(t, body), "gh-unknown", body); r.Status != http.StatusUnauthorized {
		t.Fatalf("unknown key id: %d %s", r.Status, r.Body)
	}
	if r := s.do(t, http.MethodPost, "/v1/leaks", "", body); r.Status != http.StatusUnauthorized {
		t.Fatalf("no authentication: %d %s", r.Status, r.Body)
	}
	// Nothing happened to the key.
	var got domain.KeyView
	s.must(t, 200, http.MethodGet, fmt.Sprintf("/v1/orgs/org_leak/keys/%s?min_sequence=%d", k.Key.ID, k.Sequence), adminToken, nil).json(t, &got)
	if got.Status != domain.StatusActive {
		t.Fatalf("after refused reports the key is %s", got.Status)
	}

	r := post(github.sign(t, body), github.id, body)
	if r.Status != http.StatusOK {
		t.Fatalf("good signature: %d %s", r.Status, r.Body)
	}
	var labels []leakLabel
	r.json(t, &labels)
	if len(labels) != 2 || labels[0].Label != "true_positive" || labels[1].Label != "false_positive" || labels[0].TokenType != "keyd_api_key" {
		t.Fatalf("labels %+v", labels)
	}
	var hist historyList
	s.must(t, 200, http.MethodGet, "/v1/orgs/org_leak/keys/"+k.Key.ID+"/history?min_sequence=3", adminToken, nil).json(t, &hist)
	var types []string
	for _, h := range hist.Data {
		types = append(types, h.Type)
	}
	if strings.Join(types, ",") != "key.created,key.leaked,key.revoked" {
		t.Fatalf("history %v", types)
	}
	if last := hist.Data[len(hist.Data)-1]; last.Key.Status != domain.StatusRevoked || last.Actor.ID != "keyd" {
		t.Fatalf("last %+v", last)
	}
	// The same report again appends nothing.
	before := hist.Data[len(hist.Data)-1].Sequence
	if r := post(github.sign(t, body), github.id, body); r.Status != http.StatusOK {
		t.Fatalf("repeat: %d %s", r.Status, r.Body)
	}
	time.Sleep(200 * time.Millisecond)
	s.must(t, 200, http.MethodGet, "/v1/orgs/org_leak/keys/"+k.Key.ID+"/history", adminToken, nil).json(t, &hist)
	if n := hist.Data[len(hist.Data)-1].Sequence; len(hist.Data) != 3 || n != before {
		t.Fatalf("a repeated report appended: %d events, last %d (was %d)", len(hist.Data), n, before)
	}
	// Tokens are never logged.
	if strings.Contains(s.logs.String(), k.Secret) {
		t.Fatal("a leaked token was logged")
	}
}

func TestSuspendExpiryHistoryOverHTTP(t *testing.T) {
	s := newStack(t)
	k := s.createKey("org_l", "ci")
	tok := s.session("org_l", "alice")
	base := "/v1/orgs/org_l/keys/" + k.Key.ID
	var res domain.KeyResult
	s.must(t, 200, http.MethodPost, base+"/suspend", tok, map[string]any{"reason": "rotating laptops"}).json(t, &res)
	if res.Key.Status != domain.StatusSuspended {
		t.Fatalf("suspend: %+v", res.Key)
	}
	var list keyList
	s.must(t, 200, http.MethodGet, fmt.Sprintf("/v1/orgs/org_l/keys?status=suspended&min_sequence=%d", res.Sequence), tok, nil).json(t, &list)
	if len(list.Data) != 1 || list.Data[0].ID != k.Key.ID {
		t.Fatalf("status=suspended lists %+v", list.Data)
	}
	s.must(t, 200, http.MethodPost, base+"/resume", tok, map[string]any{}).json(t, &res)
	at := time.Now().UTC()
	time.Sleep(5 * time.Millisecond)
	exp := time.Now().Add(time.Hour).UTC().Truncate(time.Second)
	s.must(t, 200, http.MethodPut, base+"/expiry", tok, map[string]any{"expires_at": exp}).json(t, &res)
	if res.Key.ExpiresAt == nil || !res.Key.ExpiresAt.Equal(exp) {
		t.Fatalf("expiry %v, want %v", res.Key.ExpiresAt, exp)
	}
	s.mustFail(t, domain.EInvalid, http.MethodPut, base+"/expiry", tok, map[string]any{})
	s.must(t, 200, http.MethodPut, base+"/expiry", tok, map[string]any{"expires_at": nil}).json(t, &res)
	if res.Key.ExpiresAt != nil {
		t.Fatalf("cleared expiry is %v", res.Key.ExpiresAt)
	}
	var hist historyList
	s.must(t, 200, http.MethodGet, fmt.Sprintf("%s/history?min_sequence=%d", base, res.Sequence), tok, nil).json(t, &hist)
	var types []string
	for _, h := range hist.Data {
		types = append(types, h.Type)
	}
	if strings.Join(types, ",") != "key.created,key.suspended,key.resumed,key.expiry_changed,key.expiry_changed" {
		t.Fatalf("history %v", types)
	}
	var then domain.KeyView
	s.must(t, 200, http.MethodGet, base+"?at="+at.Format(time.RFC3339Nano), tok, nil).json(t, &then)
	if then.Status != domain.StatusActive || then.Version != 3 || then.ExpiresAt != nil {
		t.Fatalf("key at %s: %+v", at, then)
	}
	s.mustFail(t, domain.ENotFound, http.MethodGet, base+"?at=2000-01-01T00:00:00Z", tok, nil)
	s.mustFail(t, domain.EInvalid, http.MethodGet, base+"?at=yesterday", tok, nil)
	// Policies: the widget reads, only the admin sets.
	s.mustFail(t, domain.EForbidden, http.MethodPut, "/v1/orgs/org_l/policy", tok, map[string]any{"require_expiry": true})
	var pol domain.PolicyResult
	s.must(t, 200, http.MethodPut, "/v1/orgs/org_l/policy", adminToken, map[string]any{"max_lifetime_seconds": 3600}).json(t, &pol)
	s.must(t, 200, http.MethodGet, "/v1/orgs/org_l/policy", tok, nil).json(t, &pol)
	if pol.Policy.MaxLifetimeSeconds == nil || *pol.Policy.MaxLifetimeSeconds != 3600 || pol.Policy.Version != 1 {
		t.Fatalf("policy %+v", pol.Policy)
	}
	s.mustFail(t, domain.EPrecondition, http.MethodPut, base+"/expiry", tok, map[string]any{"expires_at": nil})
}
