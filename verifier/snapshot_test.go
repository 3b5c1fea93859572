package verifier

import (
	"reflect"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestSnapshotPlusTail boots from a snapshot the projector wrote, with
// events after its checkpoint (the projector stopped before them) and events
// appended between the snapshot read and the subscription: all are applied.
func TestSnapshotPlusTail(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.define("a", "b")
	k1 := e.create("org_1", domain.CreateKey{Permissions: []string{"a", "b"}})
	k2 := e.create("org_1", domain.CreateKey{Permissions: []string{"a", "b"}, Metadata: map[string]string{"env": "prod"}})
	k3 := e.create("org_2", domain.CreateKey{})
	cp := e.project()

	// After the checkpoint, not projected.
	e.revoke("org_1", k1.Key.ID)
	k4 := e.create("org_2", domain.CreateKey{Permissions: []string{"a"}})
	e.retire("b")

	v := New(e.config())
	t.Cleanup(v.Close)
	var k5 domain.CreateKeyResult
	var last uint64
	v.afterSnapshot = func() {
		// Between the snapshot read and the subscription.
		e.revoke("org_2", k3.Key.ID)
		k5 = e.create("org_3", domain.CreateKey{Name: "late"})
		last = k5.Sequence
	}
	if err := v.Start(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := v.WaitApplied(e.ctx, last); err != nil {
		t.Fatal(err)
	}
	b := v.getBootInfo()
	if !b.snapshot || b.snapshotSeq != cp || b.snapshotKeys != 3 {
		t.Errorf("boot = %+v, want from the snapshot at %d with 3 keys", b, cp)
	}

	check := func(name, secret, code string, perms []string) {
		t.Helper()
		r := verify(t, v, secret)
		if r.Code != code || !reflect.DeepEqual(r.Key.Permissions, perms) {
			t.Errorf("%s: %s %v, want %s %v", name, r.Code, r.Key.Permissions, code, perms)
		}
	}
	check("k1 (revoked after the checkpoint)", k1.Secret, CodeRevoked, []string{"a"})
	check("k2 (b retired after the checkpoint)", k2.Secret, CodeValid, []string{"a"})
	check("k3 (revoked during boot)", k3.Secret, CodeRevoked, []string{})
	check("k4 (created after the checkpoint)", k4.Secret, CodeValid, []string{"a"})
	check("k5 (created during boot)", k5.Secret, CodeValid, []string{})
	if md := verify(t, v, k2.Secret).Key.Metadata; md["env"] != "prod" || len(md) != 1 {
		t.Errorf("k2 metadata from the snapshot = %v", md)
	}
	if got := v.Status().Keys; got != 5 {
		t.Errorf("Keys = %d, want 5", got)
	}
}

// TestFullReplayFallback: the verifier replays the whole stream when the
// snapshot is missing or does not fit the stream.
func TestFullReplayFallback(t *testing.T) {
	t.Parallel()
	t.Run("tables missing", func(t *testing.T) {
		e := newEnv(t)
		k := e.create("org_1", domain.CreateKey{})
		e.project()
		if _, err := e.pool.Exec(e.ctx, `DROP TABLE verification_keys`); err != nil {
			t.Fatal(err)
		}
		v := e.verifier()
		if b := v.getBootInfo(); b.snapshot {
			t.Errorf("booted from a snapshot without its table: %+v", b)
		}
		if r := verify(t, v, k.Secret); r.Code != CodeValid {
			t.Errorf("key: %s", r.Code)
		}
	})

	t.Run("never projected", func(t *testing.T) {
		e := newEnv(t)
		k := e.create("org_1", domain.CreateKey{})
		v := e.verifier()
		if b := v.getBootInfo(); b.snapshot {
			t.Errorf("booted from a snapshot without a checkpoint: %+v", b)
		}
		if r := verify(t, v, k.Secret); r.Code != CodeValid {
			t.Errorf("key: %s", r.Code)
		}
	})

	t.Run("snapshot ahead of the stream", func(t *testing.T) {
		// The stream was recreated (say, a dev data directory removed)
		// but the database kept its read models.
		e := newEnv(t)
		k := e.create("org_1", domain.CreateKey{})
		e.project()
		ghost := newSecret(t)
		d := e.dig.Digest(ghost)
		if _, err := e.pool.Exec(e.ctx, `INSERT INTO verification_keys
			(digest, key_id, org_id, owner_type, owner_id, name, permissions, status, metadata, last_seq)
			VALUES ($1, 'key_01J00000000000000000000000', 'org_1', 'organization', 'org_1', 'ghost', '{}', 'active', '{}', 999)`, d[:]); err != nil {
			t.Fatal(err)
		}
		if _, err := e.pool.Exec(e.ctx, `UPDATE projection_checkpoints SET last_seq = 999 WHERE name = 'read_models'`); err != nil {
			t.Fatal(err)
		}
		v := e.verifier()
		if b := v.getBootInfo(); b.snapshot {
			t.Errorf("used a snapshot ahead of the stream: %+v", b)
		}
		if r := verify(t, v, ghost); r.Code != CodeNotFound {
			t.Errorf("key only in the stale snapshot: %s, want not_found", r.Code)
		}
		if r := verify(t, v, k.Secret); r.Code != CodeValid {
			t.Errorf("key: %s", r.Code)
		}
	})

	// A stream that lost the events right after the checkpoint (only
	// possible without keyd's DenyPurge) cannot continue the snapshot.
	purgeable := eventstore.StreamConfig(1)
	purgeable.DenyPurge = false

	t.Run("stream begins after the checkpoint", func(t *testing.T) {
		srv, nc := testenv.JetStream(t)
		e := newEnvOn(t, srv, nc, &purgeable)
		k1 := e.create("org_1", domain.CreateKey{})
		cp := e.project()
		e.create("org_1", domain.CreateKey{})
		k3 := e.create("org_1", domain.CreateKey{})
		purge(t, e, k3.Sequence) // the stream now begins at k3 > cp+1
		if k3.Sequence <= cp+1 {
			t.Fatalf("k3 at %d, checkpoint %d", k3.Sequence, cp)
		}
		v := e.verifier()
		if b := v.getBootInfo(); b.snapshot {
			t.Errorf("continued a snapshot across a gap: %+v", b)
		}
		// Fail closed: what the stream no longer holds is unknown.
		if r := verify(t, v, k1.Secret); r.Code != CodeNotFound {
			t.Errorf("key whose events are gone: %s, want not_found", r.Code)
		}
		if r := verify(t, v, k3.Secret); r.Code != CodeValid {
			t.Errorf("key in the stream: %s", r.Code)
		}
	})

	t.Run("events purged between boot and subscription", func(t *testing.T) {
		srv, nc := testenv.JetStream(t)
		e := newEnvOn(t, srv, nc, &purgeable)
		k1 := e.create("org_1", domain.CreateKey{})
		e.project()
		v := New(e.config())
		t.Cleanup(v.Close)
		var k3 domain.CreateKeyResult
		v.afterSnapshot = func() {
			e.create("org_1", domain.CreateKey{})
			k3 = e.create("org_1", domain.CreateKey{})
			purge(t, e, k3.Sequence)
		}
		if err := v.Start(e.ctx); err != nil {
			t.Fatal(err)
		}
		if err := v.WaitApplied(e.ctx, k3.Sequence); err != nil {
			t.Fatal(err)
		}
		if b := v.getBootInfo(); !b.fellBack {
			t.Errorf("boot = %+v, want a fallback to a full replay", b)
		}
		if r := verify(t, v, k1.Secret); r.Code != CodeNotFound {
			t.Errorf("key whose events are gone: %s, want not_found", r.Code)
		}
		if r := verify(t, v, k3.Secret); r.Code != CodeValid {
			t.Errorf("key in the stream: %s", r.Code)
		}
	})
}

// purge removes the stream's messages below seq.
func purge(t *testing.T, e *env, seq uint64) {
	t.Helper()
	st, err := e.js.Stream(e.ctx, domain.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Purge(e.ctx, jetstream.WithPurgeSequence(seq)); err != nil {
		t.Fatal(err)
	}
}

// TestStreamRecreated: a stream deleted and created again while the
// verifier runs is replayed from its start; keys of the old one are gone.
func TestStreamRecreated(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	old := e.create("org_1", domain.CreateKey{})
	e.create("org_1", domain.CreateKey{})
	e.create("org_1", domain.CreateKey{})
	v := e.verifier(func(c *Config) { c.MaxStaleness = time.Second })
	if r := verify(t, v, old.Secret); r.Code != CodeValid {
		t.Fatalf("before: %s", r.Code)
	}
	if err := e.js.DeleteStream(e.ctx, domain.StreamName); err != nil {
		t.Fatal(err)
	}
	if _, err := eventstore.EnsureStream(e.ctx, e.js, 1); err != nil {
		t.Fatal(err)
	}
	k := e.create("org_2", domain.CreateKey{})
	testenv.WaitFor(t, 20*time.Second, "the verifier to replay the new stream", func() bool {
		r, err := v.Verify(e.ctx, k.Secret)
		return err == nil && r.Code == CodeValid
	})
	if r := verify(t, v, old.Secret); r.Code != CodeNotFound {
		t.Errorf("key of the old stream: %s, want not_found", r.Code)
	}
	if got := v.Applied(); got != k.Sequence {
		t.Errorf("Applied = %d, want %d", got, k.Sequence)
	}
}
