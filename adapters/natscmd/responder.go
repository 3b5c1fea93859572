// Package natscmd answers keyd's commands over NATS request/reply.
//
// Subjects: keyd.cmd.keys.<org>.<command> (create, revoke, set_permissions,
// update, rotate, revoke_user_keys), keyd.cmd.permissions.<command> and
// keyd.cmd.roles.<command> (define, retire), in the queue group "keyd" so
// several keyd processes share the load. A request is run only if its
// reply subject is an inbox (see ReplyAllowed): anything else (a publish
// without a reply subject, or a reply subject such as keyd.events.… or
// $JS.API.…, which would make keyd's reply land in the event stream or act
// on it) is refused unrun and unanswered, counted in
// keyd_commands_refused_total and logged at most once a second per reason.
// Every request it runs gets exactly one reply: the command's JSON
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
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/metrics"
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
//
// Conn should be a connection of its own, not the one the event store
// publishes on: the responder only subscribes to keyd.cmd.> and answers
// requests, so its NATS user needs no publish permission at all beyond
// allow_responses, and a reply can never be a write to keyd.events.>.
type Responder struct {
	Conn   *nats.Conn
	Runner *commands.Runner
	Log    *slog.Logger
	// Metrics, when set, counts refused requests
	// (keyd_commands_refused_total).
	Metrics *metrics.Metrics
	// ReplyPrefixes are reply-subject prefixes answered besides
	// DefaultReplyPrefixes (keyd's --nats-reply-prefix); each must pass
	// CheckReplyPrefix.
	ReplyPrefixes []string
	MaxInFlight   int           // default 256
	Timeout       time.Duration // per command, default 15s

	sub      *nats.Subscription
	sem      chan struct{}
	inflight sync.WaitGroup

	noReplyLog, badReplyLog, replyFailLog limitedLog
}

// DefaultReplyPrefixes are the reply subjects keyd answers on: inboxes as
// NATS clients make them (_INBOX., and _INBOX_<suffix>. for a custom inbox
// prefix such as nats.CustomInboxPrefix("_INBOX_orgA")), and the _R_.
// subjects nats-server puts on requests that arrive through a service
// import. No stream may capture these.
var DefaultReplyPrefixes = []string{"_INBOX.", "_INBOX_", "_R_."}

// ReplyAllowed reports whether keyd answers (and so runs) a request whose
// reply subject is reply: it starts with one of DefaultReplyPrefixes or
// extra, and is a plain subject (no wildcard, no space).
func ReplyAllowed(reply string, extra []string) bool {
	if reply == "" || strings.ContainsAny(reply, "*> \t\r\n") {
		return false
	}
	for _, p := range DefaultReplyPrefixes {
		if strings.HasPrefix(reply, p) {
			return true
		}
	}
	for _, p := range extra {
		if p != "" && strings.HasPrefix(reply, p) {
			return true
		}
	}
	return false
}

// reservedSubjects are subject spaces a reply-prefix may neither lie in nor
// cover: keyd's own (commands, events) and the server's ($JS.API, $KV,
// $SYS...).
var reservedSubjects = []string{"keyd.", "$"}

// CheckReplyPrefix checks an extra reply-subject prefix: a non-empty run of
// subject characters (no wildcard, no space) that can match no subject of
// keyd's (keyd.…) or of the server's ($JS.API.…, $KV.…): neither inside
// them nor a prefix of them, so "k" or "keyd.events." are refused.
func CheckReplyPrefix(p string) error {
	if p == "" || strings.ContainsAny(p, "*> \t\r\n") || strings.Contains(p, "..") || strings.HasPrefix(p, ".") {
		return fmt.Errorf("reply prefix %q must be a NATS subject prefix without wildcards or spaces, such as _REPLY_acme. or myapp.replies.", p)
	}
	for _, r := range reservedSubjects {
		if strings.HasPrefix(p, r) || strings.HasPrefix(r, p) {
			return fmt.Errorf("reply prefix %q would let replies land on %s… subjects, where keyd's events and the JetStream API are; choose one outside them", p, r)
		}
	}
	return nil
}

// Start subscribes. Requests are handled until Stop.
func (r *Responder) Start() error {
	n := r.MaxInFlight
	if n <= 0 {
		n = 256
	}
	r.sem = make(chan struct{}, n)
	sub, err := r.Conn.QueueSubscribe(Subject, QueueGroup, func(m *nats.Msg) {
		// Refused before taking a slot: a flood of them costs no command
		// capacity.
		if !r.accept(m) {
			return
		}
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
			return "", "", domain.Errorf(domain.EInvalid, "unknown key command %q; use create, revoke, set_permissions, update, rotate, suspend, resume, set_expiry or revoke_user_keys", parts[4])
		}
		return parts[3], parts[4], nil
	case len(parts) == 5 && parts[0] == "keyd" && parts[1] == "cmd" && parts[2] == "orgs":
		if err := domain.CheckOrgID(parts[3]); err != nil {
			return "", "", err
		}
		if !commands.IsOrgCommand(parts[4]) {
			return "", "", domain.Errorf(domain.EInvalid, "unknown organization command %q; use set_policy", parts[4])
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
	return "", "", domain.Errorf(domain.EInvalid, "unknown command subject %q; use keyd.cmd.keys.<org>.<command>, keyd.cmd.orgs.<org>.set_policy, keyd.cmd.permissions.<command> or keyd.cmd.roles.<command>", subject)
}

// accept reports whether m is to be run; a refused one is counted and
// logged (at most once a second per reason).
func (r *Responder) accept(m *nats.Msg) bool {
	switch {
	case m.Reply == "":
		// Nobody to answer: a publish, not a request. Nothing is run, so a
		// fire-and-forget command can't change state unseen.
		r.Metrics.RefuseCommand(metrics.RefusedNoReply)
		if ok, suppressed := r.noReplyLog.allow(time.Now()); ok {
			r.Log.Warn("command without a reply subject ignored", "subject", m.Subject, "suppressed", suppressed)
		}
		return false
	case !ReplyAllowed(m.Reply, r.ReplyPrefixes):
		// The reply would be a publish wherever the caller chose:
		// keyd.events.… (into the event stream: finding C1), $JS.API.….
		// Not run, not answered.
		r.Metrics.RefuseCommand(metrics.RefusedReplySubject)
		if ok, suppressed := r.badReplyLog.allow(time.Now()); ok {
			r.Log.Warn("command refused: its reply subject is not an inbox (_INBOX., _INBOX_, _R_. or --nats-reply-prefix)",
				"subject", m.Subject, "reply", m.Reply, "suppressed", suppressed)
		}
		return false
	}
	return true
}

func (r *Responder) handle(m *nats.Msg) {
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
		if ok, suppressed := r.replyFailLog.allow(time.Now()); ok {
			r.Log.Warn("command reply not sent", "subject", m.Subject, "err", err, "suppressed", suppressed)
		}
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
