package httpapi

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// TestLeakReportText: a leak report whose type, url or source holds a
// control or bidirectional character, or whose member name is repeated or
// matches only when case is ignored, is invalid_argument naming it, and
// nothing is appended for the key it names; a presented token with such
// characters is simply not a keyd key.
func TestLeakReportText(t *testing.T) {
	s := newStack(t)
	k := s.createKey("org_leaktext", "ci")
	if err := s.srv.Verifier.WaitApplied(t.Context(), k.Sequence); err != nil {
		t.Fatal(err)
	}
	tok := `"token":"` + k.Secret + `"`
	for _, c := range []struct{ body, mention string }{
		{`[{` + tok + `,"type":"keyd","url":"https://example.com/a\u0000b","source":"content"}]`, "[0].url"},
		{`[{` + tok + `,"type":"keyd","url":"https://example.com/a","source":"con\u202etent"}]`, "[0].source"},
		{`[{` + tok + `,"type":"ke\nyd","url":"https://example.com/a","source":"content"}]`, "[0].type"},
		{`[{` + tok + `,"type":"keyd","url":"https://example.com/a","url":"https://example.com/b","source":"content"}]`, `member \"url\" appears more than once`},
		{`[{` + tok + `,"type":"keyd","URL":"https://example.com/a","source":"content"}]`, `\"URL\"`},
	} {
		r := s.do(t, http.MethodPost, "/v1/leaks", adminToken, []byte(c.body))
		if r.Status != http.StatusBadRequest || !strings.Contains(string(r.Body), domain.EInvalid) || !strings.Contains(string(r.Body), c.mention) {
			t.Errorf("%s: %d %s, want 400 invalid_argument naming %s", c.body, r.Status, r.Body, c.mention)
		}
	}
	var got domain.KeyView
	s.must(t, 200, http.MethodGet, fmt.Sprintf("/v1/orgs/org_leaktext/keys/%s?min_sequence=%d", k.Key.ID, k.Sequence), adminToken, nil).json(t, &got)
	if got.Status != domain.StatusActive || got.Version != 1 {
		t.Fatalf("after refused reports the key is %s at version %d", got.Status, got.Version)
	}
	r := s.do(t, http.MethodPost, "/v1/leaks", adminToken,
		[]byte(`[{"token":"sk_\u0007bell","type":"keyd","url":"https://example.com/a","source":"content"}]`))
	if r.Status != http.StatusOK || !strings.Contains(string(r.Body), "false_positive") {
		t.Errorf("a token with a control character: %d %s, want 200 false_positive", r.Status, r.Body)
	}
}
