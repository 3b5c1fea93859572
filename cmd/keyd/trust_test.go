package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/internal/testworld"
	"github.com/keyd-dev/keyd/verifier"
)

// TestForgedEventCountedAndIgnored (H2, end to end): against keyd dev (NATS
// without auth), a plain client publishes an unsigned key.updated that
// un-revokes a key and grants it posts:write. keyd's verifier and projector
// set it aside (keyd_events_rejected_total counts it for each), the key
// stays revoked, /readyz-level status stays healthy, and the command side
// keeps working on the key (its next change lands after the forgery).
func TestForgedEventCountedAndIgnored(t *testing.T) {
	t.Parallel()
	r := MustStart(t, nil, devArgs(t.TempDir(), testenv.PostgresURL(t))...)
	a := r.App
	nc := connect(t, a.NATSURL)
	mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"posts:read","description":"Read posts"}`))
	mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"posts:write","description":"Write posts"}`))
	created := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.create", map[string]any{"name": "victim", "permissions": []string{"posts:read"}}))
	secret, _ := created["secret"].(string)
	keyID, _ := keyOf(created)["id"].(string)
	mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.revoke", map[string]any{"key_id": keyID, "reason": "leaked"}))

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	subject := domain.KeySubject("org_1", keyID)
	st, err := js.Stream(t.Context(), domain.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(t.Context(), subject)
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.PublishMsg(t.Context(), &nats.Msg{Subject: subject, Data: testworld.Unrevoked(t, last.Data, "posts:write"),
		Header: nats.Header{"Keyd-Event-Type": {domain.EventKeyUpdated}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := a.Verifier.WaitApplied(ctx, ack.Sequence); err != nil {
		t.Fatal(err)
	}
	res, err := a.Verifier.Verify(ctx, secret, "posts:write")
	if err != nil || res.Code != verifier.CodeRevoked {
		t.Fatalf("after the forgery: %+v %v, want revoked", res, err)
	}
	testenv.WaitFor(t, 10*time.Second, "the projector to pass the forgery", func() bool { return a.Projector.Status().Applied >= ack.Sequence })
	if s := a.Projector.Status(); s.Err != nil {
		t.Fatalf("projector: %v", s.Err)
	}
	for _, reader := range []string{readerVerifier, readerProjector} {
		if n := rejectedCount(t, a, reader, "unsigned"); n != 1 {
			t.Errorf("keyd_events_rejected_total{reader=%q,reason=\"unsigned\"} = %v, want 1", reader, n)
		}
	}
	// The command side takes the key as keyd left it, revoked: no
	// un-revoke through it either.
	if rep := request(t, nc, "keyd.cmd.keys.org_1.update", map[string]any{"key_id": keyID, "name": "renamed"}); errCode(rep) != "failed_precondition" {
		t.Errorf("update of the revoked key after the forgery: %v, want failed_precondition", rep)
	}
	// On an active key, the command side's next change lands after a
	// forgery (its guard is the subject's last message, forged or not).
	other := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.create", map[string]any{"name": "other"}))
	otherID, _ := keyOf(other)["id"].(string)
	osubj := domain.KeySubject("org_1", otherID)
	olast, err := st.GetLastMsgForSubject(t.Context(), osubj)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(t.Context(), &nats.Msg{Subject: osubj, Data: testworld.Unrevoked(t, olast.Data, "posts:write")}); err != nil {
		t.Fatal(err)
	}
	up := mustOK(t, request(t, nc, "keyd.cmd.keys.org_1.update", map[string]any{"key_id": otherID, "name": "renamed by keyd"}))
	if k := keyOf(up); k["name"] != "renamed by keyd" || k["version"] != 2.0 || k["permissions"] == nil {
		t.Errorf("update after the forgery: %v, want version 2", k)
	}
	seq, _ := up["sequence"].(float64)
	if err := a.Verifier.WaitApplied(ctx, uint64(seq)); err != nil {
		t.Fatal(err)
	}
	osecret, _ := other["secret"].(string)
	if res, _ := a.Verifier.Verify(ctx, osecret, "posts:write"); res.Code != verifier.CodeInsufficientPermissions || res.Key.Name != "renamed by keyd" {
		t.Errorf("the other key after the update: %s %q, want insufficient_permissions, renamed by keyd", res.Code, res.Key.Name)
	}
}

func rejectedCount(t *testing.T, a *App, reader, reason string) float64 {
	t.Helper()
	mfs, err := a.Metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keyd_events_rejected_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["reader"] == reader && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no keyd_events_rejected_total{reader=%q,reason=%q}", reader, reason)
	return 0
}

// TestVerifierCredentialCommand (M1): keyd verifier-credential prints a
// credential whose digests and event key are those of KEYD_SECRET, and
// which does not contain the secret.
func TestVerifierCredentialCommand(t *testing.T) {
	t.Parallel()
	secret := "a deployment secret of at least thirty-two bytes"
	var out, errOut testenv.SyncBuffer
	m := NewMain(&out, &errOut, func(k string) string { return map[string]string{"KEYD_SECRET": secret}[k] })
	if err := m.Run(t.Context(), []string{"verifier-credential"}); err != nil {
		t.Fatalf("%v: %s", err, errOut.String())
	}
	c, err := domain.ParseVerifierCredential(out.String())
	if err != nil {
		t.Fatalf("the printed credential: %v", err)
	}
	if c.Digester().Digest("sk_x") != domain.NewDigester([]byte(secret)).Digest("sk_x") ||
		string(c.EventKey().Bytes()) != string(domain.NewEventSigner([]byte(secret)).PublicKey().Bytes()) {
		t.Error("the credential's keys are not KEYD_SECRET's")
	}
	if strings.Contains(out.String(), secret) {
		t.Error("the credential contains the secret")
	}
}
