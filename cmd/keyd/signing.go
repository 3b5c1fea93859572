package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// Authentic events in keyd's processes: the event store signs with the key
// pair derived from KEYD_SECRET, and every reader (the command side's loads,
// the projector, the verifier) sets aside what that key does not vouch for,
// counted in keyd_events_rejected_total{reader, reason} and logged at most
// once a second per reader.

// Readers of keyd_events_rejected_total.
const (
	readerCommands  = "commands" // the command side's loads (Last, Next): counted each time it meets one
	readerProjector = "projector"
	readerVerifier  = "verifier"
)

// rejections is keyd_events_rejected_total and its log.
type rejections struct {
	counter *prometheus.CounterVec
	log     *slog.Logger
	mu      sync.Mutex
	last    map[string]time.Time
}

func newRejections(log *slog.Logger) *rejections {
	r := &rejections{
		counter: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_events_rejected_total",
			Help: "Stream messages set aside, never applied: not signed by keyd (unsigned, bad_signature) or breaking their aggregate's history (version, revoked), by reader.",
		}, []string{"reader", "reason"}),
		log:  log,
		last: map[string]time.Time{},
	}
	for _, reader := range []string{readerCommands, readerProjector, readerVerifier} {
		for _, reason := range []string{eventstore.RejectUnsigned, eventstore.RejectBadSignature, eventstore.RejectVersion, eventstore.RejectRevoked} {
			r.counter.WithLabelValues(reader, reason)
		}
	}
	return r
}

// hook returns the callback of one reader.
func (r *rejections) hook(reader string) func(eventstore.Rejection) {
	return func(rj eventstore.Rejection) {
		r.counter.WithLabelValues(reader, rj.Reason).Inc()
		r.mu.Lock()
		now := time.Now()
		logIt := now.Sub(r.last[reader]) >= time.Second
		if logIt {
			r.last[reader] = now
		}
		r.mu.Unlock()
		if logIt {
			r.log.Warn("set aside a stream message: not signed by keyd, or breaking its aggregate's history; it is not applied",
				"reader", reader, "sequence", rj.Sequence, "subject", rj.Subject, "reason", rj.Reason)
		}
	}
}

// runVerifierCredential prints the verifier credential (kvc_…) of the
// deployment secret: KEYD_SECRET (--secret), or keyd dev's kept secret in
// --data.
func (m *Main) runVerifierCredential(_ context.Context, args []string) error {
	var c Config
	fs := newFlagSet("verifier-credential", &c, "secret", "data")
	fs.SetOutput(m.Stderr)
	if err := c.parse(fs, args, m.Getenv); err != nil {
		return err
	}
	secret := c.Secret
	if secret == "" {
		b, err := os.ReadFile(filepath.Join(c.Data, "secret"))
		if err != nil {
			return errors.New("keyd verifier-credential needs the deployment secret: set KEYD_SECRET (or --secret), or --data for keyd dev's")
		}
		secret = strings.TrimSpace(string(b))
	}
	if len(secret) < 32 {
		return errors.New("the deployment secret (--secret / KEYD_SECRET) must be at least 32 bytes")
	}
	fmt.Fprintln(m.Stdout, domain.NewVerifierCredential([]byte(secret)).String())
	return nil
}

// eventKeyOf returns keyd's public event key for a process that reads the
// stream: from the deployment secret, else from KEYD_VERIFIER_CREDENTIAL.
func eventKeyOf(secret string, getenv func(string) string) (domain.EventKey, error) {
	if secret != "" {
		return domain.NewEventSigner([]byte(secret)).PublicKey(), nil
	}
	if cred := getenv("KEYD_VERIFIER_CREDENTIAL"); cred != "" {
		c, err := domain.ParseVerifierCredential(cred)
		if err != nil {
			return domain.EventKey{}, fmt.Errorf("KEYD_VERIFIER_CREDENTIAL: %w", err)
		}
		return c.EventKey(), nil
	}
	return domain.EventKey{}, errors.New("checking the events' signatures needs KEYD_SECRET (--secret) or KEYD_VERIFIER_CREDENTIAL")
}
