package domain

import (
	"context"
	"time"
)

// KeyDirectory finds keys by owner, for commands that act on many keys.
//
// Implementation: adapters/postgres.UserKeys, over the key listing, which
// first catches up with the stream so that every key created before the
// call is found.
type KeyDirectory interface {
	// UserKeyIDs returns the ids of the keys owned by user in org that the
	// directory does not know as revoked (it may list some that are: the
	// command decides on each key's own state), and the stream sequence the
	// directory reflects.
	UserKeyIDs(ctx context.Context, org, user string) (ids []string, seq uint64, err error)
}

// RevokeUserKeysResult is the reply to revoke_user_keys: the keys this call
// revoked, and the sequence that reflects them all (its last event's, or the
// one the key directory reflected when there was nothing to revoke).
type RevokeUserKeysResult struct {
	Revoked  []string `json:"revoked"`
	Sequence uint64   `json:"sequence"`
}

// RevokeUserKeys revokes every key of a user in org that is not revoked yet
// (one key.revoked each, with the reason); a key revoked already is left as
// it is, so repeating the command revokes nothing more. The reason is as for
// RevokeKey. Errors: invalid_argument for a bad org, user id or reason;
// unavailable when the key directory is not configured or fails; and the
// errors of revoking a key (a failure stops at that key: those revoked
// before it stay revoked, and repeating the command finishes the rest).
func (s *Service) RevokeUserKeys(ctx context.Context, org string, cmd RevokeUserKeys) (RevokeUserKeysResult, error) {
	if err := CheckOrgID(org); err != nil {
		return RevokeUserKeysResult{}, err
	}
	if err := CheckUserID("user_id", cmd.UserID); err != nil {
		return RevokeUserKeysResult{}, err
	}
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return RevokeUserKeysResult{}, err
	}
	if len(cmd.Reason) > MaxReasonLength {
		return RevokeUserKeysResult{}, Errorf(EInvalid, "reason must be at most %d bytes", MaxReasonLength)
	}
	if err := CheckText("reason", cmd.Reason, true); err != nil {
		return RevokeUserKeysResult{}, err
	}
	if s.Keys == nil {
		return RevokeUserKeysResult{}, Errorf(EUnavailable, "revoking a user's keys is not available on this server")
	}
	ids, seq, err := s.Keys.UserKeyIDs(ctx, org, cmd.UserID)
	if err != nil {
		return RevokeUserKeysResult{}, Classify(err, "the key listing")
	}
	// Nothing to revoke: the sequence the directory reflects says so.
	res := RevokeUserKeysResult{Revoked: []string{}, Sequence: seq}
	for _, id := range ids {
		// One command id for all: each key's event id is the command id
		// and the key id, so a resent command (same Keyd-Command-Id)
		// appends nothing twice.
		w := write[KeyState]{aggregate: keyAggregate(org, id), cmd: c, evType: EventKeyRevoked, retry: true}
		out, err := mutate(ctx, s, w, func(k KeyState, now time.Time) ([]change[KeyState], error) {
			if k.Owner.Type != OwnerUser || k.Owner.ID != cmd.UserID {
				return nil, nil // not the user's (a directory that lags cannot make it so)
			}
			d, changed := k.Revoke(cmd.Reason, now)
			if !changed {
				return nil, nil
			}
			return []change[KeyState]{keyChange(EventKeyRevoked, d)}, nil
		})
		if err != nil {
			return res, err
		}
		if out.changes != nil {
			res.Revoked = append(res.Revoked, id)
		}
		if out.changes != nil {
			res.Sequence = max(res.Sequence, out.seq)
		}
	}
	return res, nil
}
