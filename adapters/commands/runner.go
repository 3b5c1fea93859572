// Package commands is the one command path of keyd: the NATS responder and
// the HTTP management routes both hand their raw JSON payload to Runner.Run,
// with what the transport knows (Transport), and Run decodes it strictly
// (Decode), runs it on the domain service, records metrics, and, for
// commands that take access away (revoke, rotate, set_permissions), waits
// until the local verifier has applied the event before replying. Decode,
// MaxBytes and CommandIDHeader are the wire rules both transports share.
// Commands that make a key (create, rotate) wait the same way, so that the
// new key verifies on this process as soon as the reply arrives.
package commands

import (
	"context"
	"log/slog"
	"strings"
	"time"

	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
)

// Command names, as in the NATS subjects keyd.cmd.keys.<org>.<name> and
// keyd.cmd.permissions.<name>.
const (
	Create         = "create"
	Revoke         = "revoke"
	SetPermissions = "set_permissions"
	Update         = "update"
	Rotate         = "rotate"
	Define         = "define"
	Retire         = "retire"
	Suspend        = "suspend"
	Resume         = "resume"
	SetExpiry      = "set_expiry"
	// SetPolicy is keyd.cmd.orgs.<org>.set_policy (IsOrgCommand).
	SetPolicy = "set_policy"
	// RevokeUserKeys is keyd.cmd.keys.<org>.revoke_user_keys.
	RevokeUserKeys = "revoke_user_keys"
	// DefineRole and RetireRole are keyd.cmd.roles.define and
	// keyd.cmd.roles.retire (RoleCommand maps the subject's name).
	DefineRole = "roles.define"
	RetireRole = "roles.retire"
)

// IsOrgCommand reports whether name is an organization command
// (keyd.cmd.orgs.<org>.<name>).
func IsOrgCommand(name string) bool { return name == SetPolicy }

// RoleCommand returns the Runner's name of the role command called name in
// its subject (keyd.cmd.roles.<name>), or "" for none.
func RoleCommand(name string) string {
	switch name {
	case Define:
		return DefineRole
	case Retire:
		return RetireRole
	}
	return ""
}

// IsRoleCommand reports whether name (a Runner name) is a role command.
func IsRoleCommand(name string) bool { return name == DefineRole || name == RetireRole }

// IsKeyCommand reports whether name is a key command (it needs an org).
func IsKeyCommand(name string) bool {
	switch name {
	case Create, Revoke, SetPermissions, Update, Rotate, Suspend, Resume, SetExpiry, RevokeUserKeys:
		return true
	}
	return false
}

// IsCatalogCommand reports whether name is a permission catalog command.
func IsCatalogCommand(name string) bool { return name == Define || name == Retire }

// Transport is what the transport knows about a command besides its
// payload: the key id or slug from an HTTP path, the actor of a widget
// session, the admin's default actor, a client-given command id. Empty
// fields change nothing.
type Transport struct {
	// KeyID and Slug are the command's key id or slug from the path; a body
	// that names another is invalid_argument.
	KeyID string
	Slug  string
	// Actor, when set, is recorded whatever the body says (a widget
	// session's user).
	Actor *domain.Actor
	// DefaultActor is recorded when neither Actor nor the body names one
	// (the admin token's actor on HTTP).
	DefaultActor *domain.Actor
	// CommandID is the Keyd-Command-Id header (CommandIDHeader).
	CommandID string
	// UserID is revoke_user_keys' user id from the path, as KeyID.
	UserID string
	// Scope limits the keys the command may touch (a widget session's).
	Scope domain.Scope
}

// Runner runs commands. WaitApplied, when set, is called with the sequence
// of a create, revoke, rotate, set_permissions or retire reply before it is
// returned, so a verify on this process right after the reply already sees
// the change (a new key accepted, a revoked one refused).
type Runner struct {
	Service     *domain.Service
	Metrics     *metrics.Metrics
	WaitApplied func(ctx context.Context, seq uint64) error
	// Log receives the one thing the Runner logs: a warning when the local
	// verifier misses the wait after a stored create, set_permissions,
	// rotate or retire, whose reply is still a success (nil: not logged). Failed
	// commands are logged by their transport.
	Log *slog.Logger
	// StoreConnected, when set, reports whether the event store's NATS
	// connection is up. While it is not, every command answers
	// unavailable at once (storeDown) instead of waiting out its deadline
	// on a store that cannot answer.
	StoreConnected func() bool
}

