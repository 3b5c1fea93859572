package eventstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore/storetest"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startServer starts a single JetStream server on dir and stops it when the
// test ends.
func startServer(tb testing.TB, dir string) *server.Server {
	tb.Helper()
	s, err := server.NewServer(&server.Options{
		JetStream: true, StoreDir: dir,
		Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
	})
	if err != nil {
		tb.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats-server not ready")
	}
	tb.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func connect(tb testing.TB, urls string) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := nats.Connect(urls, nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return nc, js
}

type fixture struct {
	srv    *server.Server
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	store  *JetStream
}

// newFixture starts a fresh server with the KEYD_EVENTS stream.
func newFixture(tb testing.TB, opts ...Option) *fixture {
	tb.Helper()
	srv := startServer(tb, tb.TempDir())
	nc, js := connect(tb, srv.ClientURL())
	st, err := EnsureStream(context.Background(), js, 1)
	if err != nil {
		tb.Fatal(err)
	}
	opts = append([]Option{WithSigner(testSigner)}, opts...)
	return &fixture{srv: srv, nc: nc, js: js, stream: st, store: NewJetStream(js, nc, st, opts...)}
}

// testSigner signs the fixtures' events (a store of keyd's always signs).
var testSigner = domain.NewEventSigner([]byte("eventstore test deployment secret"))

func TestJetStreamConformance(t *testing.T) {
	t.Parallel()
	t.Run("DirectGet", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) domain.EventStore { return newFixture(t).store })
	})
	t.Run("LeaderReads", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) domain.EventStore { return newFixture(t, WithLeaderReads()).store })
	})
}

func appendOf(subject string, expected uint64, id, typ string) domain.AppendMsg {
	return domain.AppendMsg{Subject: subject, ExpectedSequence: expected, MsgID: id, Type: typ, Data: []byte(`{"id":"` + id + `"}`)}
}

// TestJetStreamHeaders checks what goes over the wire: a plain subscriber
// sees every header, including an expected last subject sequence of 0 (so
// "the subject must be empty" is really asked of the server), and the stored
// message keeps the event type and Msg-Id.
func TestJetStreamHeaders(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	sub, err := f.nc.SubscribeSync(domain.EventSubjects)
	if err != nil {
		t.Fatal(err)
	}
	k1, k2, k3 := domain.KeySubject("o", "k1"), domain.KeySubject("o", "k2"), domain.KeySubject("o", "k3")
	s1, err := f.store.Append(ctx, appendOf(k1, 0, "e1", domain.EventKeyCreated))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Append(ctx, appendOf(k1, s1, "e2", domain.EventKeyRotated), appendOf(k2, 0, "e3", domain.EventKeyCreated), appendOf(k3, 0, "e4", domain.EventKeyCreated)); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		subject, id, typ, expected string
		batchSeq                   string
		commit                     string
	}{
		{k1, "e1", domain.EventKeyCreated, "0", "", ""},
		{k1, "e2", domain.EventKeyRotated, strconv.FormatUint(s1, 10), "1", ""},
		{k2, "e3", domain.EventKeyCreated, "0", "2", ""},
		{k3, "e4", domain.EventKeyCreated, "0", "3", "1"},
	}
	var batchID string
	for i, w := range want {
		m, err := sub.NextMsg(2 * time.Second)
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		h := m.Header
		if m.Subject != w.subject || h.Get(HeaderEventType) != w.typ || h.Get(jetstream.MsgIDHeader) != w.id ||
			h.Get(jetstream.ExpectedStreamHeader) != domain.StreamName {
			t.Errorf("message %d: %s %v", i, m.Subject, h)
		}
		if got, ok := h[jetstream.ExpectedLastSubjSeqHeader]; !ok || len(got) != 1 || got[0] != w.expected {
			t.Errorf("message %d: %s = %q, want %q", i, jetstream.ExpectedLastSubjSeqHeader, got, w.expected)
		}
		if h.Get(headerBatchSeq) != w.batchSeq || h.Get(headerBatchCommit) != w.commit {
			t.Errorf("message %d: batch headers %v", i, h)
		}
		if w.batchSeq != "" {
			if id := h.Get(headerBatchID); id == "" || len(id) > 64 || (batchID != "" && id != batchID) {
				t.Errorf("message %d: batch id %q (first %q)", i, id, batchID)
			} else {
				batchID = id
			}
		}
	}
	for seq, w := range map[uint64]struct{ id, typ string }{1: {"e1", domain.EventKeyCreated}, 4: {"e4", domain.EventKeyCreated}} {
		m, err := f.stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(HeaderEventType) != w.typ || m.Header.Get(jetstream.MsgIDHeader) != w.id {
			t.Errorf("stored message %d headers: %v", seq, m.Header)
		}
	}
}

