package projections

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testworld"
)

// TestForgedEventsNotProjected (H2): a plain NATS client un-revokes a key
// and grants it a permission (unsigned, then badly signed), replays keyd's
// own signed key.created of the key and an old catalog event. Neither the
// projector nor a rebuild applies any of them: the key stays revoked with
// its permissions, the catalog as keyd left it; each is counted
// (OnRejected, the rebuild's report) with its sequence; nothing halts.
func TestForgedEventsNotProjected(t *testing.T) {
	t.Parallel()
	e := newKeydEnv(t)
	var mu sync.Mutex
	var got []eventstore.Rejection
	p := e.projector(e.pool)
	p.OnRejected = func(r eventstore.Rejection) { mu.Lock(); got = append(got, r); mu.Unlock() }
	e.start(p)

	catalog1 := e.define("posts:read", "read")
	e.define("posts:write", "write")
	k := e.create("org_1", "victim", []string{"posts:read"}, nil)
	subject := domain.KeySubject("org_1", k.Key.ID)
	created := e.w.LastRaw(t, subject)
	e.revoke("org_1", k.Key.ID)
	forged := testworld.Unrevoked(t, e.w.LastRaw(t, subject).Data, "posts:write")
	other := domain.NewEventSigner([]byte("not keyd's secret"))
	old := e.w.Raw(t, catalog1)
	seqs := []uint64{
		e.w.Publish(t, subject, forged, ""),
		e.w.Publish(t, subject, forged, other.Sign(subject, forged)),
		e.w.Publish(t, subject, created.Data, created.Header.Get(domain.SignatureHeader)),
		e.w.Publish(t, domain.CatalogSubject, old.Data, old.Header.Get(domain.SignatureHeader)),
	}
	e.caughtUp(p)
	if s := p.Status(); s.Err != nil {
		t.Fatalf("the projector stopped: %v", s.Err)
	}
	check := func(when string) {
		t.Helper()
		row := e.rows(`SELECT status || ' ' || name || ' ' || array_to_string(permissions, ',') FROM keys WHERE key_id = $1`, k.Key.ID)
		if len(row) != 1 || row[0] != "revoked victim posts:read" {
			t.Errorf("%s: key row %v, want revoked victim posts:read", when, row)
		}
		vrow := e.rows(`SELECT status || ' ' || array_to_string(permissions, ',') FROM verification_keys WHERE key_id = $1`, k.Key.ID)
		if len(vrow) != 1 || vrow[0] != "revoked posts:read" {
			t.Errorf("%s: verification row %v", when, vrow)
		}
		if n := e.count(`SELECT count(*) FROM permissions`); n != 2 {
			t.Errorf("%s: %d permissions, want 2 (the replayed catalog has one)", when, n)
		}
		if n := e.count(`SELECT count(*) FROM audit_events WHERE key_id = $1`, k.Key.ID); n != 2 {
			t.Errorf("%s: %d audit events for the key, want 2 (created, revoked)", when, n)
		}
	}
	check("projector")
	mu.Lock()
	var reasons []string
	for i, r := range got {
		reasons = append(reasons, r.Reason)
		if i < len(seqs) && r.Sequence != seqs[i] {
			t.Errorf("rejection %d at sequence %d, want %d", i, r.Sequence, seqs[i])
		}
	}
	mu.Unlock()
	want := []string{eventstore.RejectUnsigned, eventstore.RejectBadSignature, eventstore.RejectRevoked, eventstore.RejectVersion}
	if strings.Join(reasons, ",") != strings.Join(want, ",") {
		t.Errorf("projector set aside %v, want %v", reasons, want)
	}
	// It goes on applying keyd's events.
	k2 := e.create("org_1", "after", nil, nil)
	e.caughtUp(p)
	if n := e.count(`SELECT count(*) FROM keys WHERE key_id = $1`, k2.Key.ID); n != 1 {
		t.Error("a key created after the forgeries is not projected")
	}

	var out bytes.Buffer
	if err := Rebuild(e.ctx, e.pool, e.js, testEventKey, &out); err != nil {
		t.Fatalf("rebuild: %v\n%s", err, out.String())
	}
	check("rebuild")
	for _, s := range seqs {
		if !strings.Contains(out.String(), fmt.Sprintf("set aside the event at sequence %d ", s)) {
			t.Errorf("the rebuild's report does not name sequence %d:\n%s", s, out.String())
		}
	}
}

