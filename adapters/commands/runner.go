// Package commands is the one command path of keyd: the NATS responder and
// the HTTP management routes both hand their raw JSON payload to Runner.Run,
// which decodes it strictly, runs it on the domain service, records metrics,
// and, for commands that take access away (revoke, rotate, set_permissions),
// waits until the local verifier has applied the event before replying.
package commands

import (
	"context"
	"log/slog"
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
)

// IsKeyCommand reports whether name is a key command (it needs an org).
func IsKeyCommand(name string) bool {
	switch name {
	case Create, Revoke, SetPermissions, Update, Rotate:
		return true
	}
	return false
}

// IsCatalogCommand reports whether name is a permission catalog command.
func IsCatalogCommand(name string) bool { return name == Define || name == Retire }

// Override carries what the transport knows better than the payload: the
// key id or slug from an HTTP path, the actor of a widget session, a
// client-given command id. Empty fields override nothing.
type Override struct {
	KeyID     string
	Slug      string
	Actor     *domain.Actor
	CommandID string
}

// Runner runs commands. WaitApplied, when set, is called with the sequence
// of a revoke, rotate or set_permissions reply before it is returned, so a
// verify on this process right after the reply already sees the change.
type Runner struct {
	Service     *domain.Service
	Metrics     *metrics.Metrics
	WaitApplied func(ctx context.Context, seq uint64) error
	Log         *slog.Logger
}

// Run decodes payload as the named command and runs it for org (ignored for
// catalog commands). The reply is one of the domain result types, ready to
// be marshalled. Errors are *domain.Error values (unknown command:
// invalid_argument; oversized payload: too_large; and whatever the service
// returns); internal failures are logged here, without payloads.
func (r *Runner) Run(ctx context.Context, name, org string, payload []byte, o Override) (reply any, err error) {
	start := time.Now()
	defer func() {
		code := domain.ErrorCode(err)
		outcome := "ok"
		if code != "" {
			outcome = code
		}
		if r.Metrics != nil && (IsKeyCommand(name) || IsCatalogCommand(name)) {
			r.Metrics.ObserveCommand(name, outcome, time.Since(start))
		}
		if code == domain.EInternal || code == domain.EUnavailable {
			if r.Log != nil {
				r.Log.Error("command failed", "command", name, "org", org, "code", code, "err", err)
			}
		}
	}()
	switch name {
	case Create:
		var c domain.CreateKey
		if err := decode(payload, &c, o); err != nil {
			return nil, err
		}
		return r.Service.CreateKey(ctx, org, c)
	case Revoke:
		var c domain.RevokeKey
		if err := decodeKey(payload, &c, &c.KeyID, o); err != nil {
			return nil, err
		}
		res, err := r.Service.RevokeKey(ctx, org, c)
		if err == nil && r.WaitApplied != nil {
			// A revoke reply promises that this process already refuses the
			// key; revoking again is harmless, so say "retry" rather than
			// reply before the local verifier has applied it.
			if werr := r.WaitApplied(ctx, res.Sequence); werr != nil {
				return nil, domain.Errorf(domain.EUnavailable, "key %s is revoked (stream sequence %d), but this process's verifier has not applied it yet; retry the revoke", c.KeyID, res.Sequence)
			}
			return res, nil
		}
		return res, err
	case SetPermissions:
		var c domain.SetPermissions
		if err := decodeKey(payload, &c, &c.KeyID, o); err != nil {
			return nil, err
		}
		res, err := r.Service.SetPermissions(ctx, org, c)
		return r.waited(ctx, res, res.Sequence, err)
	case Update:
		var c domain.UpdateKey
		if err := decodeKey(payload, &c, &c.KeyID, o); err != nil {
			return nil, err
		}
		return r.Service.UpdateKey(ctx, org, c)
	case Rotate:
		var c domain.RotateKey
		if err := decodeKey(payload, &c, &c.KeyID, o); err != nil {
			return nil, err
		}
		res, err := r.Service.RotateKey(ctx, org, c)
		return r.waited(ctx, res, res.Sequence, err)
	case Define:
		var c domain.DefinePermission
		if err := decodeSlug(payload, &c, &c.Slug, o); err != nil {
			return nil, err
		}
		return r.Service.DefinePermission(ctx, c)
	case Retire:
		var c domain.RetirePermission
		if err := decodeSlug(payload, &c, &c.Slug, o); err != nil {
			return nil, err
		}
		res, err := r.Service.RetirePermission(ctx, c)
		return r.waited(ctx, res, res.Sequence, err)
	}
	return nil, domain.Errorf(domain.EInvalid, "unknown command %q; commands are create, revoke, set_permissions, update, rotate (keyd.cmd.keys.<org>.<command>) and define, retire (keyd.cmd.permissions.<command>)", name)
}