// TestJetStreamDuplicates pins down how this server answers repeats, and
// what the store makes of each answer.
func TestJetStreamDuplicates(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	subj := domain.KeySubject("o", "dup")

	// A plain repeat (same Msg-Id, no guard): a duplicate ack, original seq.
	pub := func(opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
		m := &nats.Msg{Subject: subj, Data: []byte("x"), Header: nats.Header{HeaderEventType: {domain.EventKeyCreated},
			domain.SignatureHeader: {testSigner.Sign(subj, []byte("x"))}}}
		return f.js.PublishMsg(ctx, m, append(opts, jetstream.WithMsgID("d1"))...)
	}
	a1, err := pub()
	if err != nil {
		t.Fatal(err)
	}
	a2, err := pub()
	if err != nil || !a2.Duplicate || a2.Sequence != a1.Sequence {
		t.Fatalf("repeat: %+v, %v; want duplicate of %d", a2, err, a1.Sequence)
	}
	// The same repeat with the (now stale) guard it first had: a single
	// server checks the guard first and answers 10071.
	_, err = pub(jetstream.WithExpectLastSequencePerSubject(0))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence {
		t.Fatalf("guarded repeat: %v; want err_code 10071", err)
	}
	// Through the store: the retry is ErrConflict, nothing stored.
	a := domain.AppendMsg{Subject: subj, ExpectedSequence: 0, MsgID: "d1", Type: domain.EventKeyCreated, Data: []byte("x")}
	if _, err := f.store.Append(ctx, a); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("store retry: %v; want ErrConflict", err)
	}
	// What a replicated stream answers instead (a duplicate ack) is confirmed
	// by one leader read: the original must be a's own write.
	if seq, err := f.store.confirmDuplicate(ctx, a, a1.Sequence); err != nil || seq != a1.Sequence {
		t.Fatalf("confirmDuplicate of the original = %d, %v", seq, err)
	}
	if _, err := f.store.confirmDuplicate(ctx, a, a1.Sequence+5); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("confirmDuplicate of another sequence: %v; want ErrConflict", err)
	}
	other := a
	other.Subject = domain.KeySubject("o", "elsewhere")
	if _, err := f.store.confirmDuplicate(ctx, other, a1.Sequence); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("confirmDuplicate on another subject: %v; want ErrConflict", err)
	}
	// The Msg-Id on an empty subject: the guard holds, the server dedupes
	// and acks a duplicate of a message elsewhere: ErrConflict, not success.
	if _, err := f.store.Append(ctx, other); !errors.Is(err, domain.ErrConflict) || !errors.Is(err, errMsgIDStored) {
		t.Fatalf("Msg-Id reused on another subject: %v; want ErrConflict", err)
	}
	if n, err := f.store.LastSequence(ctx); err != nil || n != a1.Sequence {
		t.Fatalf("LastSequence = %d, %v; want %d (nothing stored since)", n, err, a1.Sequence)
	}
}

