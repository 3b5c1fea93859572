// Package eventstore implements domain.EventStore and domain.IdempotencyStore:
// on NATS JetStream (the real stores) and in memory (for tests of the rules).
// It also holds the one way the stream's readers (projector, rebuild,
// verifiers) follow KEYD_EVENTS from a sequence: OpenEvents, CheckFrom and
// Tail (tail.go).
//
// Every store here passes the conformance suite in eventstore/storetest.
// Nothing in this package logs, and no error it returns contains a message
// payload.
package eventstore

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// DuplicateWindow is the stream's Msg-Id deduplication window: an append
// retried with the same MsgIDs within it is never stored twice. Beyond it,
// idempotency rests on the expected-sequence guard and the command id in the
// event (the domain's job).
const DuplicateWindow = 2 * time.Minute

// StreamConfig returns the configuration of the KEYD_EVENTS stream: every
// event on keyd.events.> kept forever on file storage, no limits (and if one
// is ever set, DiscardNew makes publishes fail instead of dropping old
// events), no deletes or purges, direct gets for one-lookup loads, atomic
// batch publish for multi-key commands, a 2-minute dedupe window.
func StreamConfig(replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               domain.StreamName,
		Description:        "keyd events: the source of truth",
		Subjects:           []string{domain.EventSubjects},
		Storage:            jetstream.FileStorage,
		Retention:          jetstream.LimitsPolicy,
		MaxMsgs:            -1,
		MaxBytes:           -1,
		MaxAge:             0,
		MaxMsgsPerSubject:  -1,
		MaxMsgSize:         -1,
		MaxConsumers:       -1,
		Discard:            jetstream.DiscardNew,
		Duplicates:         DuplicateWindow,
		DenyDelete:         true,
		DenyPurge:          true,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		Replicas:           replicas,
	}
}

// EnsureStream creates the KEYD_EVENTS stream (see StreamConfig) or brings an
// existing one to that configuration, and returns it. It is idempotent and
// safe to run from several instances at once.
//
// It never lowers the replica count of an existing stream: asking for fewer
// replicas than the stream has is an error, and the stream is left alone.
// An update the server refuses (for example a change of storage type) is
// returned as an error naming the stream; the stream is then unchanged.
func EnsureStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	if replicas < 1 || replicas > 5 {
		return nil, fmt.Errorf("eventstore: stream %s: replicas must be 1 to 5, not %d", domain.StreamName, replicas)
	}
	return withAttempts(ctx, func(ctx context.Context) (jetstream.Stream, error) { return ensureStream(ctx, js, replicas) })
}

func ensureStream(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.Stream, error) {
	cfg := StreamConfig(replicas)
	existing, err := js.Stream(ctx, domain.StreamName)
	switch {
	case err == nil:
		info := existing.CachedInfo()
		if info != nil && info.Config.Replicas > replicas {
			return nil, fmt.Errorf("eventstore: stream %s has %d replicas; refusing to lower them to %d (change replicas deliberately, not at start-up)",
				domain.StreamName, info.Config.Replicas, replicas)
		}
	case errors.Is(err, jetstream.ErrStreamNotFound):
		// Create rather than CreateOrUpdate: on a JetStream cluster, two
		// processes starting together that both send an update for a stream
		// that does not exist yet hang until their deadline (seen with
		// nats-server 2.15.2), while concurrent creates of the same config
		// are answered at once.
		// A new stream: every event is signed.
		cfg.Metadata = map[string]string{MetadataSignedFrom: "1"}
		st, cerr := js.CreateStream(ctx, cfg)
		if cerr == nil {
			return st, nil
		}
		if !errors.Is(cerr, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("eventstore: the server refused to create stream %s: %w", domain.StreamName, cerr)
		}
		// Another process created it first: fall through to the update.
		if existing, err = js.Stream(ctx, domain.StreamName); err != nil {
			return nil, fmt.Errorf("eventstore: looking up stream %s: %w", domain.StreamName, err)
		}
	default:
		return nil, fmt.Errorf("eventstore: looking up stream %s: %w", domain.StreamName, err)
	}
	cfg.Metadata = signingMetadata(existing.CachedInfo())
	st, err := js.UpdateStream(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("eventstore: the server refused to update stream %s: %w", domain.StreamName, err)
	}
	return st, nil
}

// signingMetadata is the metadata of an existing stream with the signing
// marker (MetadataSignedFrom) kept, or, if it has none (a stream written by
// a keyd from before signing), set to the sequence after its last message:
// the events already stored load unsigned, every later one must be signed.
func signingMetadata(info *jetstream.StreamInfo) map[string]string {
	md := map[string]string{}
	var last uint64
	if info != nil {
		for k, v := range info.Config.Metadata {
			md[k] = v
		}
		last = info.State.LastSeq
	}
	if SignedFromOf(jetstream.StreamConfig{Metadata: md}) == 0 {
		md[MetadataSignedFrom] = strconv.FormatUint(last+1, 10)
	}
	return md
}

// attemptTimeout bounds one JetStream API request at start-up.
const attemptTimeout = 3 * time.Second

// withAttempts runs f with a deadline of attemptTimeout per attempt, again
// and again while an attempt times out or finds no responders and ctx
// allows. On a JetStream cluster an API request can go unanswered (during a
// leader election, or when several processes set up the same stream at the
// same instant: seen with nats-server 2.15.2, where some of three processes
// starting together waited forever); a new request is then answered.
func withAttempts[T any](ctx context.Context, f func(context.Context) (T, error)) (T, error) {
	backoff := 50 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		v, err := f(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !(errors.Is(err, context.DeadlineExceeded) ||
			errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
			noPeersYet(err)) {
			return v, err
		}
		select {
		case <-ctx.Done():
			return v, err
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// noPeersYet reports JetStream's "no suitable peers for placement"
// (err_code 10005): on a cluster that is still forming, the meta leader does
// not know every peer yet; asking again a moment later succeeds.
func noPeersYet(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == 10005
}
