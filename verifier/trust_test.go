package verifier

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testworld"
)

// rejections records what a verifier set aside.
type rejections struct {
	mu  sync.Mutex
	got []eventstore.Rejection
}

func (r *rejections) add(x eventstore.Rejection) {
	r.mu.Lock()
	r.got = append(r.got, x)
	r.mu.Unlock()
}

func (r *rejections) reasons() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, x := range r.got {
		out = append(out, x.Reason)
	}
	return out
}

// TestForgedEventsAreSetAside (H2): a plain NATS client that may publish on
// keyd.events.> sends a key.updated that un-revokes a key and grants it a
// permission, unsigned, then with a signature by another key, then replays
// keyd's own signed key.created of that key. The verifier applies none of
// them: the key stays revoked, each is counted with its reason, nothing
// halts, and verifications go on.
func TestForgedEventsAreSetAside(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var rj rejections
	v := e.verifier(func(c *Config) { c.OnRejected = rj.add })
	k := e.create("org_1", domain.CreateKey{})
	subject := domain.KeySubject("org_1", k.Key.ID)
	created := e.w.LastRaw(t, subject)
	seq := e.revoke("org_1", k.Key.ID)
	if err := v.WaitApplied(t.Context(), seq); err != nil {
		t.Fatal(err)
	}
	forged := testworld.Unrevoked(t, e.w.LastRaw(t, subject).Data, "posts:write")
	other := domain.NewEventSigner([]byte("not keyd's deployment secret at all"))
	last := e.w.Publish(t, subject, forged, "")                            // unsigned
	last = e.w.Publish(t, subject, forged, other.Sign(subject, forged))    // bad signature
	last = e.w.Publish(t, subject, forged, "AAAA"+strings.Repeat("x", 84)) // garbage signature
	last = e.w.Publish(t, subject, created.Data, created.Header.Get(domain.SignatureHeader))
	if err := v.WaitApplied(t.Context(), last); err != nil {
		t.Fatal(err)
	}
	if r := verify(t, v, k.Secret); r.Code != CodeRevoked || r.Key.Name == "forged by an unauthenticated NATS client" {
		t.Fatalf("after the forgeries: %s %+v, want revoked and unchanged", r.Code, r.Key)
	}
	want := []string{eventstore.RejectUnsigned, eventstore.RejectBadSignature, eventstore.RejectBadSignature, eventstore.RejectRevoked}
	if got := rj.reasons(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("set aside %v, want %v", got, want)
	}
	if v.Rejected() != 4 {
		t.Errorf("Rejected() = %d, want 4", v.Rejected())
	}
	if s := v.Status(); !s.Ready || s.Err != nil {
		t.Errorf("Status = %+v: a forged event must not halt the verifier", s)
	}
	// It keeps applying keyd's events.
	k2 := e.create("org_1", domain.CreateKey{})
	if err := v.WaitApplied(t.Context(), k2.Sequence); err != nil {
		t.Fatal(err)
	}
	if r := verify(t, v, k2.Secret); r.Code != CodeValid {
		t.Errorf("a key created after the forgeries: %s", r.Code)
	}
	// A verifier booting from the snapshot or replaying the stream agrees.
	e.project()
	for name, opts := range map[string][]cfgOpt{"snapshot": nil, "replay": {withoutPool}} {
		v2 := e.verifier(opts...)
		if r := verify(t, v2, k.Secret); r.Code != CodeRevoked {
			t.Errorf("%s: %s, want revoked", name, r.Code)
		}
	}
}

