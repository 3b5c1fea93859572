package testenv

import (
	"context"
	"errors"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StreamReady waits until the JetStream stream named stream can be used
// through every server in urls, and fails t if one server does not get
// there within 30 s.
//
// A stream that a cluster has just created answers its create request as
// soon as its leader is elected (nats-server sends the reply from
// processStreamLeaderChange), but at that moment:
//
//   - the followers may still be catching up, and a follower only starts
//     answering direct gets once it is current (monitorStream);
//   - the leader's subscriptions to the stream's subjects and to its direct
//     get subject travel to the other servers over the routes on their own,
//     so a publish or a direct get sent through another server may find no
//     interest yet ("no response from stream", "no responders").
//
// So, through each server in turn, StreamReady requires a stream info with
// a leader and every replica current, a publish to subject with an expected
// last sequence no stream can have (the leader answers it with error 10071
// and stores nothing), and, if the stream allows direct gets, a direct get
// of subject's last message (answered, found or not). subject must be one
// of the stream's subjects. On a single server the same checks pass at once.
func StreamReady(t testing.TB, urls []string, stream, subject string) {
	t.Helper()
	for _, u := range urls {
		nc, err := nats.Connect(u, nats.Name(t.Name()+" StreamReady"))
		if err != nil {
			t.Fatalf("testenv: connect to %s: %v", u, err)
		}
		js, err := jetstream.New(nc)
		if err != nil {
			nc.Close()
			t.Fatalf("testenv: jetstream on %s: %v", u, err)
		}
		var last error
		perr := poll(natsStartTimeout, func() bool {
			last = streamAnswers(js, stream, subject)
			return last == nil
		})
		nc.Close()
		if perr != nil {
			t.Fatalf("testenv: stream %s is not usable through %s: %v (%v)", stream, u, last, perr)
		}
	}
}

// streamAnswers makes one round of StreamReady's checks through js and
// returns why the stream is not usable yet, or nil.
func streamAnswers(js jetstream.JetStream, stream, subject string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream info: %w", err)
	}
	info := st.CachedInfo()
	if c := info.Cluster; c != nil && info.Config.Replicas > 1 {
		if c.Leader == "" {
			return errors.New("no stream leader yet")
		}
		if len(c.Replicas) != info.Config.Replicas-1 {
			return fmt.Errorf("leader %s has %d followers, want %d", c.Leader, len(c.Replicas), info.Config.Replicas-1)
		}
		for _, r := range c.Replicas {
			if !r.Current || r.Offline {
				return fmt.Errorf("replica %s is not current (offline %t, lag %d)", r.Name, r.Offline, r.Lag)
			}
		}
	}
	_, err = js.Publish(ctx, subject, nil, jetstream.WithExpectLastSequence(math.MaxUint64))
	var apiErr *jetstream.APIError
	switch {
	case err == nil:
		return fmt.Errorf("a publish to %s expecting last sequence %d was stored", subject, uint64(math.MaxUint64))
	case !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence:
		return fmt.Errorf("publish: %w", err)
	}
	if info.Config.AllowDirect {
		if _, err := st.GetLastMsgForSubject(ctx, subject); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("direct get: %w", err)
		}
	}
	return nil
}
