package projections

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/domain"
)

type keyRow struct {
	KeyID, OrgID, Name, OwnerType, OwnerID, Mask string
	Permissions                                  []string
	Status                                       string
	CreatedAt                                    time.Time
	ExpiresAt, RevokedAt, LastUsedAt             *time.Time
	Metadata                                     map[string]string
	Version                                      int64
	LastSeq                                      int64
}

type verifRow struct {
	Digest                                 []byte
	KeyID, OrgID, OwnerType, OwnerID, Name string
	Permissions                            []string
	ExpiresAt                              *time.Time
	Status                                 string
	Metadata                               map[string]string
	LastSeq                                int64
}

func (e *env) keyRow(keyID string) keyRow {
	e.t.Helper()
	var r keyRow
	err := e.pool.QueryRow(e.ctx, `SELECT key_id, org_id, name, owner_type, owner_id, mask, permissions, status, created_at,
 expires_at, revoked_at, last_used_at, metadata, version, last_seq FROM keys WHERE key_id = $1`, keyID).Scan(
		&r.KeyID, &r.OrgID, &r.Name, &r.OwnerType, &r.OwnerID, &r.Mask, &r.Permissions, &r.Status, &r.CreatedAt,
		&r.ExpiresAt, &r.RevokedAt, &r.LastUsedAt, &r.Metadata, &r.Version, &r.LastSeq)
	if err != nil {
		e.t.Fatalf("keys row %s: %v", keyID, err)
	}
	return r
}

func (e *env) verifRow(keyID string) verifRow {
	e.t.Helper()
	var r verifRow
	err := e.pool.QueryRow(e.ctx, `SELECT digest, key_id, org_id, owner_type, owner_id, name, permissions, expires_at,
 status, metadata, last_seq FROM verification_keys WHERE key_id = $1`, keyID).Scan(
		&r.Digest, &r.KeyID, &r.OrgID, &r.OwnerType, &r.OwnerID, &r.Name, &r.Permissions, &r.ExpiresAt,
		&r.Status, &r.Metadata, &r.LastSeq)
	if err != nil {
		e.t.Fatalf("verification_keys row %s: %v", keyID, err)
	}
	return r
}

type auditRow struct {
	Seq                         int64
	OrgID, KeyID, EventID, Type string
	OccurredAt                  time.Time
	EnvID, EnvType              string
}

