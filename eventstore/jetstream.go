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

// ErrNoSpace is wrapped by the error of a write the server refused for lack
// of space (see noSpace): nothing was stored. Such an error also carries a
// *domain.Error, unavailable, whose message says so (NoSpaceMessage).
var ErrNoSpace = errors.New("eventstore: out of space, nothing stored")

// NoSpaceMessage is what a caller is told when the event store refused a
// write for lack of space.
const NoSpaceMessage = "the event store is out of space (its storage limit is reached): nothing was stored; retry once space has been freed"

// Server error codes this package interprets, beyond those nats.go names
// (jetstream.JSErrCode...).
const (
	// Refusals for lack of space (nats-server's jetstream_errors): the
	// account's JetStream limit; the server's max_file_store or
	// max_memory_store (503 "insufficient resources", answered before a
	// message is stored or, on a cluster, proposed); storage or memory the
	// server cannot reserve; and a store failure, which names the stream's
	// own limit it hit (with DiscardNew) in its description.
	codeAccountResourcesExceeded = 10002
	codeInsufficientResources    = 10023
	codeMemoryResourcesExceeded  = 10028
	codeStorageResourcesExceeded = 10047
	codeStreamStoreFailed        = 10077

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
//   - An append the server refuses for lack of space (its, the account's or
//     the stream's storage limit: noSpace) is not retried: it is an error
//     that errors.Is ErrNoSpace and carries a *domain.Error, unavailable,
//     saying that the store is out of space and nothing was stored. (When
//     an earlier attempt of the same append may have landed, such a refusal
//     settles nothing, a cluster checking its limits before the Msg-Id: the
//     append is retried and may end as an unknown outcome.)
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
	signer         *domain.EventSigner
	auth           Auth
	onReject       func(Rejection)
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

// WithSigner makes the store sign every event it appends (the header
// domain.SignatureHeader) and set aside, in Last and Next, every message the
// signer's public key does not vouch for (see auth.go): keyd's command side
// always has one. Without it the store neither signs nor checks (tests of
// the store's mechanics).
func WithSigner(signer *domain.EventSigner) Option {
	return func(s *JetStream) { s.signer = signer }
}

// WithRejections receives each message Last or Next sets aside (for
// keyd_events_rejected_total and a log line). It is called on the caller's
// goroutine.
func WithRejections(f func(Rejection)) Option {
	return func(s *JetStream) { s.onReject = f }
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
	if s.signer != nil {
		var signedFrom uint64
		if info := stream.CachedInfo(); info != nil {
			signedFrom = SignedFromOf(info.Config)
		}
		s.auth = NewAuth(s.signer.PublicKey(), signedFrom)
	}
	return s
}

// sign sets the signature header of m, when the store signs.
func (s *JetStream) sign(m *nats.Msg) {
	if s.signer != nil {
		m.Header.Set(domain.SignatureHeader, s.signer.Sign(m.Subject, m.Data))
	}
}

// rejected reports whether the store sets aside the message at seq, and
// reports it: not signed by keyd (Auth), or signed by keyd but replayed
// (Chained: the guard stored with it is not the one keyd signed).
func (s *JetStream) rejected(seq uint64, subject string, data []byte, hdr nats.Header) bool {
	if s.signer == nil {
		return false
	}
	sig := hdr.Get(domain.SignatureHeader)
	reason := s.auth.Check(seq, subject, data, sig)
	if reason == "" && sig != "" && !Chained(data, hdr.Get(jetstream.ExpectedLastSubjSeqHeader)) {
		reason = RejectVersion // keyd's event, replayed later on its subject
	}
	if reason == "" {
		return false
	}
	if s.onReject != nil {
		s.onReject(Rejection{Sequence: seq, Subject: subject, Reason: reason})
	}
	return true
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
	mayHaveLanded := false // an earlier attempt may have been stored
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
		case noSpace(err) && !mayHaveLanded:
			return 0, noSpaceError(fmt.Errorf("append to %s (%d messages, first MsgID %s): %w", msgs[0].Subject, len(msgs), msgs[0].MsgID, err))
		case ctx.Err() != nil:
			// The caller gave up while the attempt was out: it may have landed.
			return 0, s.unknownOutcome(msgs, attempt, errors.Join(err, ctx.Err()))
		case !retryable(err):
			return 0, err
		}
		mayHaveLanded = mayHaveLanded || !notStored(err)
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

// noSpace reports whether err is the server's refusal of a write for lack
// of space: nothing was stored.
func noSpace(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case codeAccountResourcesExceeded, codeInsufficientResources, codeMemoryResourcesExceeded, codeStorageResourcesExceeded:
		return true
	case codeStreamStoreFailed:
		// nats-server's ErrMaxBytes, ErrMaxMsgs, ErrMaxMsgsPerSubject: the
		// stream's limits (KEYD_EVENTS discards new messages, not old ones).
		return strings.HasPrefix(apiErr.Description, "maximum bytes exceeded") ||
			strings.HasPrefix(apiErr.Description, "maximum messages exceeded") ||
			strings.HasPrefix(apiErr.Description, "maximum messages per subject exceeded")
	}
	return false
}

