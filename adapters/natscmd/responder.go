// Package natscmd answers keyd's commands over NATS request/reply.
//
// Subjects: keyd.cmd.keys.<org>.<command> (create, revoke, set_permissions,
// update, rotate, revoke_user_keys), keyd.cmd.permissions.<command> and
// keyd.cmd.roles.<command> (define, retire), in the
// queue group "keyd" so several keyd processes share the load. Every request
// that carries a reply subject gets exactly one reply: the command's JSON
// result, or {"error": {"code", "message"}} (domain.ErrorBody). A request
// may carry the header Keyd-Command-Id (commands.CommandIDHeader): retrying
// it with the same id never appends twice. Internal and unavailable errors
// are logged here, once per request, never with payloads.
package natscmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/domain"
)

// Subject and queue group the responder listens on.
const (
	Subject    = "keyd.cmd.>"
	QueueGroup = "keyd"
	// ErrorCodeHeader is set on error replies, so clients can branch without
	// parsing the body.
	ErrorCodeHeader = "Keyd-Error-Code"
)

// Responder subscribes to the command subjects and runs each request on the
// Runner, up to MaxInFlight at once.
type Responder struct {
	Conn        *nats.Conn
	Runner      *commands.Runner
	Log         *slog.Logger
	MaxInFlight int           // default 256
	Timeout     time.Duration // per command, default 15s

	sub      *nats.Subscription
	sem      chan struct{}
	inflight sync.WaitGroup
}

// Start subscribes. Requests are handled until Stop.
func (r *Responder) Start() error {
	n := r.MaxInFlight
	if n <= 0 {
		n = 256
	}
	r.sem = make(chan struct{}, n)
	sub, err := r.Conn.QueueSubscribe(Subject, QueueGroup, func(m *nats.Msg) {
		r.sem <- struct{}{}
		r.inflight.Add(1)
		go func() {
			defer func() { <-r.sem; r.inflight.Done() }()
			r.handle(m)
		}()
	})
	if err != nil {
		return err
	}
	// Commands are small; a burst must not be dropped as a slow consumer.
	if err := sub.SetPendingLimits(100_000, 256<<20); err != nil {
		return err
	}
	r.sub = sub
	return r.Conn.Flush()
}

// Stop stops taking requests and waits (until ctx ends) for those in flight.
func (r *Responder) Stop(ctx context.Context) {
	if r.sub != nil {
		_ = r.sub.Drain()
	}
	done := make(chan struct{})
	go func() { r.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// Parse splits a command subject into organization (empty for catalog
// commands) and command name.
func Parse(subject string) (org, name string, err error) {
	parts := strings.Split(subject, ".")
	switch {
	case len(parts) == 5 && parts[0] == "keyd" && parts[1] == "cmd" && parts[2] == "keys":
		if err := domain.CheckOrgID(parts[3]); err != nil {
			return "", "", err
		}
		if !commands.IsKeyCommand(parts[4]) {
			return "", "", domain.Errorf(domain.EInvalid, "unknown key command %q; use create, revoke, set_permissions, update, rotate or revoke_user_keys", parts[4])
		}
		return parts[3], parts[4], nil
	case len(parts) == 4 && parts[0] == "keyd" && parts[1] == "cmd" && parts[2] == "permissions":
		if !commands.IsCatalogCommand(parts[3]) {
			return "", "", domain.Errorf(domain.EInvalid, "unknown permission command %q; use define or retire", parts[3])
		}
		return "", parts[3], nil
	case len(parts) == 4 && parts[0] == "keyd" && parts[1] == "cmd" && parts[2] == "roles":
		name := commands.RoleCommand(parts[3])
		if name == "" {
			return "", "", domain.Errorf(domain.EInvalid, "unknown role command %q; use define or retire", parts[3])
		}
		return "", name, nil
	}
	return "", "", domain.Errorf(domain.EInvalid, "unknown command subject %q; use keyd.cmd.keys.<org>.<command>, keyd.cmd.permissions.<command> or keyd.cmd.roles.<command>", subject)
}

func (r *Responder) handle(m *nats.Msg) {
	if m.Reply == "" {
		// Nobody to answer: a publish, not a request. Nothing is run, so a
		// fire-and-forget command can't change state unseen.
		r.Log.Warn("command without a reply subject ignored", "subject", m.Subject)
		return
	}
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	reply, err := r.run(ctx, m)
	out := nats.NewMsg(m.Reply)
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	enc.SetEscapeHTML(false) // NATS replies are not HTML: keep "<org>" readable
	if err == nil {
		if eerr := enc.Encode(reply); eerr != nil {
			body.Reset()
			err = domain.Wrap(eerr, domain.EInternal, "internal error")
		}
	}
	if err != nil {
		r.logFailure(m.Subject, err)
		_ = enc.Encode(domain.ErrorBodyOf(err))
		out.Header.Set(ErrorCodeHeader, domain.ErrorCode(err))
	}
	out.Data = bytes.TrimRight(body.Bytes(), "\n")
	if err := m.RespondMsg(out); err != nil {
		r.Log.Warn("command reply not sent", "subject", m.Subject, "err", err)
	}
}

// logFailure logs a failed command if it is internal or unavailable (the
// others are the client's business), with its internal cause.
func (r *Responder) logFailure(subject string, err error) {
	code := domain.ErrorCode(err)
	if code != domain.EInternal && code != domain.EUnavailable {
		return
	}
	attrs := []slog.Attr{slog.String("subject", subject), slog.String("code", code), slog.Any("err", err)}
	var de *domain.Error
	if errors.As(err, &de) && de.Err != nil {
		attrs = append(attrs, slog.Any("cause", de.Err))
	}
	r.Log.LogAttrs(context.Background(), slog.LevelError, "command failed", attrs...)
}

func (r *Responder) run(ctx context.Context, m *nats.Msg) (any, error) {
	// The size first: an oversized request is too_large on any subject.
	if err := commands.CheckSize(m.Data); err != nil {
		return nil, err
	}
	org, name, err := Parse(m.Subject)
	if err != nil {
		return nil, err
	}
	var t commands.Transport
	if m.Header != nil {
		t.CommandID = m.Header.Get(commands.CommandIDHeader)
	}
	return r.Runner.Run(ctx, name, org, m.Data, t)
}