// TestJetStreamRetriesWhileStreamIsAway: while no server answers for the
// stream (as during a leader election), appends are retried, and land once
// it is back; if it stays away the append fails with ErrUnavailable.
func TestJetStreamRetriesWhileStreamIsAway(t *testing.T) {
	t.Parallel()
	f := newFixture(t, WithRetry(6, time.Second, 50*time.Millisecond))
	ctx := t.Context()
	for _, n := range []int{1, 2} {
		t.Run(fmt.Sprintf("%d messages", n), func(t *testing.T) {
			if err := f.js.DeleteStream(ctx, domain.StreamName); err != nil {
				t.Fatal(err)
			}
			back := make(chan error, 1)
			time.AfterFunc(120*time.Millisecond, func() {
				_, err := EnsureStream(context.Background(), f.js, 1)
				back <- err
			})
			var msgs []domain.AppendMsg
			for i := range n {
				msgs = append(msgs, appendOf(domain.KeySubject("o", fmt.Sprintf("k%d", i)), 0, fmt.Sprintf("away-%d-%d", n, i), domain.EventKeyCreated))
			}
			start := time.Now()
			seq, err := f.store.Append(ctx, msgs...)
			if err != nil {
				t.Fatalf("Append: %v", err)
			}
			if err := <-back; err != nil {
				t.Fatal(err)
			}
			if seq != uint64(n) || time.Since(start) < 100*time.Millisecond {
				t.Fatalf("Append = %d after %v; want %d after the stream came back", seq, time.Since(start), n)
			}
		})
	}
	t.Run("never back", func(t *testing.T) {
		if err := f.js.DeleteStream(ctx, domain.StreamName); err != nil {
			t.Fatal(err)
		}
		s := NewJetStream(f.js, nil, f.stream, WithRetry(3, 200*time.Millisecond, 10*time.Millisecond))
		_, err := s.Append(ctx, appendOf(domain.KeySubject("o", "k"), 0, "never", domain.EventKeyCreated))
		if !errors.Is(err, ErrUnavailable) || errors.Is(err, domain.ErrConflict) {
			t.Fatalf("Append with no stream: %v; want ErrUnavailable", err)
		}
		_, err = s.Append(ctx, appendOf(domain.KeySubject("o", "k"), 0, "never1", domain.EventKeyCreated), appendOf(domain.KeySubject("o", "k2"), 0, "never2", domain.EventKeyCreated))
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("batch Append with no stream: %v; want ErrUnavailable", err)
		}
		if _, _, err := s.Last(ctx, domain.KeySubject("o", "k")); err == nil {
			t.Fatalf("Last with no stream: no error")
		}
		// The caller's deadline ends the retries; the outcome is unknown.
		short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
		defer cancel()
		s = NewJetStream(f.js, nil, f.stream, WithRetry(10, time.Second, 100*time.Millisecond))
		_, err = s.Append(short, appendOf(domain.KeySubject("o", "k"), 0, "never3", domain.EventKeyCreated))
		if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Append past the caller's deadline: %v; want ErrUnavailable and DeadlineExceeded", err)
		}
	})
}

func TestJetStreamLastSequence(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	if n, err := f.store.LastSequence(ctx); err != nil || n != 0 {
		t.Fatalf("empty: %d, %v", n, err)
	}
	if _, err := f.store.Append(ctx, appendOf(domain.KeySubject("o", "a"), 0, "1", domain.EventKeyCreated), appendOf(domain.KeySubject("o", "b"), 0, "2", domain.EventKeyCreated)); err != nil {
		t.Fatal(err)
	}
	if n, err := f.store.LastSequence(ctx); err != nil || n != 2 {
		t.Fatalf("after a batch of 2: %d, %v", n, err)
	}
}

func checkStreamConfig(t *testing.T, cfg jetstream.StreamConfig, replicas int) {
	t.Helper()
	if cfg.Name != domain.StreamName || len(cfg.Subjects) != 1 || cfg.Subjects[0] != domain.EventSubjects ||
		cfg.Storage != jetstream.FileStorage || cfg.Retention != jetstream.LimitsPolicy ||
		cfg.MaxMsgs != -1 || cfg.MaxBytes != -1 || cfg.MaxAge != 0 || cfg.MaxMsgsPerSubject != -1 ||
		cfg.Discard != jetstream.DiscardNew || !cfg.DenyDelete || !cfg.DenyPurge || !cfg.AllowDirect ||
		!cfg.AllowAtomicPublish || cfg.Duplicates != DuplicateWindow || cfg.Replicas != replicas {
		t.Fatalf("stream config: %+v", cfg)
	}
}