// TestReplayedEventIsSetAside (H2): keyd's own signed event, published again
// later (its version is not the key's last + 1), is refused: an update is
// not undone by replaying the key's creation.
func TestReplayedEventIsSetAside(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var rj rejections
	v := e.verifier(func(c *Config) { c.OnRejected = rj.add })
	k := e.create("org_1", domain.CreateKey{Name: "first name"})
	subject := domain.KeySubject("org_1", k.Key.ID)
	created := e.w.LastRaw(t, subject)
	name := "second name"
	r, err := e.svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: k.Key.ID, Name: &name})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WaitApplied(t.Context(), r.Sequence); err != nil {
		t.Fatal(err)
	}
	seq := e.w.Publish(t, subject, created.Data, created.Header.Get(domain.SignatureHeader))
	if err := v.WaitApplied(t.Context(), seq); err != nil {
		t.Fatal(err)
	}
	if got := verify(t, v, k.Secret); got.Key.Name != name {
		t.Errorf("after the replay the key is named %q, want %q", got.Key.Name, name)
	}
	if got := rj.reasons(); len(got) != 1 || got[0] != eventstore.RejectVersion {
		t.Errorf("set aside %v, want [version]", got)
	}
	// The command side, too, takes the key as keyd left it: the next
	// update builds on version 2, and the verifier applies it.
	name3 := "third name"
	r, err = e.svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: k.Key.ID, Name: &name3})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.WaitApplied(t.Context(), r.Sequence); err != nil {
		t.Fatal(err)
	}
	if got := verify(t, v, k.Secret); got.Key.Name != name3 {
		t.Errorf("after an update following the replay: %q, want %q", got.Key.Name, name3)
	}
}

// TestVerifierCredential (M1): a verifier built from a kvc_ credential
// verifies keys, and the credential holds nothing that signs a widget
// session: a session token signed with any key derivable from it the way
// keyd derives the session key is refused by keyd's session check.
func TestVerifierCredential(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	k := e.create("org_1", domain.CreateKey{})
	e.project()
	cred := domain.NewVerifierCredential(testSecret).String()
	if !strings.HasPrefix(cred, "kvc_") {
		t.Fatalf("credential %q", cred)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	v, err := Connect(ctx, e.srv.ClientURL(), e.dsn, cred, WithLogger(e.log))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if r := verify(t, v, k.Secret); r.Code != CodeValid {
		t.Fatalf("a key through the credential's verifier: %s", r.Code)
	}
	// Events it did not sign are set aside by it too (it holds the public key).
	subject := domain.KeySubject("org_1", k.Key.ID)
	seq := e.w.Publish(t, subject, testworld.Unrevoked(t, e.w.LastRaw(t, subject).Data, "x:y"), "")
	if err := v.WaitApplied(t.Context(), seq); err != nil {
		t.Fatal(err)
	}
	if v.Rejected() != 1 {
		t.Errorf("the credential's verifier set aside %d events, want 1", v.Rejected())
	}

}

// TestMetadataInterningBounded (M2): 7,000 metadata updates of one key
// leave the interner holding one metadata map, not 7,000.
func TestMetadataInterningBounded(t *testing.T) {
	t.Parallel()
	v := New(Config{Digester: domain.NewDigester(testSecret)})
	a := newApplier(v)
	a.publishWork()
	k := domain.KeyState{ID: "key_01M8SRM1MV8SXEBQYDWAABMPND", OrgID: "org_1", Name: "k",
		Owner:  domain.Owner{Type: "organization", ID: "org_1"},
		Digest: strings.Repeat("ab", 32), Status: domain.StatusActive, Version: 1}
	for i := range 7000 {
		k.Metadata = map[string]string{"n": strings.Repeat("x", 100) + string(rune('a'+i%26)) + string(rune(i))}
		ev := keyEvent(t, k, domain.EventKeyUpdated)
		if why, err := a.apply(domain.KeySubject(k.OrgID, k.ID), ev); err != nil || why != "" {
			t.Fatalf("update %d: %q %v", i, why, err)
		}
		a.commit()
		k.Version++
	}
	if n := a.in.metaSize(); n != 1 {
		t.Errorf("the interner holds %d metadata maps after 7,000 updates of one key, want 1", n)
	}
}

func keyEvent(t *testing.T, k domain.KeyState, typ string) []byte {
	t.Helper()
	data, err := json.Marshal(domain.KeyUpdatedData{Key: k})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(domain.Event{ID: "evt_1", Type: typ, OrgID: k.OrgID, KeyID: k.ID, OccurredAt: time.Now(), Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return b
}
