package domain_test

import (
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// TestClientCommandIDResend: a client that resends a command with the same
// Keyd-Command-Id (its first reply was lost) gets the result of the first
// one, and nothing is appended again.
func TestClientCommandIDResend(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a:read", "a:write")

	first := e.create("org1", domain.CreateKey{Name: "k", Meta: domain.Meta{CommandID: "cmd-create-1"}})
	seq := e.lastSeq()
	again := e.create("org1", domain.CreateKey{Name: "k", Meta: domain.Meta{CommandID: "cmd-create-1"}})
	if again.Key.ID != first.Key.ID || again.Secret != "" || e.lastSeq() != seq {
		t.Fatalf("resent create: id %s vs %s, secret %q, seq %d vs %d", again.Key.ID, first.Key.ID, again.Secret, e.lastSeq(), seq)
	}
	other := e.create("org1", domain.CreateKey{Name: "k", Meta: domain.Meta{CommandID: "cmd-create-2"}})
	if other.Key.ID == first.Key.ID || other.Secret == "" {
		t.Fatal("a different command id must create a new key")
	}

	sp := domain.SetPermissions{KeyID: first.Key.ID, Permissions: []string{"a:read"}, ExpectedVersion: ptr(int64(1)), Meta: domain.Meta{CommandID: "cmd-sp-1"}}
	r1, err := e.svc.SetPermissions(e.ctx, "org1", sp)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.svc.SetPermissions(e.ctx, "org1", sp)
	if err != nil || r2.Sequence != r1.Sequence || r2.Key.Version != 2 {
		t.Fatalf("resent set_permissions with expected_version: %v, seq %d vs %d", err, r2.Sequence, r1.Sequence)
	}

	rot := domain.RotateKey{KeyID: first.Key.ID, GracePeriodSeconds: ptr(int64(60)), Meta: domain.Meta{CommandID: "cmd-rot-1"}}
	a, err := e.svc.RotateKey(e.ctx, "org1", rot)
	if err != nil {
		t.Fatal(err)
	}
	seq = e.lastSeq()
	b, err := e.svc.RotateKey(e.ctx, "org1", rot)
	if err != nil {
		t.Fatal(err)
	}
	if b.Key.ID != a.Key.ID || b.Secret != "" || b.Previous.ID != first.Key.ID || e.lastSeq() != seq {
		t.Fatalf("resent rotate: new key %s vs %s, secret %q, appended %d", b.Key.ID, a.Key.ID, b.Secret, e.lastSeq()-seq)
	}
}

// TestIdempotentCreateAfterUnknownOutcome: a create whose append landed but
// whose store reported failure keeps its idempotency reservation, so the
// client's retry gets that key instead of a second one.
func TestIdempotentCreateAfterUnknownOutcome(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.store.unknownOutcome = func(n int) bool { return n == 1 }
	_, err := e.svc.CreateKey(e.ctx, "org1", domain.CreateKey{Name: "k", IdempotencyKey: "retry-me"})
	if domain.ErrorCode(err) != domain.EUnavailable {
		t.Fatalf("first create: %v, want unavailable", err)
	}
	seq := e.lastSeq()
	res := e.create("org1", domain.CreateKey{Name: "k", IdempotencyKey: "retry-me"})
	if res.Secret != "" || e.lastSeq() != seq || res.Key.Name != "k" {
		t.Fatalf("retry created another key: secret %q, events %d -> %d", res.Secret, seq, e.lastSeq())
	}
}

// TestIdempotentCreateAfterRulesChanged: a repeated create gets the first
// key even when its permission was retired or its expires_at passed since.
func TestIdempotentCreateAfterRulesChanged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a:read")
	exp := t0.Add(time.Hour)
	cmd := domain.CreateKey{Name: "k", Permissions: []string{"a:read"}, ExpiresAt: &exp, IdempotencyKey: "i1"}
	first := e.create("org1", cmd)
	if _, err := e.svc.RetirePermission(e.ctx, domain.RetirePermission{Slug: "a:read"}); err != nil {
		t.Fatal(err)
	}
	e.clk.Advance(2 * time.Hour)
	again := e.create("org1", cmd)
	if again.Key.ID != first.Key.ID || again.Secret != "" || again.Key.Status != domain.StatusExpired {
		t.Fatalf("repeat after retire and expiry: %+v", again.Key)
	}
}