func TestEnsureStream(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	_, js := connect(t, srv.ClientURL())
	ctx := t.Context()

	for _, r := range []int{0, 6} {
		if _, err := EnsureStream(ctx, js, r); err == nil {
			t.Fatalf("replicas %d: no error", r)
		}
	}
	// A single server cannot hold 3 replicas: the server's refusal is the error.
	if _, err := EnsureStream(ctx, js, 3); err == nil {
		t.Fatalf("replicas 3 on a single server: no error")
	} else {
		t.Logf("replicas 3 on one server: %v", err)
	}

	st1, err := EnsureStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	st2, err := EnsureStream(ctx, js, 1)
	if err != nil {
		t.Fatalf("second EnsureStream: %v", err)
	}
	checkStreamConfig(t, st1.CachedInfo().Config, 1)
	checkStreamConfig(t, st2.CachedInfo().Config, 1)

	s := NewJetStream(js, nil, st2)
	seq, err := s.Append(ctx, appendOf(domain.KeySubject("o", "k"), 0, "e1", domain.EventKeyCreated))
	if err != nil {
		t.Fatal(err)
	}
	if err := st2.Purge(ctx); err == nil {
		t.Fatalf("purge: no error")
	}
	if err := st2.DeleteMsg(ctx, seq); err == nil {
		t.Fatalf("delete message: no error")
	}
	if _, ok, err := s.Last(ctx, domain.KeySubject("o", "k")); err != nil || !ok {
		t.Fatalf("after purge and delete attempts: ok=%v, %v", ok, err)
	}

	// A stream someone loosened is brought back to the configuration.
	loose := StreamConfig(1)
	loose.Duplicates = time.Minute
	loose.AllowDirect = false
	if _, err := js.UpdateStream(ctx, loose); err != nil {
		t.Fatal(err)
	}
	st3, err := EnsureStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	checkStreamConfig(t, st3.CachedInfo().Config, 1)
}

// TestEnsureStreamRefusedUpdate: a change the server cannot make to an
// existing stream is an error, and the stream is left as it was.
func TestEnsureStreamRefusedUpdate(t *testing.T) {
	t.Parallel()
	srv := startServer(t, t.TempDir())
	_, js := connect(t, srv.ClientURL())
	ctx := t.Context()
	mem := StreamConfig(1)
	mem.Storage = jetstream.MemoryStorage
	if _, err := js.CreateStream(ctx, mem); err != nil {
		t.Fatal(err)
	}
	_, err := EnsureStream(ctx, js, 1)
	if err == nil {
		t.Fatal("changing the storage type: no error")
	}
	t.Logf("refused: %v", err)
	st, err := js.Stream(ctx, domain.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if st.CachedInfo().Config.Storage != jetstream.MemoryStorage {
		t.Fatalf("stream changed anyway")
	}
}

// TestStreamSurvivesRestart: the stream, its configuration and its messages
// are still there after the server restarts on the same store directory.
func TestStreamSurvivesRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := t.Context()
	subj := domain.KeySubject("o", "k")

	srv := startServer(t, dir)
	_, js := connect(t, srv.ClientURL())
	st, err := EnsureStream(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	s1, err := NewJetStream(js, nil, st).Append(ctx, appendOf(subj, 0, "e1", domain.EventKeyCreated))
	if err != nil {
		t.Fatal(err)
	}
	srv.Shutdown()
	srv.WaitForShutdown()

	srv2 := startServer(t, dir)
	_, js2 := connect(t, srv2.ClientURL())
	st2, err := js2.Stream(ctx, domain.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	checkStreamConfig(t, st2.CachedInfo().Config, 1)
	if err := st2.Purge(ctx); err == nil {
		t.Fatalf("purge after restart: no error")
	}
	st3, err := EnsureStream(ctx, js2, 1)
	if err != nil {
		t.Fatalf("EnsureStream after restart: %v", err)
	}
	s := NewJetStream(js2, nil, st3)
	rec, ok, err := s.Last(ctx, subj)
	if err != nil || !ok || rec.Sequence != s1 {
		t.Fatalf("Last after restart = %+v, %v, %v", rec, ok, err)
	}
	if _, err := s.Append(ctx, appendOf(subj, 0, "e2", domain.EventKeyCreated)); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("guard after restart: %v; want ErrConflict", err)
	}
	if s2, err := s.Append(ctx, appendOf(subj, s1, "e2", domain.EventKeyUpdated)); err != nil || s2 != s1+1 {
		t.Fatalf("append after restart = %d, %v", s2, err)
	}
}

// TestJetStreamCluster runs the conformance suite on an R3 stream (where
// conflicts may come back as 10164 and a retried append as a duplicate ack),
// and checks that EnsureStream does not lower the replica count.
func TestJetStreamCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	urls, _ := testenv.Cluster3(t) // returns once the meta leader is elected and every node current
	nc, js := connect(t, strings.Join(urls, ","))
	ctx := t.Context()
	// ensure creates (or finds) the R3 stream and waits until it is usable
	// through every node: a stream leader, current followers, and its
	// interest spread over the routes. Without that wait, the first append
	// or direct get of a freshly recreated stream could race its leader
	// election and find no responder.
	ensure := func(t *testing.T) jetstream.Stream {
		t.Helper()
		var st jetstream.Stream
		var err error
		for range 50 { // a deleted stream's assignment may still be going away
			if st, err = EnsureStream(ctx, js, 3); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("EnsureStream R3: %v", err)
		}
		testenv.StreamReady(t, urls, domain.StreamName, domain.KeySubject("ready", "probe"))
		return st
	}

	t.Run("NoDowngrade", func(t *testing.T) {
		ensure(t)
		if _, err := EnsureStream(ctx, js, 1); err == nil {
			t.Fatal("lowering replicas 3 → 1: no error")
		}
		st, err := js.Stream(ctx, domain.StreamName)
		if err != nil {
			t.Fatal(err)
		}
		checkStreamConfig(t, st.CachedInfo().Config, 3)
	})
	t.Run("RetryIsDuplicate", func(t *testing.T) {
		if err := js.DeleteStream(ctx, domain.StreamName); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Fatal(err)
		}
		s := NewJetStream(js, nc, ensure(t))
		a := appendOf(domain.KeySubject("o", "k"), 0, "r3-e1", domain.EventKeyCreated)
		s1, err := s.Append(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		seq, err := s.Append(ctx, a)
		t.Logf("R3 retry of a landed append: seq %d, err %v", seq, err)
		if err != nil && !errors.Is(err, domain.ErrConflict) || err == nil && seq != s1 {
			t.Fatalf("retry: %d, %v", seq, err)
		}
	})
	for name, opts := range map[string][]Option{"DirectGet": nil, "LeaderReads": {WithLeaderReads()}} {
		t.Run("Conformance/"+name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T) domain.EventStore {
				if err := js.DeleteStream(ctx, domain.StreamName); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
					t.Fatal(err)
				}
				return NewJetStream(js, nc, ensure(t), opts...)
			})
		})
	}
}

