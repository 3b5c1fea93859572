// Package storetest is the conformance suite of domain.EventStore: every
// implementation (eventstore.JetStream, eventstore.Memory) must pass Run.
//
// What it holds a store to, beyond the interface's comments:
//
//   - sequences are stream sequences: they start above 0, strictly increase
//     across all subjects, and have no gaps (the suite counts what an append
//     stored by the sequence the next append gets);
//   - Last on a subject without messages is ok=false and no error;
//   - an ExpectedSequence of 0 means "the subject must be empty";
//   - a failing guard is an error that errors.Is domain.ErrConflict, and
//     nothing of that append is stored;
//   - of many concurrent appends with the same guard exactly one wins;
//   - an append retried with the same MsgIDs is never stored twice: it
//     answers success with the original sequence, or ErrConflict;
//   - a MsgID reused for another message is ErrConflict, nothing stored;
//   - invalid appends (no messages, two on one subject, a wildcard subject,
//     no MsgID) are errors that are not ErrConflict, nothing stored;
//   - a canceled context is an error, nothing stored;
//   - Data is the caller's to reuse after Append, and Last's to the caller.
//
// Each test gets a fresh, empty store from newStore.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// Run runs the suite, each case on a store newStore returns (fresh and
// empty for every call).
func Run(t *testing.T, newStore func(t *testing.T) domain.EventStore) {
	cases := []struct {
		name string
		fn   func(t *testing.T, s domain.EventStore)
	}{
		{"RoundTrip", testRoundTrip},
		{"LastOnEmptySubject", testLastEmpty},
		{"NextOnSubject", testNext},
		{"ExpectZeroOnNonEmpty", testExpectZeroOnNonEmpty},
		{"StaleExpectedSequence", testStale},
		{"SequencesIncreaseAcrossSubjects", testIncreasing},
		{"ConcurrentAppendsOneWinner", testRace},
		{"RetriedAppendStoredOnce", testRetried},
		{"RetriedAppendAfterLaterWrite", testRetriedAfterLaterWrite},
		{"MsgIDReusedElsewhere", testMsgIDReused},
		{"AtomicAppend", testAtomic},
		{"AtomicAppendBadGuardStoresNothing", testAtomicBadGuard},
		{"RetriedAtomicAppendStoredOnce", testAtomicRetried},
		{"InvalidAppends", testInvalid},
		{"CanceledContext", testCanceled},
		{"DataIsCopied", testDataCopied},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.fn(t, newStore(t))
		})
	}
}

var (
	subjA = domain.KeySubject("org1", "keyA")
	subjB = domain.KeySubject("org1", "keyB")
	subjC = domain.KeySubject("org2", "keyC")
	probe = domain.KeySubject("probe", "probe")
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var idSeq struct {
	sync.Mutex
	n int
}

func newID() string {
	idSeq.Lock()
	defer idSeq.Unlock()
	idSeq.n++
	return fmt.Sprintf("evt-%d-%d", time.Now().UnixNano(), idSeq.n)
}

func msg(subject string, expected uint64, data string) domain.AppendMsg {
	return domain.AppendMsg{Subject: subject, ExpectedSequence: expected, MsgID: newID(), Type: domain.EventKeyUpdated, Data: []byte(data)}
}

func mustAppend(t *testing.T, s domain.EventStore, msgs ...domain.AppendMsg) uint64 {
	t.Helper()
	seq, err := s.Append(ctxT(t), msgs...)
	if err != nil {
		t.Fatalf("Append: %v", err)
	}
	if seq == 0 {
		t.Fatalf("Append returned sequence 0")
	}
	return seq
}

// mustLast asserts the last message on subject: its sequence and data
// (wantSeq 0: the subject is empty).
func mustLast(t *testing.T, s domain.EventStore, subject string, wantSeq uint64, wantData string) {
	t.Helper()
	rec, ok, err := s.Last(ctxT(t), subject)
	if err != nil {
		t.Fatalf("Last(%s): %v", subject, err)
	}
	if wantSeq == 0 {
		if ok {
			t.Fatalf("Last(%s) = seq %d, want no message", subject, rec.Sequence)
		}
		return
	}
	if !ok {
		t.Fatalf("Last(%s): no message, want seq %d", subject, wantSeq)
	}
	if rec.Subject != subject || rec.Sequence != wantSeq || string(rec.Data) != wantData {
		t.Fatalf("Last(%s) = {%s %d %q}, want {%s %d %q}", subject, rec.Subject, rec.Sequence, rec.Data, subject, wantSeq, wantData)
	}
}

// storedSince asserts that exactly n messages were stored after sequence
// after, by appending a probe message (which must get after+n+1).
func storedSince(t *testing.T, s domain.EventStore, after uint64, n uint64) {
	t.Helper()
	last, ok, err := s.Last(ctxT(t), probe)
	if err != nil {
		t.Fatalf("Last(probe): %v", err)
	}
	var exp uint64
	if ok {
		exp = last.Sequence
	}
	got := mustAppend(t, s, msg(probe, exp, "probe"))
	if got != after+n+1 {
		t.Fatalf("%d messages were stored after sequence %d, want %d", got-after-1, after, n)
	}
}

func wantConflict(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("err = %v, want domain.ErrConflict", err)
	}
}

