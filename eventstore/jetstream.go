package eventstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keyd-dev/keyd/domain"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrUnavailable is wrapped by errors from a store that could not get an
// answer from the server in time: for an append, its outcome is unknown (it
// may be retried with the same MsgIDs).
var ErrUnavailable = errors.New("eventstore: unavailable")

// Server error codes this package interprets, beyond those nats.go names
// (jetstream.JSErrCode...).
const (
	codeDuplicateInProcess  = 10158 // a message with this Msg-Id is still being stored
	codeBatchDuplicateMsgID = 10201 // a batch carries a Msg-Id the stream already holds
	codeBatchIncomplete     = 10176 // a batch message was lost; nothing stored
	headerBatchID           = "Nats-Batch-Id"
	headerBatchSeq          = "Nats-Batch-Sequence"
	headerBatchCommit       = "Nats-Batch-Commit"
	defaultAttempts         = 3
	defaultAttemptTimeout   = 2 * time.Second
	defaultBackoff          = 100 * time.Millisecond
)

// JetStream is domain.EventStore on the KEYD_EVENTS stream (see EnsureStream).
// It is safe for concurrent use.
//
// Contract, beyond domain.EventStore's:
//
//   - Append of one message is a JetStream publish carrying the headers
//     Keyd-Event-Type, Nats-Msg-Id (MsgID), Nats-Expected-Stream and
//     Nats-Expected-Last-Subject-Sequence (ExpectedSequence; 0 is sent too
//     and means "the subject must be empty").
//   - Append of several messages is one ADR-50 atomic batch: all are stored or
//     none is, each guarded by its own expected sequence against the state
//     before the batch.
//   - A guard that does not hold is an error that errors.Is domain.ErrConflict
//     (server codes 10071 and 10164). So is a Msg-Id the stream has already
//     stored as some other message than the one this append describes, and a
//     retried batch the server reports as containing stored Msg-Ids (10201).
//   - A publish whose reply is lost (timeout, no responders while a leader is
//     elected) is retried a bounded number of times with the same Msg-Ids. A
//     "duplicate" ack is success with the original sequence once one leader
//     read confirms the original is this append's message; a guard failing on
//     such a retry (what a single server answers) is ErrConflict, and the
//     caller finds its own command on the subject when it reloads. An append
//     that still has no answer is an error that errors.Is ErrUnavailable: its
//     outcome is unknown.
//   - Last is one direct get of the subject's last message, whatever the
//     length of the stream (no scan). On a replicated stream a direct get may
//     be answered by a follower a little behind the leader: a stale read
//     cannot make a wrong append pass its guard (the append then fails with
//     ErrConflict), but it can miss an append acknowledged just before (a key
//     created a moment ago may not be found yet). WithLeaderReads trades
//     read scaling for read-your-writes.
//   - Errors name subjects, sequences and Msg-Ids, never payloads.
type JetStream struct {
	js             jetstream.JetStream
	nc             *nats.Conn
	stream         jetstream.Stream
	name           string
	apiPrefix      string
	attempts       int
	attemptTimeout time.Duration
	backoff        time.Duration
	leaderLast     bool
}

// Option configures a JetStream store.
type Option func(*JetStream)

// WithLeaderReads makes Last ask the stream leader instead of using a direct
// get, which on a replicated stream any up-to-date replica may answer. It is
// still one lookup, no scan, but every read goes to the leader; in return a
// Last always sees every append acknowledged before it (read-your-writes,
// e.g. an update right after the create). On a single server both are the
// same.
func WithLeaderReads() Option {
	return func(s *JetStream) { s.leaderLast = true }
}

