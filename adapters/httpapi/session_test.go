package httpapi

import (
	"encoding/base64"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// clock is a settable test clock.
type clock struct{ t time.Time }

func (c *clock) Now() time.Time { return c.t }

func mustIssue(t *testing.T, s *Sessions, org, user string, ttl time.Duration) string {
	t.Helper()
	tok, _, err := s.Issue(org, user, ttl)
	if err != nil {
		t.Fatalf("Issue(%q, %q, %s): %v", org, user, ttl, err)
	}
	return tok
}

func TestSessionsIssueVerify(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 600_700_000, time.UTC)}
	s := NewSessions(domain.DeriveKey([]byte("deployment secret"), SessionKeyLabel), c.Now)
	tok, exp, err := s.Issue("org_1", "user 42", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok, SessionTokenPrefix) {
		t.Errorf("token %q lacks prefix %q", tok, SessionTokenPrefix)
	}
	if want := c.t.Add(10 * time.Minute).Truncate(time.Millisecond); !exp.Equal(want) || exp.Location() != time.UTC {
		t.Errorf("expires = %v, want %v in UTC", exp, want)
	}
	got, err := s.Verify(tok)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if want := (Session{ID: got.ID, OrgID: "org_1", UserID: "user 42", ExpiresAt: exp, Scope: ScopeOrganization}); got.ID == "" || !reflect.DeepEqual(got, want) {
		t.Errorf("Verify = %+v, want %+v", got, want)
	}
	if tok2 := mustIssue(t, s, "org_1", "user 42", 10*time.Minute); tok2 == tok {
		t.Error("two tokens for the same session are equal; the nonce is missing")
	}
	// Another deployment's key does not verify it.
	other := NewSessions(domain.DeriveKey([]byte("another secret"), SessionKeyLabel), c.Now)
	if _, err := other.Verify(tok); domain.ErrorCode(err) != domain.EUnauthorized {
		t.Errorf("Verify with another key: %v, want unauthenticated", err)
	}
}

func TestSessionsExpiry(t *testing.T) {
	t.Parallel()
	c := &clock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
	s := NewSessions([]byte("k"), c.Now)
	tok := mustIssue(t, s, "org_1", "u", time.Minute)
	c.t = c.t.Add(time.Minute - time.Millisecond)
	if _, err := s.Verify(tok); err != nil {
		t.Fatalf("Verify 1 ms before expiry: %v", err)
	}
	c.t = c.t.Add(time.Millisecond)
	_, err := s.Verify(tok)
	if domain.ErrorCode(err) != domain.EUnauthorized || !strings.Contains(domain.ErrorMessage(err), "expired") {
		t.Fatalf("Verify at expiry: %v, want unauthenticated saying expired", err)
	}
}

func TestSessionsTampering(t *testing.T) {
	t.Parallel()
	s := NewSessions([]byte("k"), nil)
	tok := mustIssue(t, s, "org_1", "u", time.Minute)
	body := tok[len(SessionTokenPrefix):]
	dot := strings.IndexByte(body, '.')
	flip := func(i int) string {
		b := []byte(tok)
		j := len(SessionTokenPrefix) + i
		if b[j] == 'A' {
			b[j] = 'B'
		} else {
			b[j] = 'A'
		}
		return string(b)
	}
	// A token for another org with the original signature.
	p, _ := base64.RawURLEncoding.DecodeString(body[:dot])
	forged := SessionTokenPrefix + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(string(p), "org_1", "org_2", 1))) + body[dot:]
	cases := map[string]string{
		"payload byte":   flip(0),
		"payload end":    flip(dot - 1),
		"signature byte": flip(dot + 1),
		"signature end":  flip(len(body) - 1),
		"other org":      forged,
		"no signature":   tok[:len(SessionTokenPrefix)+dot],
		"empty sig":      tok[:len(SessionTokenPrefix)+dot+1],
		"no prefix":      body,
		"garbage":        "kws_!!!.???",
		"empty":          "",
		"huge":           SessionTokenPrefix + strings.Repeat("A", 5000),
	}
	for name, bad := range cases {
		if _, err := s.Verify(bad); domain.ErrorCode(err) != domain.EUnauthorized {
			t.Errorf("%s: Verify = %v, want unauthenticated", name, err)
		}
	}
}

func TestSessionsIssueRejects(t *testing.T) {
	t.Parallel()
	s := NewSessions([]byte("k"), nil)
	for _, c := range []struct {
		org, user string
		ttl       time.Duration
	}{
		{"bad org!", "u", time.Minute},
		{"", "u", time.Minute},
		{"org", "", time.Minute},
		{"org", strings.Repeat("x", 201), time.Minute},
		{"org", "\xff", time.Minute},
		{"org", "u", 0},
		{"org", "u", MaxSessionTTL + time.Second},
	} {
		if _, _, err := s.Issue(c.org, c.user, c.ttl); domain.ErrorCode(err) != domain.EInvalid {
			t.Errorf("Issue(%q, %q, %s) = %v, want invalid_argument", c.org, c.user, c.ttl, err)
		}
	}
	if _, _, err := s.Issue("org", strings.Repeat("x", 200), MaxSessionTTL); err != nil {
		t.Errorf("Issue at the limits: %v", err)
	}
}
