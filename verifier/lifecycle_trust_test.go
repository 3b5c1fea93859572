package verifier

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// TestLifecycleEventsUnderInvariants: the lifecycle events keyd signs pass
// the invariants on apply (a notice keeps the key's version and is applied;
// the suspend after it is the next version), and a replay of keyd's own
// signed org.policy_changed after a later one is set aside (version), in
// the running verifier and in one booted from the snapshot: the
// organization's allowed_cidrs stay as the last policy set them.
func TestLifecycleEventsUnderInvariants(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var rj rejections
	v := e.verifier(func(c *Config) { c.OnRejected = rj.add })
	const org = "org_lc"
	exp := time.Now().Add(time.Hour)
	k := e.create(org, domain.CreateKey{ExpiresAt: &exp})

	// key.expiring is due (the default notice is 7 days): same version.
	ok, seq, err := e.svc.AppendNotice(e.ctx, org, k.Key.ID, domain.EventKeyExpiring)
	if err != nil || !ok {
		t.Fatalf("AppendNotice = %v, %v", ok, err)
	}
	if err := v.WaitApplied(e.ctx, seq); err != nil {
		t.Fatal(err)
	}
	if r := verify(t, v, k.Secret); r.Code != CodeValid {
		t.Fatalf("after key.expiring: %s, want valid", r.Code)
	}
	s, err := e.svc.SuspendKey(e.ctx, org, domain.SuspendKey{KeyID: k.Key.ID, Reason: "after the notice"})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WaitApplied(e.ctx, s.Sequence); err != nil {
		t.Fatal(err)
	}
	if r := verify(t, v, k.Secret); r.Code != CodeSuspended {
		t.Fatalf("after suspend: %s, want suspended (the notice must not have been set aside)", r.Code)
	}
	if got := rj.reasons(); len(got) != 0 {
		t.Fatalf("keyd's own notice and suspend were set aside: %v", got)
	}
	if _, err := e.svc.ResumeKey(e.ctx, org, domain.ResumeKey{KeyID: k.Key.ID}); err != nil {
		t.Fatal(err)
	}

	// Policy v1 restricts addresses; v2 lifts it; v1 replayed.
	p1, err := e.svc.SetPolicy(e.ctx, org, domain.SetPolicy{AllowedCIDRs: []string{"10.0.0.0/8"}})
	if err != nil {
		t.Fatal(err)
	}
	first := e.w.LastRaw(t, domain.OrgSubject(org))
	if _, err := e.svc.SetPolicy(e.ctx, org, domain.SetPolicy{}); err != nil {
		t.Fatal(err)
	}
	last := e.w.Publish(t, domain.OrgSubject(org), first.Data, first.Header.Get(domain.SignatureHeader))
	if err := v.WaitApplied(e.ctx, last); err != nil {
		t.Fatal(err)
	}
	outside := netip.MustParseAddr("192.0.2.7")
	check := func(v *Verifier, who string) {
		t.Helper()
		r, err := v.VerifyFrom(e.ctx, k.Secret, outside)
		if err != nil {
			t.Fatal(err)
		}
		if r.Code != CodeValid {
			t.Errorf("%s: verify from %s = %s, want valid (the replayed policy of sequence %d must be set aside)", who, outside, r.Code, p1.Sequence)
		}
	}
	check(v, "running verifier")
	if got, want := rj.reasons(), []string{eventstore.RejectVersion}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("set aside %v, want %v", got, want)
	}

	// Booted from the snapshot (policies carry their version), then the
	// replay once more on the stream after the checkpoint.
	e.project()
	var rj2 rejections
	v2 := e.verifier(func(c *Config) { c.OnRejected = rj2.add })
	again := e.w.Publish(t, domain.OrgSubject(org), first.Data, first.Header.Get(domain.SignatureHeader))
	if err := v2.WaitApplied(e.ctx, again); err != nil {
		t.Fatal(err)
	}
	check(v2, "verifier booted from the snapshot")
	if got, want := rj2.reasons(), []string{eventstore.RejectVersion}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("snapshot verifier set aside %v, want %v", got, want)
	}
}