// NewJetStream returns the event store on stream (as returned by
// EnsureStream). nc is the connection js was made with; nil means js.Conn().
// The atomic batch publish, which nats.go has no API for, goes over it.
func NewJetStream(js jetstream.JetStream, nc *nats.Conn, stream jetstream.Stream, opts ...Option) *JetStream {
	if nc == nil {
		nc = js.Conn()
	}
	name := domain.StreamName
	if info := stream.CachedInfo(); info != nil && info.Config.Name != "" {
		name = info.Config.Name
	}
	s := &JetStream{
		js: js, nc: nc, stream: stream, name: name,
		apiPrefix:      apiPrefix(js.Options()),
		attempts:       defaultAttempts,
		attemptTimeout: defaultAttemptTimeout,
		backoff:        defaultBackoff,
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func apiPrefix(o jetstream.JetStreamOptions) string {
	switch {
	case o.Domain != "":
		return "$JS." + o.Domain + ".API."
	case o.APIPrefix != "":
		return strings.TrimSuffix(o.APIPrefix, ".") + "."
	}
	return jetstream.DefaultAPIPrefix
}

// Append stores msgs atomically, each guarded by its ExpectedSequence, and
// returns the stream sequence of the last one. See the type's contract.
func (s *JetStream) Append(ctx context.Context, msgs ...domain.AppendMsg) (uint64, error) {
	if err := checkAppends(msgs); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("eventstore: append: %w", err)
	}
	var try func(context.Context) (uint64, error)
	if len(msgs) == 1 {
		try = func(ctx context.Context) (uint64, error) { return s.publishOne(ctx, msgs[0]) }
	} else {
		try = func(ctx context.Context) (uint64, error) { return s.publishBatch(ctx, msgs) }
	}
	var lastErr error
	wait := s.backoff
	for attempt := 1; attempt <= s.attempts; attempt++ {
		if attempt > 1 {
			select {
			case <-ctx.Done():
				return 0, s.unknownOutcome(msgs, attempt-1, errors.Join(lastErr, ctx.Err()))
			case <-time.After(wait):
			}
			wait *= 2
		}
		actx, cancel := context.WithTimeout(ctx, s.attemptTimeout)
		seq, err := try(actx)
		cancel()
		switch {
		case err == nil || errors.Is(err, domain.ErrConflict):
			return seq, err
		case ctx.Err() != nil:
			// The caller gave up while the attempt was out: it may have landed.
			return 0, s.unknownOutcome(msgs, attempt, errors.Join(err, ctx.Err()))
		case !retryable(err):
			return 0, err
		}
		lastErr = err
	}
	return 0, s.unknownOutcome(msgs, s.attempts, lastErr)
}

func (s *JetStream) unknownOutcome(msgs []domain.AppendMsg, attempts int, err error) error {
	return fmt.Errorf("%w: append to %s (%d messages, first MsgID %s): no answer after %d attempts, outcome unknown: %w",
		ErrUnavailable, msgs[0].Subject, len(msgs), msgs[0].MsgID, attempts, err)
}

// retryable reports whether err leaves an append's outcome unknown or says
// it was not stored for a transient reason, so the same append may be sent
// again.
func retryable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case codeDuplicateInProcess, codeBatchIncomplete:
			return true
		}
		return apiErr.Code == 503
	}
	return false
}

func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) &&
		(apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant)
}

// publishOne is one attempt at a single-message append.
func (s *JetStream) publishOne(ctx context.Context, a domain.AppendMsg) (uint64, error) {
	m := &nats.Msg{Subject: a.Subject, Data: a.Data, Header: nats.Header{}}
	m.Header.Set(HeaderEventType, a.Type)
	ack, err := s.js.PublishMsg(ctx, m,
		jetstream.WithMsgID(a.MsgID),
		jetstream.WithExpectStream(s.name),
		jetstream.WithExpectLastSequencePerSubject(a.ExpectedSequence),
		jetstream.WithRetryAttempts(0), // Append retries, with backoff and a bound
	)
	switch {
	case err == nil && ack.Duplicate:
		return s.confirmDuplicate(ctx, a, ack.Sequence)
	case err == nil:
		return ack.Sequence, nil
	case isWrongLastSeq(err):
		return 0, conflict(a.Subject, a.ExpectedSequence, err)
	case retryable(err):
		return 0, err
	}
	return 0, fmt.Errorf("eventstore: append to %s (MsgID %s): %w", a.Subject, a.MsgID, err)
}

// errMsgIDStored says a Msg-Id is already in the stream, but not as the
// message this append would have written.
var errMsgIDStored = errors.New("eventstore: MsgID already stored as another message")

