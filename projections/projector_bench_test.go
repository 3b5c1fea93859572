package projections

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

// benchKeys is the number of keys of the catch-up benchmarks: each is
// created and later revoked, so the stream holds 2*benchKeys events.
const benchKeys = 50_000

// benchEvent is one generated event: its stream message and what
// projecting it yields.
type benchEvent struct {
	subject string
	data    []byte
	d       decoded // as the projector would decode it (seq set on publish)
}

// benchHistory generates benchKeys key.created events followed by a
// key.revoked event for each key, as the domain would write them.
func benchHistory(tb testing.TB) []benchEvent {
	tb.Helper()
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	actor := domain.Actor{Type: "user", ID: "bench"}
	out := make([]benchEvent, 0, 2*benchKeys)
	states := make([]domain.KeyState, benchKeys)
	event := func(typ string, k domain.KeyState, at time.Time, data any) benchEvent {
		id, err := domain.NewULID(at, rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		raw, err := json.Marshal(data)
		if err != nil {
			tb.Fatal(err)
		}
		ev := domain.Event{ID: id, Type: typ, OrgID: k.OrgID, KeyID: k.ID, OccurredAt: at, Actor: actor, Data: raw}
		b, err := json.Marshal(ev)
		if err != nil {
			tb.Fatal(err)
		}
		dg, _ := hex.DecodeString(k.Digest)
		kc := k
		return benchEvent{subject: domain.KeySubject(k.OrgID, k.ID), data: b, d: decoded{raw: b, ev: ev, key: &kc, digest: dg}}
	}
	for i := range benchKeys {
		at := start.Add(time.Duration(i) * time.Millisecond)
		u, err := domain.NewULID(at, rand.Reader)
		if err != nil {
			tb.Fatal(err)
		}
		k := SyntheticKey(i, at, domain.KeyIDPrefix+u)
		states[i] = k
		out = append(out, event(domain.EventKeyCreated, k, at, domain.KeyCreatedData{Key: k}))
	}
	for i, k := range states {
		at := start.Add(time.Hour + time.Duration(i)*time.Millisecond)
		k.Status, k.RevokedAt, k.Version = domain.StatusRevoked, &at, 2
		out = append(out, event(domain.EventKeyRevoked, k, at, domain.KeyRevokedData{Reason: "bench", Key: k}))
	}
	return out
}

// publish appends the events to the stream quickly (async publish) and
// sets their sequences.
func (e *env) publish(events []benchEvent) {
	e.t.Helper()
	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		e.t.Fatal(err)
	}
	futures := make([]jetstream.PubAckFuture, len(events))
	for i, ev := range events {
		msg := &nats.Msg{Subject: ev.subject, Data: ev.data, Header: nats.Header{"Keyd-Event-Type": {ev.d.ev.Type}}}
		if futures[i], err = js.PublishMsgAsync(msg); err != nil {
			e.t.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		e.t.Fatal("publishing did not complete")
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			events[i].d.seq = ack.Sequence
		case err := <-f.Err():
			e.t.Fatal(err)
		}
	}
}

func (e *env) truncate() {
	e.t.Helper()
	if _, err := e.pool.Exec(e.ctx, `TRUNCATE keys, audit_events, permissions, verification_keys;
DELETE FROM projection_checkpoints`); err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.pool.Exec(e.ctx, `VACUUM ANALYZE`); err != nil {
		e.t.Fatal(err)
	}
}

// BenchmarkCatchUp measures a projector catching up 100,000 events (50,000
// keys created, then revoked) into empty tables: NATS delivery, decoding,
// and batched transactional upserts.
func BenchmarkCatchUp(b *testing.B) {
	e := newEnv(b)
	events := benchHistory(b)
	e.publish(events)
	last := e.lastSeq()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		e.truncate()
		p := NewProjector(e.pool, e.js, testenv.Logger(b))
		p.EventKey = testEventKey
		ctx, cancel := context.WithCancel(e.ctx)
		done := make(chan error, 1)
		b.StartTimer()
		go func() { done <- p.Run(ctx) }()
		for p.Status().Applied < last {
			if err := p.Status().Err; err != nil {
				b.Fatal(err)
			}
			time.Sleep(time.Millisecond)
		}
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(len(events)*b.N)/b.Elapsed().Seconds(), "events/s")
	if got := e.count(`SELECT count(*) FROM audit_events`); got != len(events) {
		b.Fatalf("%d audit rows, want %d", got, len(events))
	}
}

// BenchmarkRawUpsert is BenchmarkCatchUp's baseline: the final rows of the
// same history (50,000 keys and verification rows, 100,000 audit rows)
// written straight into Postgres with the projector's unnest statements,
// 1000 rows per statement, one transaction per 1000 keys, without NATS,
// decoding or intermediate states. events/s counts the 100,000 events the
// rows stand for.
func BenchmarkRawUpsert(b *testing.B) {
	e := newEnv(b)
	events := benchHistory(b)
	recs := make([]domain.Record, len(events))
	for i, ev := range events {
		recs[i] = domain.Record{Subject: ev.subject, Sequence: uint64(i + 1), Data: ev.data}
	}
	// Transaction i: keys i*1000.. in their final (revoked) state, and the
	// audit rows of events 2i*1000 .. (2i+2)*1000.
	raw, err := NewRawUpsert(DefaultTables, recs, 1000)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		e.truncate()
		b.StartTimer()
		if err := raw.Write(e.ctx, e.pool); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(len(events)*b.N)/b.Elapsed().Seconds(), "events/s")
	if got := e.count(`SELECT count(*) FROM audit_events`); got != len(events) {
		b.Fatalf("%d audit rows, want %d", got, len(events))
	}
}