func testRoundTrip(t *testing.T, s domain.EventStore) {
	s1 := mustAppend(t, s, msg(subjA, 0, `{"n":1}`))
	mustLast(t, s, subjA, s1, `{"n":1}`)
	s2 := mustAppend(t, s, msg(subjA, s1, `{"n":2}`))
	if s2 <= s1 {
		t.Fatalf("second sequence %d not above first %d", s2, s1)
	}
	mustLast(t, s, subjA, s2, `{"n":2}`)
	mustLast(t, s, subjB, 0, "")
}

func testNext(t *testing.T, s domain.EventStore) {
	a1 := mustAppend(t, s, msg(subjA, 0, "a1"))
	b1 := mustAppend(t, s, msg(subjB, 0, "b1"))
	a2 := mustAppend(t, s, msg(subjA, a1, "a2"))
	for _, tc := range []struct {
		subject string
		after   uint64
		want    uint64 // 0: none
		data    string
	}{
		{subjA, 0, a1, "a1"},
		{subjA, a1, a2, "a2"},
		{subjA, b1, a2, "a2"},
		{subjA, a2, 0, ""},
		{subjB, 0, b1, "b1"},
		{subjB, b1, 0, ""},
		{subjB + "x", 0, 0, ""},
	} {
		rec, ok, err := s.Next(ctxT(t), tc.subject, tc.after)
		if err != nil {
			t.Fatalf("Next(%s, %d): %v", tc.subject, tc.after, err)
		}
		if ok != (tc.want != 0) || (ok && (rec.Sequence != tc.want || string(rec.Data) != tc.data || rec.Subject != tc.subject)) {
			t.Errorf("Next(%s, %d) = %d %q %v, want %d %q", tc.subject, tc.after, rec.Sequence, rec.Data, ok, tc.want, tc.data)
		}
	}
}

func testLastEmpty(t *testing.T, s domain.EventStore) {
	mustLast(t, s, subjA, 0, "")
	mustAppend(t, s, msg(subjB, 0, "b"))
	mustLast(t, s, subjA, 0, "")
	// A subject that only shares a prefix with a stored one is still empty.
	mustLast(t, s, subjB+"x", 0, "")
}

func testExpectZeroOnNonEmpty(t *testing.T, s domain.EventStore) {
	s1 := mustAppend(t, s, msg(subjA, 0, "first"))
	_, err := s.Append(ctxT(t), msg(subjA, 0, "second"))
	wantConflict(t, err)
	mustLast(t, s, subjA, s1, "first")
	storedSince(t, s, s1, 0)
}

func testStale(t *testing.T, s domain.EventStore) {
	s1 := mustAppend(t, s, msg(subjA, 0, "1"))
	s2 := mustAppend(t, s, msg(subjA, s1, "2"))
	_, err := s.Append(ctxT(t), msg(subjA, s1, "stale"))
	wantConflict(t, err)
	_, err = s.Append(ctxT(t), msg(subjA, s2+100, "future"))
	wantConflict(t, err)
	mustLast(t, s, subjA, s2, "2")
	storedSince(t, s, s2, 0)
}

func testIncreasing(t *testing.T, s domain.EventStore) {
	a1 := mustAppend(t, s, msg(subjA, 0, "a1"))
	b1 := mustAppend(t, s, msg(subjB, 0, "b1"))
	c1 := mustAppend(t, s, msg(subjC, 0, "c1"))
	a2 := mustAppend(t, s, msg(subjA, a1, "a2"))
	b2 := mustAppend(t, s, msg(subjB, b1, "b2"))
	seqs := []uint64{a1, b1, c1, a2, b2}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("sequences %v do not strictly increase", seqs)
		}
	}
	mustLast(t, s, subjA, a2, "a2")
	mustLast(t, s, subjB, b2, "b2")
	mustLast(t, s, subjC, c1, "c1")
}