// confirmDuplicate checks a "duplicate" ack for a: the message the stream
// holds under a's Msg-Id (at seq) must be the first on a's subject after a's
// expected sequence, i.e. a's own write. One read, answered by the leader.
func (s *JetStream) confirmDuplicate(ctx context.Context, a domain.AppendMsg, seq uint64) (uint64, error) {
	next, found, err := s.Next(ctx, a.Subject, a.ExpectedSequence)
	if err != nil {
		return 0, err
	}
	if !found || next.Sequence != seq {
		return 0, conflict(a.Subject, a.ExpectedSequence,
			fmt.Errorf("%w (MsgID %s at sequence %d)", errMsgIDStored, a.MsgID, seq))
	}
	return seq, nil
}

// Next returns the first message on subject with a sequence above after,
// read from the stream leader (one request).
func (s *JetStream) Next(ctx context.Context, subject string, after uint64) (domain.Record, bool, error) {
	if err := checkSubject(subject); err != nil {
		return domain.Record{}, false, err
	}
	rec, ok, err := s.leaderGet(ctx, leaderGetRequest{Seq: after + 1, NextFor: subject})
	if err != nil {
		return domain.Record{}, false, fmt.Errorf("eventstore: next message on %s after %d: %w", subject, after, err)
	}
	if ok && rec.Subject != subject {
		return domain.Record{}, false, fmt.Errorf("eventstore: next message on %s after %d: the reply holds a message of another subject", subject, after)
	}
	return rec, ok, nil
}

type leaderGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
}

