package eventstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"
)

// EnsureBucket creates or updates the key-value bucket cfg describes and
// returns it. Like EnsureStream it never lowers the replicas of an existing
// bucket (that is an error), and it asks again while a request goes
// unanswered: on a JetStream cluster that has just formed, or while several
// keyd processes set up the same bucket at the same instant, a request can
// time out or find no responders until the meta leader is known.
func EnsureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	if cfg.Replicas < 1 || cfg.Replicas > 5 {
		return nil, fmt.Errorf("eventstore: bucket %s: replicas must be 1 to 5, not %d", cfg.Bucket, cfg.Replicas)
	}
	return withAttempts(ctx, func(ctx context.Context) (jetstream.KeyValue, error) { return ensureBucket(ctx, js, cfg) })
}

func ensureBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (jetstream.KeyValue, error) {
	existing, err := js.KeyValue(ctx, cfg.Bucket)
	switch {
	case err == nil:
		st, err := existing.Status(ctx)
		if err != nil {
			return nil, fmt.Errorf("eventstore: bucket %s status: %w", cfg.Bucket, err)
		}
		if r := st.Config().Replicas; r > cfg.Replicas {
			return nil, fmt.Errorf("eventstore: bucket %s has %d replicas; refusing to lower them to %d", cfg.Bucket, r, cfg.Replicas)
		}
	case errors.Is(err, jetstream.ErrBucketNotFound):
	default:
		return nil, fmt.Errorf("eventstore: looking up bucket %s: %w", cfg.Bucket, err)
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("eventstore: the server refused to create or update bucket %s: %w", cfg.Bucket, err)
	}
	return kv, nil
}