// Run decodes payload as the named command and runs it for org (ignored for
// catalog commands). The reply is one of the domain result types, ready to
// be marshalled. Errors are *domain.Error values (unknown command:
// invalid_argument; oversized payload: too_large; and whatever the service
// returns). Run logs no errors: each transport logs its own replies.
func (r *Runner) Run(ctx context.Context, name, org string, payload []byte, t Transport) (reply any, err error) {
	start := time.Now()
	defer func() {
		outcome := "ok"
		if code := domain.ErrorCode(err); code != "" {
			outcome = code
		}
		if r.Metrics != nil && (IsKeyCommand(name) || IsCatalogCommand(name) || IsOrgCommand(name) || IsRoleCommand(name)) {
			r.Metrics.ObserveCommand(name, outcome, time.Since(start))
		}
	}()
	if err := r.storeDown(); err != nil {
		return nil, err
	}
	switch name {
	case Create:
		var c domain.CreateKey
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		// Read-your-create: the reply waits until this process's verifier
		// accepts the new key, so a key used at once is never not_found.
		res, err := r.Service.CreateKey(ctx, org, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case Revoke:
		var c domain.RevokeKey
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.KeyID, t.KeyID, "key_id"); err != nil {
			return nil, err
		}
		res, err := r.Service.RevokeKey(ctx, org, c)
		if err == nil && r.WaitApplied != nil {
			// A revoke reply promises that this process already refuses the
			// key; revoking again is harmless, so say "retry" rather than
			// reply before the local verifier has applied it.
			if werr := r.WaitApplied(ctx, res.Sequence); werr != nil {
				return nil, domain.Wrap(werr, domain.EUnavailable, "key %s is revoked (stream sequence %d), but this process's verifier has not applied it yet; retry the revoke", c.KeyID, res.Sequence)
			}
			return res, nil
		}
		return res, err
	case SetPermissions:
		var c domain.SetPermissions
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.KeyID, t.KeyID, "key_id"); err != nil {
			return nil, err
		}
		res, err := r.Service.SetPermissions(ctx, org, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case Update:
		var c domain.UpdateKey
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.KeyID, t.KeyID, "key_id"); err != nil {
			return nil, err
		}
		return r.Service.UpdateKey(ctx, org, c)
	case Rotate:
		var c domain.RotateKey
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.KeyID, t.KeyID, "key_id"); err != nil {
			return nil, err
		}
		res, err := r.Service.RotateKey(ctx, org, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case Suspend:
		var c domain.SuspendKey
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.KeyID, t.KeyID, "key_id"); err != nil {
			return nil, err
		}
		res, err := r.Service.SuspendKey(ctx, org, c)
		if err == nil && r.WaitApplied != nil {
			// Like a revoke reply: this process already refuses the key.
			if werr := r.WaitApplied(ctx, res.Sequence); werr != nil {
				return nil, domain.Wrap(werr, domain.EUnavailable, "key %s is suspended (stream sequence %d), but this process's verifier has not applied it yet; retry the suspend", c.KeyID, res.Sequence)
			}
		}
		return res, err
	case Resume:
		var c domain.ResumeKey
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.KeyID, t.KeyID, "key_id"); err != nil {
			return nil, err
		}
		res, err := r.Service.ResumeKey(ctx, org, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case SetExpiry:
		var c domain.SetExpiry
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.KeyID, t.KeyID, "key_id"); err != nil {
			return nil, err
		}
		res, err := r.Service.SetKeyExpiry(ctx, org, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case SetPolicy:
		var c domain.SetPolicy
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		res, err := r.Service.SetPolicy(ctx, org, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case Define:
		var c domain.DefinePermission
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.Slug, t.Slug, "slug"); err != nil {
			return nil, err
		}
		return r.Service.DefinePermission(ctx, c)
	case Retire:
		var c domain.RetirePermission
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.Slug, t.Slug, "slug"); err != nil {
			return nil, err
		}
		res, err := r.Service.RetirePermission(ctx, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case RevokeUserKeys:
		var c domain.RevokeUserKeys
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.UserID, t.UserID, "user_id"); err != nil {
			return nil, err
		}
		res, err := r.Service.RevokeUserKeys(ctx, org, c)
		if err == nil && r.WaitApplied != nil && res.Sequence > 0 {
			// As a revoke reply: this process already refuses the keys.
			if werr := r.WaitApplied(ctx, res.Sequence); werr != nil {
				return nil, domain.Wrap(werr, domain.EUnavailable, "the keys of user %s are revoked (stream sequence %d), but this process's verifier has not applied it yet; retry the command", c.UserID, res.Sequence)
			}
		}
		if err != nil {
			return nil, err
		}
		return res, nil
	case DefineRole:
		var c domain.DefineRole
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.Slug, t.Slug, "slug"); err != nil {
			return nil, err
		}
		res, err := r.Service.DefineRole(ctx, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	case RetireRole:
		var c domain.RetireRole
		if err := decode(payload, &c, t); err != nil {
			return nil, err
		}
		if err := fromPath(&c.Slug, t.Slug, "slug"); err != nil {
			return nil, err
		}
		res, err := r.Service.RetireRole(ctx, c)
		return r.replyWhenApplied(ctx, res, res.Sequence, err)
	}
	return nil, domain.Errorf(domain.EInvalid, "unknown command %q; commands are create, revoke, set_permissions, update, rotate, suspend, resume, set_expiry, revoke_user_keys (keyd.cmd.keys.<org>.<command>), set_policy (keyd.cmd.orgs.<org>.set_policy) and define, retire (keyd.cmd.permissions.<command>, keyd.cmd.roles.<command>)", name)
}