// leaderGet is one STREAM.MSG.GET request, which the stream leader answers.
func (s *JetStream) leaderGet(ctx context.Context, req leaderGetRequest) (domain.Record, bool, error) {
	body, _ := json.Marshal(req)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.js.Options().DefaultTimeout)
		defer cancel()
	}
	resp, err := s.nc.RequestWithContext(ctx, s.apiPrefix+"STREAM.MSG.GET."+s.name, body)
	if err != nil {
		if retryable(err) {
			return domain.Record{}, false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return domain.Record{}, false, err
	}
	var r struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Subject string `json:"subject"`
			Seq     uint64 `json:"seq"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return domain.Record{}, false, errors.New("bad reply from the stream leader")
	}
	if r.Error != nil {
		if r.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return domain.Record{}, false, nil
		}
		if retryable(r.Error) {
			return domain.Record{}, false, fmt.Errorf("%w: %w", ErrUnavailable, r.Error)
		}
		return domain.Record{}, false, r.Error
	}
	if r.Message == nil {
		return domain.Record{}, false, errors.New("the stream leader's reply holds no message")
	}
	return domain.Record{Subject: r.Message.Subject, Sequence: r.Message.Seq, Data: r.Message.Data}, true, nil
}

// batchAck is the server's reply to a batch message: empty for a staged
// message, a PubAck or an API error for the commit (or for a failure).
type batchAck struct {
	Error     *jetstream.APIError `json:"error,omitempty"`
	Stream    string              `json:"stream"`
	Sequence  uint64              `json:"seq"`
	Duplicate bool                `json:"duplicate,omitempty"`
	Batch     string              `json:"batch,omitempty"`
	Count     int                 `json:"count,omitempty"`
}

// newBatchID returns a fresh batch id: 32 hex digits (the server allows 64).
func newBatchID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// publishBatch is one attempt at a multi-message append, as one atomic batch
// (ADR-50) under a fresh batch id: message 1 as a request (the server
// answers once it has staged it, or with an error), the middle ones as plain
// publishes, the last with Nats-Batch-Commit: 1 as a request whose reply is
// the PubAck of the whole batch (the last sequence) or the error that
// rejected all of it. A batch the server never commits is dropped by it.
func (s *JetStream) publishBatch(ctx context.Context, msgs []domain.AppendMsg) (uint64, error) {
	id := newBatchID()
	n := len(msgs)
	for i, a := range msgs {
		m := &nats.Msg{Subject: a.Subject, Data: a.Data, Header: nats.Header{}}
		m.Header.Set(HeaderEventType, a.Type)
		m.Header.Set(jetstream.MsgIDHeader, a.MsgID)
		m.Header.Set(jetstream.ExpectedStreamHeader, s.name)
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(a.ExpectedSequence, 10))
		m.Header.Set(headerBatchID, id)
		m.Header.Set(headerBatchSeq, strconv.Itoa(i+1))
		last := i == n-1
		if last {
			m.Header.Set(headerBatchCommit, "1")
		}
		if !last && i > 0 {
			if err := s.nc.PublishMsg(m); err != nil {
				return 0, fmt.Errorf("eventstore: batch message %d of %d (subject %s): %w", i+1, n, a.Subject, err)
			}
			continue
		}
		resp, err := s.nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			if retryable(err) {
				return 0, err
			}
			return 0, fmt.Errorf("eventstore: batch message %d of %d (subject %s): %w", i+1, n, a.Subject, err)
		}
		if !last && len(resp.Data) == 0 {
			continue // staged
		}
		var ack batchAck
		if err := json.Unmarshal(resp.Data, &ack); err != nil {
			return 0, fmt.Errorf("eventstore: batch message %d of %d: bad reply: %w", i+1, n, err)
		}
		if ack.Error != nil {
			return 0, s.batchError(msgs, ack.Error)
		}
		if !last {
			return 0, fmt.Errorf("eventstore: batch message %d of %d: unexpected reply before the commit", i+1, n)
		}
		if ack.Duplicate {
			return 0, s.batchError(msgs, errMsgIDStored)
		}
		if ack.Stream != s.name || ack.Count != n || ack.Sequence < uint64(n) {
			return 0, fmt.Errorf("eventstore: batch of %d: commit reply names stream %q, %d messages", n, ack.Stream, ack.Count)
		}
		return ack.Sequence, nil
	}
	return 0, errors.New("eventstore: unreachable")
}

func (s *JetStream) batchError(msgs []domain.AppendMsg, err error) error {
	subjects := make([]string, len(msgs))
	for i, m := range msgs {
		subjects[i] = m.Subject
	}
	var apiErr *jetstream.APIError
	if errors.Is(err, errMsgIDStored) || isWrongLastSeq(err) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == codeBatchDuplicateMsgID) {
		return fmt.Errorf("%w (atomic append to %s): %w", domain.ErrConflict, strings.Join(subjects, ", "), err)
	}
	if retryable(err) {
		return err
	}
	return fmt.Errorf("eventstore: atomic append to %s: %w", strings.Join(subjects, ", "), err)
}

// Last returns the newest message on subject (a literal subject of the
// stream), or ok=false if it has none: one direct get, whatever the length
// of the stream.
func (s *JetStream) Last(ctx context.Context, subject string) (domain.Record, bool, error) {
	if err := checkSubject(subject); err != nil {
		return domain.Record{}, false, err
	}
	if s.leaderLast {
		rec, ok, err := s.leaderGet(ctx, leaderGetRequest{LastFor: subject})
		if err != nil {
			return domain.Record{}, false, fmt.Errorf("eventstore: last message on %s: %w", subject, err)
		}
		if ok && rec.Subject != subject {
			return domain.Record{}, false, fmt.Errorf("eventstore: last message on %s: the reply holds a message of another subject", subject)
		}
		return rec, ok, nil
	}
	m, err := s.stream.GetLastMsgForSubject(ctx, subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return domain.Record{}, false, nil
	case err != nil && retryable(err):
		return domain.Record{}, false, fmt.Errorf("%w: last message on %s: %w", ErrUnavailable, subject, err)
	case err != nil:
		return domain.Record{}, false, fmt.Errorf("eventstore: last message on %s: %w", subject, err)
	}
	return domain.Record{Subject: m.Subject, Sequence: m.Sequence, Data: m.Data}, true, nil
}

// LastSequence returns the stream's last sequence (0 if it is empty), as the
// stream leader reports it: a reader that has applied everything up to it
// has caught up with every append acknowledged before the call.
func (s *JetStream) LastSequence(ctx context.Context) (uint64, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		if retryable(err) {
			return 0, fmt.Errorf("%w: stream %s info: %w", ErrUnavailable, s.name, err)
		}
		return 0, fmt.Errorf("eventstore: stream %s info: %w", s.name, err)
	}
	return info.State.LastSeq, nil
}

var _ domain.EventStore = (*JetStream)(nil)