func testRace(t *testing.T, s domain.EventStore) {
	const n = 20
	s0 := mustAppend(t, s, msg(subjA, 0, "base"))
	var (
		wg        sync.WaitGroup
		start     = make(chan struct{})
		seqs      = make([]uint64, n)
		errs      = make([]error, n)
		ctx       = ctxT(t)
		appendsOf = make([]domain.AppendMsg, n)
	)
	for i := range n {
		appendsOf[i] = msg(subjA, s0, fmt.Sprintf("writer-%d", i))
		wg.Go(func() {
			<-start
			seqs[i], errs[i] = s.Append(ctx, appendsOf[i])
		})
	}
	close(start)
	wg.Wait()
	winner, conflicts := -1, 0
	for i := range n {
		switch {
		case errs[i] == nil && winner == -1:
			winner = i
		case errs[i] == nil:
			t.Fatalf("writers %d and %d both won (seqs %d, %d)", winner, i, seqs[winner], seqs[i])
		case errors.Is(errs[i], domain.ErrConflict):
			conflicts++
		default:
			t.Fatalf("writer %d: %v, want success or ErrConflict", i, errs[i])
		}
	}
	if winner == -1 || conflicts != n-1 {
		t.Fatalf("winner %d, %d conflicts; want one winner, %d conflicts", winner, conflicts, n-1)
	}
	mustLast(t, s, subjA, seqs[winner], string(appendsOf[winner].Data))
	storedSince(t, s, s0, 1)
}

// retryOK asserts the answer to a retried append: success with the original
// sequence, or ErrConflict.
func retryOK(t *testing.T, seq uint64, err error, orig uint64) {
	t.Helper()
	if err == nil && seq != orig {
		t.Fatalf("retried append succeeded with sequence %d, want the original %d", seq, orig)
	}
	if err != nil && !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("retried append: %v, want success or ErrConflict", err)
	}
}

func testRetried(t *testing.T, s domain.EventStore) {
	a := msg(subjA, 0, "once")
	s1 := mustAppend(t, s, a)
	seq, err := s.Append(ctxT(t), a)
	retryOK(t, seq, err, s1)
	seq, err = s.Append(ctxT(t), a)
	retryOK(t, seq, err, s1)
	mustLast(t, s, subjA, s1, "once")
	storedSince(t, s, s1, 0)
}

func testRetriedAfterLaterWrite(t *testing.T, s domain.EventStore) {
	a := msg(subjA, 0, "first")
	s1 := mustAppend(t, s, a)
	s2 := mustAppend(t, s, msg(subjA, s1, "second"))
	seq, err := s.Append(ctxT(t), a)
	retryOK(t, seq, err, s1)
	mustLast(t, s, subjA, s2, "second")
	storedSince(t, s, s2, 0)
}

func testMsgIDReused(t *testing.T, s domain.EventStore) {
	a := msg(subjA, 0, "a")
	s1 := mustAppend(t, s, a)
	// The same MsgID for a message on another subject: not a retry of a.
	b := a
	b.Subject, b.Data = subjB, []byte("b")
	_, err := s.Append(ctxT(t), b)
	wantConflict(t, err)
	mustLast(t, s, subjB, 0, "")
	// The same MsgID, same subject, but guarded by a later state: not a
	// retry of a either.
	s2 := mustAppend(t, s, msg(subjA, s1, "a2"))
	c := a
	c.ExpectedSequence, c.Data = s2, []byte("c")
	_, err = s.Append(ctxT(t), c)
	wantConflict(t, err)
	mustLast(t, s, subjA, s2, "a2")
	storedSince(t, s, s2, 0)
}

func testAtomic(t *testing.T, s domain.EventStore) {
	a0 := mustAppend(t, s, msg(subjA, 0, "a0"))
	last := mustAppend(t, s, msg(subjA, a0, "a1"), msg(subjB, 0, "b1"), msg(subjC, 0, "c1"))
	ra, _, _ := s.Last(ctxT(t), subjA)
	rb, _, _ := s.Last(ctxT(t), subjB)
	rc, _, _ := s.Last(ctxT(t), subjC)
	if !(a0 < ra.Sequence && ra.Sequence < rb.Sequence && rb.Sequence < rc.Sequence && rc.Sequence == last) {
		t.Fatalf("atomic append: a0=%d, a=%d b=%d c=%d, returned %d; want increasing in message order, last returned",
			a0, ra.Sequence, rb.Sequence, rc.Sequence, last)
	}
	mustLast(t, s, subjA, ra.Sequence, "a1")
	mustLast(t, s, subjB, rb.Sequence, "b1")
	mustLast(t, s, subjC, rc.Sequence, "c1")
	storedSince(t, s, a0, 3)
}