// waited waits for the local verifier to apply seq before replying. The
// event is stored either way, and these commands are not harmless to repeat,
// so a verifier that does not catch up in time is logged, not reported.
func (r *Runner) waited(ctx context.Context, res any, seq uint64, err error) (any, error) {
	if err != nil {
		return nil, err
	}
	if r.WaitApplied != nil && seq > 0 {
		if werr := r.WaitApplied(ctx, seq); werr != nil {
			// The event is stored; only the local confirmation is missing.
			if r.Log != nil {
				r.Log.Warn("local verifier did not apply the event in time", "sequence", seq, "err", werr)
			}
		}
	}
	return res, nil
}

func decode(payload []byte, v any, o Override) error {
	if err := domain.DecodeCommand(payload, v); err != nil {
		return err
	}
	applyCommon(v, o)
	return nil
}

func decodeKey(payload []byte, v any, keyID *string, o Override) error {
	if err := domain.DecodeCommand(payload, v); err != nil {
		return err
	}
	if o.KeyID != "" {
		if *keyID != "" && *keyID != o.KeyID {
			return domain.Errorf(domain.EInvalid, "key_id in the body (%q) differs from the key id in the path (%q)", *keyID, o.KeyID)
		}
		*keyID = o.KeyID
	}
	if *keyID == "" {
		return domain.Errorf(domain.EInvalid, "key_id is required")
	}
	applyCommon(v, o)
	return nil
}

func decodeSlug(payload []byte, v any, slug *string, o Override) error {
	if err := domain.DecodeCommand(payload, v); err != nil {
		return err
	}
	if o.Slug != "" {
		if *slug != "" && *slug != o.Slug {
			return domain.Errorf(domain.EInvalid, "slug in the body (%q) differs from the slug in the path (%q)", *slug, o.Slug)
		}
		*slug = o.Slug
	}
	if *slug == "" {
		return domain.Errorf(domain.EInvalid, "slug is required")
	}
	applyCommon(v, o)
	return nil
}

func applyCommon(v any, o Override) {
	switch c := v.(type) {
	case *domain.CreateKey:
		c.Actor, c.CommandID = actor(c.Actor, o), o.CommandID
	case *domain.RevokeKey:
		c.Actor, c.CommandID = actor(c.Actor, o), o.CommandID
	case *domain.SetPermissions:
		c.Actor, c.CommandID = actor(c.Actor, o), o.CommandID
	case *domain.UpdateKey:
		c.Actor, c.CommandID = actor(c.Actor, o), o.CommandID
	case *domain.RotateKey:
		c.Actor, c.CommandID = actor(c.Actor, o), o.CommandID
	case *domain.DefinePermission:
		c.Actor, c.CommandID = actor(c.Actor, o), o.CommandID
	case *domain.RetirePermission:
		c.Actor, c.CommandID = actor(c.Actor, o), o.CommandID
	}
}

func actor(given *domain.Actor, o Override) *domain.Actor {
	if o.Actor != nil {
		return o.Actor
	}
	return given
}