func (e *env) auditRows() []auditRow {
	e.t.Helper()
	rows, err := e.pool.Query(e.ctx, `SELECT seq, org_id, key_id, event_id, type, occurred_at, envelope->>'id', envelope->>'type'
 FROM audit_events ORDER BY seq`)
	if err != nil {
		e.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[auditRow])
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

func (e *env) permissionRows() map[string][2]string {
	e.t.Helper()
	out := map[string][2]string{}
	rows, err := e.pool.Query(e.ctx, `SELECT slug, description, status FROM permissions`)
	if err != nil {
		e.t.Fatal(err)
	}
	var slug, desc, status string
	if _, err := pgx.ForEachRow(rows, []any{&slug, &desc, &status}, func() error {
		out[slug] = [2]string{desc, status}
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// applyNew applies every event appended since the last call, in one batch.
func (e *env) applyNew(applied *uint64) {
	e.t.Helper()
	last := e.lastSeq()
	if last > *applied {
		*applied = e.apply(DefaultTables, e.records(*applied+1, last))
	}
	if *applied != last {
		e.t.Fatalf("applied up to %d, want %d", *applied, last)
	}
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return a.Equal(*b)
}

func TestApplyBatchEffectOfEachEventType(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var applied uint64
	const org = "org_1"

	// permission.defined
	e.define("posts:read", "Read posts")
	seq := e.define("posts:write", "Write posts")
	e.applyNew(&applied)
	if got, want := e.permissionRows(), map[string][2]string{
		"posts:read": {"Read posts", "active"}, "posts:write": {"Write posts", "active"},
	}; !mapsEqual(got, want) {
		t.Fatalf("permissions = %v, want %v", got, want)
	}
	if got := e.count(`SELECT count(*) FROM permissions WHERE last_seq = $1`, int64(seq)); got != 2 {
		t.Errorf("%d permissions rows at the last catalog event's sequence, want 2", got)
	}

	// key.created
	c := e.create(org, "CI deploy", []string{"posts:read"}, map[string]string{"team": "ci"})
	e.applyNew(&applied)
	k := e.keyRow(c.Key.ID)
	want := keyRow{KeyID: c.Key.ID, OrgID: org, Name: "CI deploy", OwnerType: "organization", OwnerID: org,
		Mask: domain.Mask(c.Secret), Permissions: []string{"posts:read"}, Status: "active", CreatedAt: c.Key.CreatedAt,
		Metadata: map[string]string{"team": "ci"}, Version: 1, LastSeq: int64(c.Sequence)}
	checkKeyRow(t, "created", k, want)
	v := e.verifRow(c.Key.ID)
	digest := e.dg.Digest(c.Secret)
	if !slices.Equal(v.Digest, digest[:]) || v.Status != "active" || v.Name != "CI deploy" || v.OrgID != org ||
		!slices.Equal(v.Permissions, []string{"posts:read"}) || v.ExpiresAt != nil || v.Metadata["team"] != "ci" || v.LastSeq != int64(c.Sequence) {
		t.Errorf("verification row after create = %+v", v)
	}

	// The verifier records use; the projector must never touch it.
	used := time.Now().UTC().Truncate(time.Microsecond)
	if _, err := e.pool.Exec(e.ctx, `UPDATE keys SET last_used_at = $2 WHERE key_id = $1`, c.Key.ID, used); err != nil {
		t.Fatal(err)
	}

	// key.updated
	u := e.rename(org, c.Key.ID, "CI deploy (prod)")
	e.applyNew(&applied)
	want.Name, want.Metadata, want.Version, want.LastSeq, want.LastUsedAt = "CI deploy (prod)", map[string]string{"renamed": "yes"}, 2, int64(u.Sequence), &used
	checkKeyRow(t, "updated", e.keyRow(c.Key.ID), want)
	if v := e.verifRow(c.Key.ID); v.Name != "CI deploy (prod)" || v.Metadata["renamed"] != "yes" || v.LastSeq != int64(u.Sequence) {
		t.Errorf("verification row after update = %+v", v)
	}

	// key.permissions_changed
	p := e.setPermissions(org, c.Key.ID, []string{"posts:write", "posts:read"})
	e.applyNew(&applied)
	want.Permissions, want.Version, want.LastSeq = []string{"posts:read", "posts:write"}, 3, int64(p.Sequence)
	checkKeyRow(t, "permissions_changed", e.keyRow(c.Key.ID), want)
	if v := e.verifRow(c.Key.ID); !slices.Equal(v.Permissions, want.Permissions) {
		t.Errorf("verification permissions = %v, want %v", v.Permissions, want.Permissions)
	}

	// key.revoked
	r := e.revoke(org, c.Key.ID)
	e.applyNew(&applied)
	want.Status, want.RevokedAt, want.Version, want.LastSeq = "revoked", r.Key.RevokedAt, 4, int64(r.Sequence)
	checkKeyRow(t, "revoked", e.keyRow(c.Key.ID), want)
	if v := e.verifRow(c.Key.ID); v.Status != "revoked" || v.LastSeq != int64(r.Sequence) {
		t.Errorf("verification row after revoke = %+v", v)
	}

	// key.rotated (old key) + key.created (new key), one atomic append
	b := e.create(org, "Billing", []string{"posts:read"}, nil)
	rot := e.rotate(org, b.Key.ID, 3600)
	e.applyNew(&applied)
	old := e.keyRow(b.Key.ID)
	if old.Status != "active" || !sameTime(old.ExpiresAt, rot.Previous.ExpiresAt) || old.ExpiresAt == nil || old.Version != 2 || old.LastSeq != int64(rot.Sequence) {
		t.Errorf("rotated key row = %+v, want expires_at %v, version 2, last_seq %d", old, rot.Previous.ExpiresAt, rot.Sequence)
	}
	if v := e.verifRow(b.Key.ID); !sameTime(v.ExpiresAt, rot.Previous.ExpiresAt) {
		t.Errorf("rotated key's verification expires_at = %v, want %v", v.ExpiresAt, rot.Previous.ExpiresAt)
	}
	nk := e.keyRow(rot.Key.ID)
	checkKeyRow(t, "rotation's new key", nk, keyRow{KeyID: rot.Key.ID, OrgID: org, Name: "Billing", OwnerType: "organization", OwnerID: org,
		Mask: domain.Mask(rot.Secret), Permissions: []string{"posts:read"}, Status: "active", CreatedAt: rot.Key.CreatedAt,
		Metadata: map[string]string{}, Version: 1, LastSeq: int64(rot.Sequence) - 1})
	nd := e.dg.Digest(rot.Secret)
	if v := e.verifRow(rot.Key.ID); !slices.Equal(v.Digest, nd[:]) || v.Status != "active" {
		t.Errorf("new key's verification row = %+v", v)
	}

	// permission.retired
	e.retire("posts:write")
	e.applyNew(&applied)
	if got := e.permissionRows()["posts:write"]; got != [2]string{"Write posts", "retired"} {
		t.Errorf("retired permission row = %v", got)
	}

	// audit_events: every key event, in order, with its envelope; no catalog events.
	audit := e.auditRows()
	var wantTypes []string
	for _, rec := range e.records(1, e.lastSeq()) {
		ev, err := domain.DecodeEvent(rec.Data)
		if err != nil {
			t.Fatal(err)
		}
		if ev.IsKeyEvent() {
			wantTypes = append(wantTypes, ev.Type)
		}
	}
	var gotTypes []string
	for _, a := range audit {
		gotTypes = append(gotTypes, a.Type)
		if a.EnvType != a.Type || a.EnvID != a.EventID || a.OrgID != org {
			t.Errorf("audit row %+v does not match its envelope", a)
		}
	}
	if !slices.Equal(gotTypes, wantTypes) {
		t.Errorf("audit types = %v, want %v", gotTypes, wantTypes)
	}
	if !slices.Contains(gotTypes, domain.EventKeyRotated) || slices.Contains(gotTypes, domain.EventPermissionDefined) {
		t.Errorf("audit types = %v", gotTypes)
	}
	if got := e.checkpoint("read_models"); got != e.lastSeq() {
		t.Errorf("checkpoint = %d, want %d", got, e.lastSeq())
	}
}

func checkKeyRow(t *testing.T, what string, got, want keyRow) {
	t.Helper()
	if got.KeyID != want.KeyID || got.OrgID != want.OrgID || got.Name != want.Name || got.OwnerType != want.OwnerType ||
		got.OwnerID != want.OwnerID || got.Mask != want.Mask || !slices.Equal(got.Permissions, want.Permissions) ||
		got.Status != want.Status || !got.CreatedAt.Equal(want.CreatedAt) || !sameTime(got.ExpiresAt, want.ExpiresAt) ||
		!sameTime(got.RevokedAt, want.RevokedAt) || !sameTime(got.LastUsedAt, want.LastUsedAt) ||
		!mapsEqual(got.Metadata, want.Metadata) || got.Version != want.Version || got.LastSeq != want.LastSeq {
		t.Errorf("%s: keys row\n got %+v\nwant %+v", what, got, want)
	}
}

func mapsEqual[V comparable](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestApplyBatchIsIdempotentAndBatchingDoesNotMatter(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.history("org_a", 12)
	recs := e.records(1, e.lastSeq())
	last := recs[len(recs)-1].Sequence

	if got := e.apply(DefaultTables, recs); got != last {
		t.Fatalf("ApplyBatch = %d, want %d", got, last)
	}
	first := e.dump(DefaultTables)
	if n := e.count(`SELECT count(*) FROM keys`); n < 12 || !strings.Contains(first, `"status":"revoked"`) {
		t.Fatalf("the dump looks too small (%d keys):\n%s", n, first)
	}

	// The same batch again: the checkpoint drops it.
	if got := e.apply(DefaultTables, recs); got != last {
		t.Fatalf("ApplyBatch again = %d, want %d", got, last)
	}
	if again := e.dump(DefaultTables); again != first {
		t.Errorf("applying the batch twice changed the tables:\n%s\nvs\n%s", first, again)
	}

	// Without the checkpoint, the rows' own last_seq guards hold.
	if _, err := e.pool.Exec(e.ctx, `UPDATE projection_checkpoints SET last_seq = 0 WHERE name = 'read_models'`); err != nil {
		t.Fatal(err)
	}
	e.apply(DefaultTables, recs)
	if again := e.dump(DefaultTables); again != first {
		t.Errorf("reapplying past the checkpoint changed the tables:\n%s\nvs\n%s", first, again)
	}

	// One event per batch gives the same tables as one batch (collapsing
	// several events of one key in a batch loses nothing).
	single := e.scratchTables("_single")
	for _, r := range recs {
		e.apply(single, []domain.Record{r})
	}
	if got := e.dump(single); got != first {
		t.Errorf("one event per batch:\n%s\none batch:\n%s", got, first)
	}

	// Overlapping batches: a batch partly below the checkpoint applies only
	// the rest.
	overlap := e.scratchTables("_overlap")
	e.apply(overlap, recs[:len(recs)/2+3])
	e.apply(overlap, recs[len(recs)/2:])
	if got := e.dump(overlap); got != first {
		t.Errorf("overlapping batches:\n%s\none batch:\n%s", got, first)
	}
}

func TestApplyBatchRejectsEventsItCannotApply(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.history("org_a", 2)
	good := e.records(1, e.lastSeq())
	keyEvent := good[len(good)-2] // a key event

	ev, err := domain.DecodeEvent(keyEvent.Data)
	if err != nil || !ev.IsKeyEvent() {
		t.Fatalf("record %d is not a key event: %v", keyEvent.Sequence, err)
	}
	noState := ev
	noState.Data = []byte(`{"reason":"x"}`)
	badDigest := ev
	k, _ := ev.KeyState()
	k.Digest = "not hex"
	badDigest.Data = mustJSON(t, map[string]any{"key": k})

	next := e.lastSeq() + 1
	for _, tc := range []struct {
		name string
		rec  domain.Record
	}{
		{"not JSON", domain.Record{Subject: keyEvent.Subject, Sequence: next, Data: []byte("{not json")}},
		{"unknown type", domain.Record{Subject: keyEvent.Subject, Sequence: next, Data: []byte(`{"id":"x","type":"key.exploded","data":{}}`)}},
		{"key event without key state", domain.Record{Subject: keyEvent.Subject, Sequence: next, Data: mustJSON(t, noState)}},
		{"digest not hex", domain.Record{Subject: keyEvent.Subject, Sequence: next, Data: mustJSON(t, badDigest)}},
		{"key event on another subject", domain.Record{Subject: domain.KeySubject("org_b", ev.KeyID), Sequence: next, Data: keyEvent.Data}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs := append(append([]domain.Record{}, good...), tc.rec)
			err := pgx.BeginFunc(e.ctx, e.pool, func(tx pgx.Tx) error {
				_, err := ApplyBatch(e.ctx, tx, DefaultTables, recs)
				return err
			})
			var ee *EventError
			if !errors.As(err, &ee) || ee.Seq != next {
				t.Fatalf("ApplyBatch error = %v, want an *EventError at sequence %d", err, next)
			}
			if got := e.count(`SELECT count(*) FROM keys`); got != 0 {
				t.Errorf("%d keys rows after a rejected batch", got)
			}
		})
	}

	if _, err := ApplyBatch(e.ctx, nil, DefaultTables, []domain.Record{good[1], good[0]}); err == nil {
		t.Error("ApplyBatch accepted records out of order")
	}
}

func TestTextArrayLiteral(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, in := range [][]string{nil, {}, {"a"}, {"posts:read", "x.y-z_1"}, {`q"uote`, `back\slash`, "comma,brace}{", "", "NULL", " sp "}} {
		var got []string
		if err := e.pool.QueryRow(e.ctx, `SELECT $1::text::text[]`, textArrayLiteral(in)).Scan(&got); err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		if len(in) == 0 {
			in = []string{}
		}
		if !slices.Equal(got, in) {
			t.Errorf("round trip of %q = %q", in, got)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