// noSpaceError is the error of a write refused for lack of space (err):
// ErrNoSpace, and unavailable with NoSpaceMessage for the caller.
func noSpaceError(err error) error {
	return domain.Wrap(fmt.Errorf("%w: %w", ErrNoSpace, err), domain.EUnavailable, NoSpaceMessage)
}

// mapNoSpace returns noSpaceError(err) when err is the server's refusal for
// lack of space, else err: for writes of keyd's buckets (idempotency
// records), whose outcome a refusal settles.
func mapNoSpace(err error) error {
	if err != nil && noSpace(err) {
		return noSpaceError(err)
	}
	return err
}

// notStored reports whether a retryable err says that its attempt was not
// stored: it reached no server, or the server dropped it.
func notStored(err error) bool {
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) || noSpace(err) {
		return true
	}
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == codeBatchIncomplete
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
	s.sign(m)
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
	for {
		rec, hdr, ok, err := s.leaderGet(ctx, leaderGetRequest{Seq: after + 1, NextFor: subject})
		if err != nil {
			return domain.Record{}, false, fmt.Errorf("eventstore: next message on %s after %d: %w", subject, after, err)
		}
		if ok && rec.Subject != subject {
			return domain.Record{}, false, fmt.Errorf("eventstore: next message on %s after %d: the reply holds a message of another subject", subject, after)
		}
		if !ok || !s.rejected(rec.Sequence, rec.Subject, rec.Data, hdr) {
			return rec, ok, nil
		}
		after = rec.Sequence
	}
}

type leaderGetRequest struct {
	Seq     uint64 `json:"seq,omitempty"`
	LastFor string `json:"last_by_subj,omitempty"`
	NextFor string `json:"next_by_subj,omitempty"`
}

