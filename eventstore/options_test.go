package eventstore

import "time"

// WithRetry sets how often an append whose reply is lost is tried in all
// (attempts ≥ 1; default 3), how long one attempt waits for its reply
// (default 2s; the caller's context bounds it too), and the pause before the
// first retry, doubled before each next one (default 100ms).
func WithRetry(attempts int, attemptTimeout, backoff time.Duration) Option {
	return func(s *JetStream) {
		if attempts >= 1 {
			s.attempts = attempts
		}
		if attemptTimeout > 0 {
			s.attemptTimeout = attemptTimeout
		}
		if backoff >= 0 {
			s.backoff = backoff
		}
	}
}