func testAtomicBadGuard(t *testing.T, s domain.EventStore) {
	a0 := mustAppend(t, s, msg(subjA, 0, "a0"))
	b0 := mustAppend(t, s, msg(subjB, 0, "b0"))
	for name, msgs := range map[string][]domain.AppendMsg{
		"last bad":   {msg(subjA, a0, "a1"), msg(subjB, b0+7, "b1")},
		"first bad":  {msg(subjA, 0, "a1"), msg(subjB, b0, "b1")},
		"middle bad": {msg(subjA, a0, "a1"), msg(subjC, 3, "c1"), msg(subjB, b0, "b1")},
		"new bad":    {msg(subjC, 0, "c1"), msg(subjB, 0, "b1")},
	} {
		_, err := s.Append(ctxT(t), msgs...)
		if !errors.Is(err, domain.ErrConflict) {
			t.Fatalf("%s: err = %v, want ErrConflict", name, err)
		}
	}
	mustLast(t, s, subjA, a0, "a0")
	mustLast(t, s, subjB, b0, "b0")
	mustLast(t, s, subjC, 0, "")
	storedSince(t, s, b0, 0)
	// The store still takes a good batch afterwards.
	mustAppend(t, s, msg(subjA, a0, "a1"), msg(subjB, b0, "b1"))
}

func testAtomicRetried(t *testing.T, s domain.EventStore) {
	batch := []domain.AppendMsg{msg(subjA, 0, "a"), msg(subjB, 0, "b")}
	last := mustAppend(t, s, batch...)
	seq, err := s.Append(ctxT(t), batch...)
	retryOK(t, seq, err, last)
	mustLast(t, s, subjA, last-1, "a")
	mustLast(t, s, subjB, last, "b")
	storedSince(t, s, last, 0)
}

func testInvalid(t *testing.T, s domain.EventStore) {
	a0 := mustAppend(t, s, msg(subjA, 0, "a0"))
	noID := msg(subjB, 0, "x")
	noID.MsgID = ""
	for name, msgs := range map[string][]domain.AppendMsg{
		"no messages":      nil,
		"subject twice":    {msg(subjB, 0, "1"), msg(subjB, 0, "2")},
		"wildcard subject": {msg(domain.OrgEventsSubject("org1"), 0, "x")},
		"outside stream":   {msg("other.subject", 0, "x")},
		"empty subject":    {msg("", 0, "x")},
		"no MsgID":         {noID},
	} {
		_, err := s.Append(ctxT(t), msgs...)
		if err == nil || errors.Is(err, domain.ErrConflict) {
			t.Fatalf("%s: err = %v, want an error that is not ErrConflict", name, err)
		}
	}
	if _, _, err := s.Last(ctxT(t), domain.OrgEventsSubject("org1")); err == nil {
		t.Fatalf("Last on a wildcard subject: no error")
	}
	mustLast(t, s, subjB, 0, "")
	storedSince(t, s, a0, 0)
}

func testCanceled(t *testing.T, s domain.EventStore) {
	a0 := mustAppend(t, s, msg(subjA, 0, "a0"))
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.Append(ctx, msg(subjB, 0, "b")); err == nil || errors.Is(err, domain.ErrConflict) {
		t.Fatalf("Append with a canceled context: err = %v", err)
	}
	if _, err := s.Append(ctx, msg(subjB, 0, "b"), msg(subjC, 0, "c")); err == nil || errors.Is(err, domain.ErrConflict) {
		t.Fatalf("atomic Append with a canceled context: err = %v", err)
	}
	if _, _, err := s.Last(ctx, subjA); err == nil {
		t.Fatalf("Last with a canceled context: no error")
	}
	storedSince(t, s, a0, 0)
}

func testDataCopied(t *testing.T, s domain.EventStore) {
	a := msg(subjA, 0, "original")
	s1 := mustAppend(t, s, a)
	copy(a.Data, "XXXXXXXX")
	rec, _, err := s.Last(ctxT(t), subjA)
	if err != nil {
		t.Fatal(err)
	}
	copy(rec.Data, "YYYYYYYY")
	mustLast(t, s, subjA, s1, "original")
}