// TestClientCommandIDReusedForAnotherCommand: a Keyd-Command-Id that an
// update used does not make a later revoke a silent no-op.
func TestClientCommandIDReusedForAnotherCommand(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org1", domain.CreateKey{Name: "k"})
	if _, err := e.svc.UpdateKey(e.ctx, "org1", domain.UpdateKey{KeyID: k.Key.ID, Name: ptr("renamed"), Meta: domain.Meta{CommandID: "req-7"}}); err != nil {
		t.Fatal(err)
	}
	_, err := e.svc.RevokeKey(e.ctx, "org1", domain.RevokeKey{KeyID: k.Key.ID, Meta: domain.Meta{CommandID: "req-7"}})
	wantErr(t, err, domain.EInvalid, "req-7")
	if got := e.load("org1", k.Key.ID); got.Status != domain.StatusActive || got.Version != 2 {
		t.Fatalf("key changed: %+v", got)
	}
}

// TestKeyIDsIncreaseWithinAMillisecond: keys one Service creates in the same
// millisecond still sort in creation order (lists are newest first by id).
func TestKeyIDsIncreaseWithinAMillisecond(t *testing.T) {
	t.Parallel()
	e := newEnv(t) // the clock stands still
	prev := ""
	for i := range 50 {
		id := e.create("org1", domain.CreateKey{Name: "k"}).Key.ID
		if id <= prev {
			t.Fatalf("key %d: id %s after %s", i, id, prev)
		}
		prev = id
	}
}

// TestLostReplyThenAnotherWriter: our append lands, its reply is lost, and
// another writer changes the key before we look again. The command still
// succeeds once, with the state it produced, and is not applied twice.
func TestLostReplyThenAnotherWriter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a:read")
	k := e.create("org1", domain.CreateKey{Name: "k"})
	e.store.lostReply = func(n int) bool {
		if n != 1 {
			return false
		}
		if _, err := e.other.SetPermissions(e.ctx, "org1", domain.SetPermissions{KeyID: k.Key.ID, Permissions: []string{"a:read"}}); err != nil {
			t.Errorf("other writer: %v", err)
		}
		return true
	}
	e.store.calls = 0
	res, err := e.svc.UpdateKey(e.ctx, "org1", domain.UpdateKey{KeyID: k.Key.ID, Name: ptr("renamed")})
	if err != nil {
		t.Fatalf("update after a lost reply and another writer: %v", err)
	}
	if res.Key.Name != "renamed" || res.Key.Version != 2 {
		t.Fatalf("reply %+v, want the state our update produced (version 2)", res.Key)
	}
	got := e.load("org1", k.Key.ID)
	if got.Version != 3 || got.Name != "renamed" || len(got.Permissions) != 1 {
		t.Fatalf("key now %+v, want version 3 (our update once, then the other writer)", got)
	}
}

// TestCatalogLostReplyThenAnotherWriter: the catalog goes through the same
// engine as keys: a define whose reply was lost, followed by another
// writer's define, is recognized among the events since (not decided anew),
// and replies with the permission as it left it.
func TestCatalogLostReplyThenAnotherWriter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.store.lostReply = func(n int) bool {
		if n != 1 {
			return false
		}
		if _, err := e.other.DefinePermission(e.ctx, domain.DefinePermission{Slug: "b", Description: "B"}); err != nil {
			t.Errorf("other writer: %v", err)
		}
		return true
	}
	r, err := e.svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: "a", Description: "A"})
	if err != nil {
		t.Fatalf("define after a lost reply and another writer: %v", err)
	}
	if r.Permission != active("a", "A") || r.Sequence != 1 {
		t.Errorf("reply %+v, want permission a at sequence 1 (our event)", r)
	}
	if e.lastSeq() != 2 || e.store.Calls() != 1 {
		t.Errorf("%d events, %d appends; want 2 events (ours once, then the other) and no second append", e.lastSeq(), e.store.Calls())
	}
}
