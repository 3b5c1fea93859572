package domain_test

import (
	"testing"

	"github.com/keyd-dev/keyd/domain"
)

// TestClientCommandIDResend: a client that resends a command with the same
// Keyd-Command-Id (its first reply was lost) gets the result of the first
// one, and nothing is appended again.
func TestClientCommandIDResend(t *testing.T) {
	e := newEnv(t)
	e.define("a:read", "a:write")

	first := e.create("org1", domain.CreateKey{Name: "k", CommandID: "cmd-create-1"})
	seq := e.lastSeq()
	again := e.create("org1", domain.CreateKey{Name: "k", CommandID: "cmd-create-1"})
	if again.Key.ID != first.Key.ID || again.Secret != "" || e.lastSeq() != seq {
		t.Fatalf("resent create: id %s vs %s, secret %q, seq %d vs %d", again.Key.ID, first.Key.ID, again.Secret, e.lastSeq(), seq)
	}
	other := e.create("org1", domain.CreateKey{Name: "k", CommandID: "cmd-create-2"})
	if other.Key.ID == first.Key.ID || other.Secret == "" {
		t.Fatal("a different command id must create a new key")
	}

	sp := domain.SetPermissions{KeyID: first.Key.ID, Permissions: []string{"a:read"}, ExpectedVersion: ptr(int64(1)), CommandID: "cmd-sp-1"}
	r1, err := e.svc.SetPermissions(e.ctx, "org1", sp)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := e.svc.SetPermissions(e.ctx, "org1", sp)
	if err != nil || r2.Sequence != r1.Sequence || r2.Key.Version != 2 {
		t.Fatalf("resent set_permissions with expected_version: %v, seq %d vs %d", err, r2.Sequence, r1.Sequence)
	}

	rot := domain.RotateKey{KeyID: first.Key.ID, GracePeriodSeconds: ptr(int64(60)), CommandID: "cmd-rot-1"}
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