// leaderGet is one STREAM.MSG.GET request, which the stream leader answers.
func (s *JetStream) leaderGet(ctx context.Context, req leaderGetRequest) (domain.Record, nats.Header, bool, error) {
	body, _ := json.Marshal(req)
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.js.Options().DefaultTimeout)
		defer cancel()
	}
	resp, err := s.nc.RequestWithContext(ctx, s.apiPrefix+"STREAM.MSG.GET."+s.name, body)
	if err != nil {
		if retryable(err) {
			return domain.Record{}, nil, false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return domain.Record{}, nil, false, err
	}
	var r struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Subject string `json:"subject"`
			Seq     uint64 `json:"seq"`
			Header  []byte `json:"hdrs"`
			Data    []byte `json:"data"`
		} `json:"message"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return domain.Record{}, nil, false, errors.New("bad reply from the stream leader")
	}
	if r.Error != nil {
		if r.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return domain.Record{}, nil, false, nil
		}
		if retryable(r.Error) {
			return domain.Record{}, nil, false, fmt.Errorf("%w: %w", ErrUnavailable, r.Error)
		}
		return domain.Record{}, nil, false, r.Error
	}
	if r.Message == nil {
		return domain.Record{}, nil, false, errors.New("the stream leader's reply holds no message")
	}
	var hdr nats.Header
	if len(r.Message.Header) > 0 {
		if hdr, err = nats.DecodeHeadersMsg(r.Message.Header); err != nil {
			return domain.Record{}, nil, false, errors.New("the stream leader's reply holds malformed headers")
		}
	}
	return domain.Record{Subject: r.Message.Subject, Sequence: r.Message.Seq, Data: r.Message.Data}, hdr, true, nil
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
		s.sign(m)
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
	rec, hdr, ok, err := s.lastRaw(ctx, subject)
	if err != nil || !ok {
		return domain.Record{}, false, err
	}
	rec.Head = rec.Sequence
	if !s.rejected(rec.Sequence, rec.Subject, rec.Data, hdr) {
		return rec, true, nil
	}
	good, ok, err := s.lastGood(ctx, subject, rec.Sequence)
	if err != nil {
		return domain.Record{}, false, fmt.Errorf("eventstore: last message on %s: %w", subject, err)
	}
	good.Head = rec.Sequence
	return good, ok, nil
}

// lastRaw is the newest message on subject, whatever it is: one direct get
// (or one leader get, WithLeaderReads).
func (s *JetStream) lastRaw(ctx context.Context, subject string) (domain.Record, nats.Header, bool, error) {
	if s.leaderLast {
		rec, hdr, ok, err := s.leaderGet(ctx, leaderGetRequest{LastFor: subject})
		if err != nil {
			return domain.Record{}, nil, false, fmt.Errorf("eventstore: last message on %s: %w", subject, err)
		}
		if ok && rec.Subject != subject {
			return domain.Record{}, nil, false, fmt.Errorf("eventstore: last message on %s: the reply holds a message of another subject", subject)
		}
		return rec, hdr, ok, nil
	}
	m, err := s.stream.GetLastMsgForSubject(ctx, subject)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return domain.Record{}, nil, false, nil
	case err != nil && retryable(err):
		return domain.Record{}, nil, false, fmt.Errorf("%w: last message on %s: %w", ErrUnavailable, subject, err)
	case err != nil:
		return domain.Record{}, nil, false, fmt.Errorf("eventstore: last message on %s: %w", subject, err)
	}
	return domain.Record{Subject: m.Subject, Sequence: m.Sequence, Data: m.Data}, m.Header, true, nil
}

// maxSetAside bounds how many set-aside messages Last steps back over on
// one subject before it gives up (unavailable): past it, the subject is
// being flooded, and a load must not turn into a scan of it.
const maxSetAside = 1000

// lastGood finds the last message on subject below head (a message set
// aside) that the store vouches for. It steps back with direct gets of the
// last message up to a sequence (nats-server 2.11's multi_last with
// up_to_seq), which any replica may answer; the candidate is then confirmed
// forward with the leader (Next: nothing it vouches for lies between the
// candidate and head), so a lagging replica cannot make Last return an
// older state than the stream holds.
func (s *JetStream) lastGood(ctx context.Context, subject string, head uint64) (domain.Record, bool, error) {
	below := head
	for range maxSetAside {
		rec, hdr, ok, err := s.lastUpTo(ctx, subject, below-1)
		if err != nil {
			return domain.Record{}, false, err
		}
		if !ok {
			return s.confirmLast(ctx, subject, domain.Record{}, head)
		}
		if !s.rejected(rec.Sequence, rec.Subject, rec.Data, hdr) {
			return s.confirmLast(ctx, subject, rec, head)
		}
		below = rec.Sequence
	}
	return domain.Record{}, false, fmt.Errorf("%w: more than %d messages on %s are set aside (not signed by keyd)", ErrUnavailable, maxSetAside, subject)
}

// confirmLast returns the last message on subject below head that the store
// vouches for, starting from the candidate cand (zero: none below it),
// read forward from the leader.
func (s *JetStream) confirmLast(ctx context.Context, subject string, cand domain.Record, head uint64) (domain.Record, bool, error) {
	found := cand.Sequence > 0
	for {
		next, ok, err := s.Next(ctx, subject, cand.Sequence)
		if err != nil {
			return domain.Record{}, false, err
		}
		if !ok || next.Sequence >= head {
			return cand, found, nil
		}
		cand, found = next, true
	}
}

// lastUpTo is the last message on subject at or below seq (ok=false: none),
// by a direct get that any replica may answer.
func (s *JetStream) lastUpTo(ctx context.Context, subject string, seq uint64) (domain.Record, nats.Header, bool, error) {
	if seq == 0 {
		return domain.Record{}, nil, false, nil
	}
	body, _ := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		UpToSeq   uint64   `json:"up_to_seq"`
		Batch     int      `json:"batch"`
	}{[]string{subject}, seq, 1})
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.js.Options().DefaultTimeout)
		defer cancel()
	}
	resp, err := s.nc.RequestWithContext(ctx, s.apiPrefix+"DIRECT.GET."+s.name, body)
	if err != nil {
		if retryable(err) {
			return domain.Record{}, nil, false, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return domain.Record{}, nil, false, err
	}
	if st := resp.Header.Get("Status"); st == "404" {
		return domain.Record{}, nil, false, nil
	} else if st != "" {
		return domain.Record{}, nil, false, fmt.Errorf("direct get of the last message on %s up to %d: status %s %s", subject, seq, st, resp.Header.Get("Description"))
	}
	got, err := strconv.ParseUint(resp.Header.Get(jetstream.SequenceHeader), 10, 64)
	if err != nil || resp.Header.Get(jetstream.SubjectHeader) != subject || got > seq {
		return domain.Record{}, nil, false, fmt.Errorf("direct get of the last message on %s up to %d: unexpected reply", subject, seq)
	}
	return domain.Record{Subject: subject, Sequence: got, Data: resp.Data}, resp.Header, true, nil
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