// TestLegacyEventsBelowMarker: events written before signing (unsigned,
// catalog events without a version) load in the projector and a rebuild
// when they are below the stream's signing marker; keyd's signed events
// after them apply on top (the catalog's first versioned event is 1);
// an unsigned one after the marker is set aside.
func TestLegacyEventsBelowMarker(t *testing.T) {
	t.Parallel()
	cfg := eventstore.StreamConfig(1)
	e := newEnvWithStream(t, cfg) // as an older keyd created it: no marker
	legacy := eventstore.NewJetStream(e.js, e.nc, e.stream)
	old := &domain.Service{Store: legacy, Digester: e.dg, Now: e.svc.Now, Rand: e.svc.Rand}
	// Catalog events of an older keyd: no version.
	legacyRead, _ := json.Marshal(domain.Event{ID: "evt_legacy_read", Type: domain.EventPermissionDefined,
		Data: json.RawMessage(`{"permission":{"slug":"posts:read","description":"read","status":"active"},"catalog":[{"slug":"posts:read","description":"read","status":"active"}]}`)})
	e.w.Publish(t, domain.CatalogSubject, legacyRead, "")
	k, err := old.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "legacy", Permissions: []string{"posts:read"}})
	if err != nil {
		t.Fatal(err)
	}
	legacyCatalog, _ := json.Marshal(domain.Event{ID: "evt_legacy_catalog", Type: domain.EventPermissionDefined,
		Data: json.RawMessage(`{"permission":{"slug":"posts:write","description":"w","status":"active"},"catalog":[{"slug":"posts:read","description":"read","status":"active"},{"slug":"posts:write","description":"w","status":"active"}]}`)})
	e.w.Publish(t, domain.CatalogSubject, legacyCatalog, "")

	// keyd of this version starts: it records the marker after them.
	st, err := eventstore.EnsureStream(e.ctx, e.js, 1)
	if err != nil {
		t.Fatal(err)
	}
	marker := eventstore.SignedFromOf(st.CachedInfo().Config)
	if marker != e.lastSeq()+1 {
		t.Fatalf("marker %d, want %d", marker, e.lastSeq()+1)
	}
	signed := eventstore.NewJetStream(e.js, e.nc, st, eventstore.WithSigner(testworld.Signer))
	svc := &domain.Service{Store: signed, Digester: e.dg, Now: e.svc.Now, Rand: e.svc.Rand}
	if _, err := svc.DefinePermission(e.ctx, domain.DefinePermission{Slug: "posts:admin", Description: "admin"}); err != nil {
		t.Fatal(err)
	}
	name := "renamed by the new keyd"
	if _, err := svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: k.Key.ID, Name: &name}); err != nil {
		t.Fatal(err)
	}
	forged := e.w.Publish(t, domain.KeySubject("org_1", k.Key.ID), testworld.Unrevoked(t, e.w.LastRaw(t, domain.KeySubject("org_1", k.Key.ID)).Data, "posts:admin"), "")

	var mu sync.Mutex
	var got []eventstore.Rejection
	p := e.projector(e.pool)
	p.OnRejected = func(r eventstore.Rejection) { mu.Lock(); got = append(got, r); mu.Unlock() }
	e.start(p)
	e.caughtUp(p)
	check := func(when string) {
		t.Helper()
		if s := p.Status(); s.Err != nil {
			t.Fatalf("%s stopped: %v", when, s.Err)
		}
		if row := e.rows(`SELECT name || ' ' || version FROM keys WHERE key_id = $1`, k.Key.ID); len(row) != 1 || row[0] != name+" 2" {
			t.Errorf("%s: key %v, want %q at version 2", when, row, name)
		}
		if n := e.count(`SELECT count(*) FROM permissions`); n != 3 {
			t.Errorf("%s: %d permissions, want 3", when, n)
		}
		if n := e.count(`SELECT max(version) FROM permissions`); n != 1 {
			t.Errorf("%s: catalog version %d, want 1", when, n)
		}
	}
	check("projector")
	mu.Lock()
	if len(got) != 1 || got[0].Sequence != forged || got[0].Reason != eventstore.RejectUnsigned {
		t.Errorf("set aside %+v, want the unsigned message at %d", got, forged)
	}
	mu.Unlock()
	var out bytes.Buffer
	if err := Rebuild(e.ctx, e.pool, e.js, testEventKey, &out); err != nil {
		t.Fatalf("rebuild: %v\n%s", err, out.String())
	}
	check("rebuild")
}
