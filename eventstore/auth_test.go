package eventstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// envelope is a payload shaped like keyd's (prev_sequence before data).
func envelope(id string, prev uint64) []byte {
	return fmt.Appendf(nil, `{"id":%q,"type":"key.updated","prev_sequence":%d,"data":{"n":%q}}`, id, prev, id)
}

func publishRaw(t *testing.T, js jetstream.JetStream, subject string, data []byte, sig string) uint64 {
	t.Helper()
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	if sig != "" {
		m.Header.Set(domain.SignatureHeader, sig)
	}
	ack, err := js.PublishMsg(t.Context(), m)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

type rejectLog struct {
	mu  sync.Mutex
	got []Rejection
}

func (r *rejectLog) add(x Rejection) { r.mu.Lock(); r.got = append(r.got, x); r.mu.Unlock() }

// TestLastSetsAsideForgeries (H2, command side): Last never takes a message
// keyd did not sign, nor keyd's own event replayed later, as an aggregate's
// state; it returns the last good event, and Head is the subject's last
// sequence, so the next append (guarded by Head) lands after the forgeries
// instead of conflicting for ever.
func TestLastSetsAsideForgeries(t *testing.T) {
	t.Parallel()
	for _, leader := range []bool{false, true} {
		t.Run(fmt.Sprintf("leader=%v", leader), func(t *testing.T) {
			t.Parallel()
			var rl rejectLog
			opts := []Option{WithRejections(rl.add)}
			if leader {
				opts = append(opts, WithLeaderReads())
			}
			f := newFixture(t, opts...)
			ctx := t.Context()
			subj := domain.KeySubject("org_1", "key_a")
			a := domain.AppendMsg{Subject: subj, MsgID: "m1", Type: domain.EventKeyCreated, Data: envelope("e1", 0)}
			s1, err := f.store.Append(ctx, a)
			if err != nil {
				t.Fatal(err)
			}
			b := domain.AppendMsg{Subject: subj, ExpectedSequence: s1, MsgID: "m2", Type: domain.EventKeyUpdated, Data: envelope("e2", s1)}
			s2, err := f.store.Append(ctx, b)
			if err != nil {
				t.Fatal(err)
			}
			first := f.stream
			m1, err := first.GetMsg(ctx, s1)
			if err != nil {
				t.Fatal(err)
			}
			other := domain.NewEventSigner([]byte("another secret"))
			publishRaw(t, f.js, subj, envelope("forged", s2), "")
			publishRaw(t, f.js, subj, envelope("forged", s2), other.Sign(subj, envelope("forged", s2)))
			head := publishRaw(t, f.js, subj, m1.Data, m1.Header.Get(domain.SignatureHeader)) // keyd's e1, replayed

			rec, ok, err := f.store.Last(ctx, subj)
			if err != nil || !ok || rec.Sequence != s2 || string(rec.Data) != string(envelope("e2", s1)) {
				t.Fatalf("Last = %d %q %v %v; want e2 at %d", rec.Sequence, rec.Data, ok, err, s2)
			}
			if rec.Head != head || rec.Guard() != head {
				t.Errorf("Head = %d, want %d", rec.Head, head)
			}
			rl.mu.Lock()
			reasons := map[string]int{}
			for _, r := range rl.got {
				reasons[r.Reason]++
			}
			rl.mu.Unlock()
			if reasons[RejectUnsigned] == 0 || reasons[RejectBadSignature] == 0 || reasons[RejectVersion] == 0 {
				t.Errorf("rejections %v: want unsigned, bad_signature and version", reasons)
			}
			// Next skips them too.
			if n, ok, err := f.store.Next(ctx, subj, s2); err != nil || ok {
				t.Errorf("Next after e2 = %d %v %v; want none", n.Sequence, ok, err)
			}
			// The next append expects the head and lands.
			c := domain.AppendMsg{Subject: subj, ExpectedSequence: rec.Guard(), MsgID: "m3", Type: domain.EventKeyUpdated, Data: envelope("e3", rec.Guard())}
			s3, err := f.store.Append(ctx, c)
			if err != nil {
				t.Fatalf("append after the forgeries: %v", err)
			}
			if rec, ok, _ := f.store.Last(ctx, subj); !ok || rec.Sequence != s3 {
				t.Errorf("Last after e3 = %d %v", rec.Sequence, ok)
			}

			// A subject holding only forgeries: no event, but a head.
			lone := domain.KeySubject("org_1", "key_lone")
			h := publishRaw(t, f.js, lone, envelope("forged", 0), "")
			if rec, ok, err := f.store.Last(ctx, lone); err != nil || ok || rec.Guard() != h {
				t.Errorf("Last of a forged-only subject = %+v %v %v; want none with head %d", rec, ok, err, h)
			}
		})
	}
}

// TestBatchStoresGuards: the messages of an atomic batch are stored with
// the guard they were appended with, so Chained holds for each (a batch's
// events load as keyd's, not as replays).
func TestBatchStoresGuards(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	x, y := domain.KeySubject("org_1", "key_x"), domain.KeySubject("org_1", "key_y")
	if _, err := f.store.Append(ctx,
		domain.AppendMsg{Subject: x, MsgID: "bx", Type: domain.EventKeyCreated, Data: envelope("ex", 0)},
		domain.AppendMsg{Subject: y, MsgID: "by", Type: domain.EventKeyCreated, Data: envelope("ey", 0)},
	); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{x, y} {
		if _, ok, err := f.store.Last(ctx, s); !ok || err != nil {
			t.Errorf("Last(%s) after a batch: %v %v", s, ok, err)
		}
	}
}

// TestSigningMarker: a new stream signs from sequence 1; a stream written
// before signing (no marker) gets the sequence after its last message, so
// its unsigned events still load (Last, Tail) while a later unsigned
// message is set aside.
func TestSigningMarker(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	f := newFixture(t)
	if got := SignedFromOf(f.stream.CachedInfo().Config); got != 1 {
		t.Errorf("a new stream signs from %d, want 1", got)
	}

	srv := startServer(t, t.TempDir())
	t.Cleanup(srv.Shutdown)
	nc, js := connect(t, srv.ClientURL())
	old := StreamConfig(1) // as a keyd from before signing created it
	if _, err := js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	legacy := NewJetStream(js, nc, mustStream(t, js))
	subj := domain.KeySubject("org_1", "key_old")
	var seq uint64
	for i := range 3 {
		var err error
		if seq, err = legacy.Append(ctx, appendOf(subj, seq, fmt.Sprintf("old-%d", i), domain.EventKeyCreated)); err != nil {
			t.Fatal(err)
		}
	}
	st, err := EnsureStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := SignedFromOf(st.CachedInfo().Config); got != 4 {
		t.Fatalf("an upgraded stream signs from %d, want 4", got)
	}
	if st, err = EnsureStream(ctx, js, 1); err != nil || SignedFromOf(st.CachedInfo().Config) != 4 {
		t.Fatalf("ensuring again moved the marker: %v", err)
	}
	store := NewJetStream(js, nc, st, WithSigner(testSigner))
	if rec, ok, err := store.Last(ctx, subj); err != nil || !ok || rec.Sequence != 3 {
		t.Fatalf("legacy Last = %d %v %v; want 3", rec.Sequence, ok, err)
	}
	forged := publishRaw(t, js, subj, []byte(`{"id":"forged"}`), "")
	if rec, ok, err := store.Last(ctx, subj); err != nil || !ok || rec.Sequence != 3 || rec.Head != forged {
		t.Fatalf("Last after an unsigned message past the marker = %+v %v %v; want 3 with head %d", rec, ok, err, forged)
	}
	signed, err := store.Append(ctx, appendOf(subj, forged, "new-1", domain.EventKeyUpdated))
	if err != nil {
		t.Fatal(err)
	}

	events, err := OpenEvents(ctx, js, testSigner.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	tail, err := events.Tail(ctx, 1, TailOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Stop()
	for want := uint64(1); want <= signed; want++ {
		d := next(t, tail)
		wantRejected := ""
		if want == forged {
			wantRejected = RejectUnsigned
		}
		if d.Sequence != want || d.Rejected != wantRejected || d.Gap != nil || (wantRejected != "") != (d.Data == nil) {
			t.Errorf("delivery %d: sequence %d rejected %q gap %v data %q", want, d.Sequence, d.Rejected, d.Gap, d.Data)
		}
	}
	if _, err := OpenEvents(ctx, js, domain.EventKey{}); err == nil {
		t.Error("OpenEvents without a key: no error")
	}
}

func mustStream(t *testing.T, js jetstream.JetStream) jetstream.Stream {
	t.Helper()
	st, err := js.Stream(context.Background(), domain.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestMemoryForgeries: the signed in-memory store sets aside what the
// JetStream store does.
func TestMemoryForgeries(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	m := NewSignedMemory(testSigner)
	subj := domain.KeySubject("org_1", "key_m")
	s1, err := m.Append(ctx, domain.AppendMsg{Subject: subj, MsgID: "a", Type: domain.EventKeyCreated, Data: envelope("e1", 0)})
	if err != nil {
		t.Fatal(err)
	}
	m.Forge(subj, envelope("forged", s1), "")
	head := m.Forge(subj, envelope("e1", 0), testSigner.Sign(subj, envelope("e1", 0))) // a replay
	rec, ok, err := m.Last(ctx, subj)
	if err != nil || !ok || rec.Sequence != s1 || rec.Guard() != head {
		t.Fatalf("Last = %+v %v %v", rec, ok, err)
	}
	if _, err := m.Append(ctx, domain.AppendMsg{Subject: subj, ExpectedSequence: s1, MsgID: "b", Type: domain.EventKeyUpdated, Data: envelope("e2", s1)}); !errors.Is(err, domain.ErrConflict) {
		t.Errorf("append guarded by the last good event, not the head: %v; want conflict", err)
	}
}