// BenchmarkAppend: single-message appends, each creating a new subject.
func BenchmarkAppend(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		id := strconv.Itoa(i)
		if _, err := f.store.Append(ctx, appendOf(domain.KeySubject("bench", "k"+id), 0, "b"+id, domain.EventKeyCreated)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkAppendBatch: two-message atomic appends (what rotate writes).
func BenchmarkAppendBatch(b *testing.B) {
	f := newFixture(b)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		i++
		id := strconv.Itoa(i)
		if _, err := f.store.Append(ctx,
			appendOf(domain.KeySubject("bench", "old"+id), 0, "o"+id, domain.EventKeyRotated),
			appendOf(domain.KeySubject("bench", "new"+id), 0, "n"+id, domain.EventKeyCreated)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLast: Last of a random subject in a stream of 100 and of 10,000
// subjects (3 messages each): the figure does not grow with the stream, it
// is one lookup, no scan.
func BenchmarkLast(b *testing.B) {
	for _, subjects := range []int{100, 10_000} {
		b.Run(fmt.Sprintf("subjects=%d", subjects), func(b *testing.B) { benchLast(b, subjects) })
	}
	b.Run("subjects=10000/leader", func(b *testing.B) { benchLast(b, 10_000, WithLeaderReads()) })
}

func benchLast(b *testing.B, subjects int, opts ...Option) {
	const perSubject = 3
	f := newFixture(b, opts...)
	ctx := context.Background()
	for round := range perSubject {
		var futures []jetstream.PubAckFuture
		for i := range subjects {
			m := &nats.Msg{Subject: domain.KeySubject("bench", "k"+strconv.Itoa(i)), Data: []byte(`{"round":` + strconv.Itoa(round) + `}`)}
			fut, err := f.js.PublishMsgAsync(m)
			if err != nil {
				b.Fatal(err)
			}
			futures = append(futures, fut)
		}
		select {
		case <-f.js.PublishAsyncComplete():
		case <-time.After(30 * time.Second):
			b.Fatal("async publishes not acked")
		}
		for _, fut := range futures {
			select {
			case <-fut.Ok():
			case err := <-fut.Err():
				b.Fatal(err)
			}
		}
	}
	if n, _ := f.store.LastSequence(ctx); n != uint64(subjects*perSubject) {
		b.Fatalf("stream holds %d messages", n)
	}
	for b.Loop() {
		subj := domain.KeySubject("bench", "k"+strconv.Itoa(rand.IntN(subjects)))
		rec, ok, err := f.store.Last(ctx, subj)
		if err != nil || !ok || rec.Sequence <= uint64(2*subjects) {
			b.Fatalf("Last(%s) = %d, %v, %v", subj, rec.Sequence, ok, err)
		}
	}
}

// TestJetStreamOutOfSpace: an append the server refuses for lack of space
// (the stream's own limit with DiscardNew, and the server's max_file_store)
// is sent once, not retried as if its outcome were unknown, and says that
// the store is out of space and nothing was stored; an idempotency record
// refused the same way says so too.
func TestJetStreamOutOfSpace(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	check := func(t *testing.T, what string, err error) {
		t.Helper()
		var de *domain.Error
		if !errors.Is(err, ErrNoSpace) || errors.Is(err, ErrUnavailable) || !errors.As(err, &de) ||
			de.Code != domain.EUnavailable || de.Message != NoSpaceMessage {
			t.Fatalf("%s on a full store: %v (code %q); want ErrNoSpace, not ErrUnavailable, unavailable %q", what, err, domain.ErrorCode(err), NoSpaceMessage)
		}
	}
	// attempts counts the publishes of an append that reach the server.
	attempts := func(t *testing.T, nc *nats.Conn, f func()) int {
		t.Helper()
		sub, err := nc.SubscribeSync(domain.EventSubjects)
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Unsubscribe()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		f()
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		n := 0
		for {
			if _, err := sub.NextMsg(100 * time.Millisecond); err != nil {
				return n
			}
			n++
		}
	}

	t.Run("stream limit", func(t *testing.T) {
		f := newFixture(t)
		s := NewJetStream(f.js, f.nc, f.stream, WithSigner(testSigner), WithRetry(4, time.Second, 50*time.Millisecond))
		cfg := f.stream.CachedInfo().Config
		cfg.MaxMsgs = 1
		if _, err := f.js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Append(ctx, appendOf(domain.KeySubject("o", "k0"), 0, "fits", domain.EventKeyCreated)); err != nil {
			t.Fatal(err)
		}
		var err error
		if n := attempts(t, f.nc, func() {
			_, err = s.Append(ctx, appendOf(domain.KeySubject("o", "k1"), 0, "full-1", domain.EventKeyCreated))
		}); n != 1 {
			t.Errorf("the append was sent %d times; want once", n)
		}
		check(t, "Append", err)
		_, err = s.Append(ctx, appendOf(domain.KeySubject("o", "k2"), 0, "full-2", domain.EventKeyCreated), appendOf(domain.KeySubject("o", "k3"), 0, "full-3", domain.EventKeyCreated))
		check(t, "batch Append", err)
		info, err := f.stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.LastSeq != 1 {
			t.Fatalf("the stream holds up to sequence %d after refused appends; want 1", info.State.LastSeq)
		}
	})

	t.Run("server max_file_store", func(t *testing.T) {
		srv, err := server.NewServer(&server.Options{
			JetStream: true, StoreDir: t.TempDir(), JetStreamMaxStore: 64 << 10,
			Host: "127.0.0.1", Port: -1, NoSigs: true, NoLog: true,
		})
		if err != nil {
			t.Fatal(err)
		}
		go srv.Start()
		if !srv.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats-server not ready")
		}
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		nc, js := connect(t, srv.ClientURL())
		st, err := EnsureStream(ctx, js, 1)
		if err != nil {
			t.Fatal(err)
		}
		idem, err := NewKVIdempotency(ctx, js, 1)
		if err != nil {
			t.Fatal(err)
		}
		s := NewJetStream(js, nc, st, WithSigner(testSigner), WithRetry(4, time.Second, 50*time.Millisecond))
		data := strings.Repeat("x", 1024)
		var full error
		for i := 0; full == nil; i++ {
			if i > 1000 {
				t.Fatal("64 KiB of store never filled up")
			}
			a := appendOf(domain.KeySubject("o", fmt.Sprintf("k%d", i)), 0, fmt.Sprintf("fill-%d", i), domain.EventKeyCreated)
			a.Data = []byte(`{"pad":"` + data + `"}`)
			_, full = s.Append(ctx, a)
		}
		check(t, "Append", full)
		var err1 error
		if n := attempts(t, nc, func() {
			_, err1 = s.Append(ctx, appendOf(domain.KeySubject("o", "more"), 0, "more", domain.EventKeyCreated))
		}); n != 1 {
			t.Errorf("the append was sent %d times; want once", n)
		}
		check(t, "Append", err1)
		_, _, err = idem.Reserve(ctx, "o", "idem-key", "key_1", time.Now())
		check(t, "idempotency Reserve", err)
	})
}