// storeDown returns unavailable while the event store's NATS connection is
// known to be down (StoreConnected), nil otherwise. Nothing is stored then,
// so a retry is safe.
func (r *Runner) storeDown() error {
	if r.StoreConnected == nil || r.StoreConnected() {
		return nil
	}
	return domain.Errorf(domain.EUnavailable, "the event store (NATS) is disconnected; nothing was stored; retry once it is back")
}

// replyWhenApplied waits for the local verifier to apply seq, then returns
// the reply res (or err, without waiting). The event is stored either way,
// and these commands are not harmless to repeat, so a verifier that does not
// catch up in time is logged as a warning, not reported.
func (r *Runner) replyWhenApplied(ctx context.Context, res any, seq uint64, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	if r.WaitApplied != nil && seq > 0 {
		if werr := r.WaitApplied(ctx, seq); werr != nil && r.Log != nil {
			r.Log.Warn("local verifier did not apply the event in time", "sequence", seq, "err", werr)
		}
	}
	return res, nil
}

// command is what the seven commands share: their embedded domain.Meta.
type command interface{ CommandMeta() *domain.Meta }

// decode strictly decodes payload into cmd and sets its actor and command
// id from t.
func decode(payload []byte, cmd command, t Transport) error {
	if err := Decode(payload, cmd); err != nil {
		return err
	}
	m := cmd.CommandMeta()
	m.Actor, m.CommandID, m.Scope = actor(m.Actor, t), t.CommandID, t.Scope
	return nil
}

// fromPath fills the command's field (its JSON name: key_id, slug) from the
// path's value; the body may repeat it but not differ. The field is
// required.
func fromPath(field *string, path, name string) error {
	if path != "" {
		if *field != "" && *field != path {
			return domain.Errorf(domain.EInvalid, "%s in the body (%q) differs from the %s in the path (%q)", name, *field, strings.ReplaceAll(name, "_", " "), path)
		}
		*field = path
	}
	if *field == "" {
		return domain.Errorf(domain.EInvalid, "%s is required", name)
	}
	return nil
}

// actor is the actor to record: the transport's, else the body's, else the
// transport's default.
func actor(body *domain.Actor, t Transport) *domain.Actor {
	switch {
	case t.Actor != nil:
		return t.Actor
	case body != nil:
		return body
	}
	return t.DefaultActor
}
