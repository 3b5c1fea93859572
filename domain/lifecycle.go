package domain

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"time"
)

// Lifecycle controls: suspend and resume, scheduled expiry, the expiry
// notices and leak reports. The rules are KeyState methods, as in key.go;
// the use cases below run them through the write engine.

// MaxLeakURLs bounds the leak report urls a key remembers (the oldest are
// forgotten first); MaxLeakURLBytes and MaxLeakSourceBytes bound a report.
const (
	MaxLeakURLs        = 100
	MaxLeakURLBytes    = 2048
	MaxLeakSourceBytes = 200
)

// SuspendKey asks to suspend a key; suspending a suspended key changes
// nothing.
type SuspendKey struct {
	KeyID  string `json:"key_id"`
	Reason string `json:"reason"`
	Meta
}

// ResumeKey asks to resume a suspended key; resuming an active key changes
// nothing.
type ResumeKey struct {
	KeyID string `json:"key_id"`
	Meta
}

// SetExpiry schedules (a future time), clears (null) or ends now (a time at
// or before now) a key's expiry. ExpiresAt is required, null included.
type SetExpiry struct {
	KeyID     string       `json:"key_id"`
	ExpiresAt OptionalTime `json:"expires_at"`
	Meta
}

// OptionalTime is a JSON member that may be absent (Set false), null (Set,
// Time nil) or an RFC 3339 time.
type OptionalTime struct {
	Set  bool
	Time *time.Time
}

// UnmarshalJSON records that the member was given, null included.
func (o *OptionalTime) UnmarshalJSON(b []byte) error {
	o.Set = true
	if string(b) == "null" {
		o.Time = nil
		return nil
	}
	var t time.Time
	if err := json.Unmarshal(b, &t); err != nil {
		return err
	}
	o.Time = &t
	return nil
}

// MarshalJSON writes the time or null.
func (o OptionalTime) MarshalJSON() ([]byte, error) { return json.Marshal(o.Time) }

// KeySuspendedData is the payload of key.suspended.
type KeySuspendedData struct {
	Reason string   `json:"reason"`
	Key    KeyState `json:"key"`
}

// KeyResumedData is the payload of key.resumed.
type KeyResumedData struct {
	Key KeyState `json:"key"`
}

// KeyExpiryChangedData is the payload of key.expiry_changed.
type KeyExpiryChangedData struct {
	ExpiresAt *time.Time `json:"expires_at"`
	Previous  *time.Time `json:"previous"`
	Key       KeyState   `json:"key"`
}

// KeyNoticeData is the payload of key.expiring and key.expired: the expiry
// the notice is about, and the key (its state and version unchanged).
type KeyNoticeData struct {
	ExpiresAt time.Time `json:"expires_at"`
	Key       KeyState  `json:"key"`
}

// KeyLeakedData is the payload of key.leaked.
type KeyLeakedData struct {
	URL    string   `json:"url"`
	Source string   `json:"source"`
	Key    KeyState `json:"key"`
}

func (d KeySuspendedData) keyAfter() KeyState     { return d.Key }
func (d KeyResumedData) keyAfter() KeyState       { return d.Key }
func (d KeyExpiryChangedData) keyAfter() KeyState { return d.Key }
func (d KeyNoticeData) keyAfter() KeyState        { return d.Key }
func (d KeyLeakedData) keyAfter() KeyState        { return d.Key }

// Suspend decides suspending the key with reason. changed is false when it
// is suspended already.
// Errors: failed_precondition for a revoked or expired key.
func (k KeyState) Suspend(reason string, now time.Time) (d KeySuspendedData, changed bool, err error) {
	if err := k.checkMutable(now, "suspended"); err != nil {
		return KeySuspendedData{}, false, err
	}
	if k.Status == StatusSuspended {
		return KeySuspendedData{}, false, nil
	}
	n := k.clone()
	n.Status, n.SuspendedAt, n.SuspendReason, n.Version = StatusSuspended, &now, reason, k.Version+1
	return KeySuspendedData{Reason: reason, Key: n}, true, nil
}

// Resume decides resuming a suspended key. changed is false when it is
// active.
// Errors: failed_precondition for a revoked or expired key.
func (k KeyState) Resume(now time.Time) (d KeyResumedData, changed bool, err error) {
	if err := k.checkMutable(now, "resumed"); err != nil {
		return KeyResumedData{}, false, err
	}
	if k.Status != StatusSuspended {
		return KeyResumedData{}, false, nil
	}
	n := k.clone()
	n.Status, n.SuspendedAt, n.SuspendReason, n.Version = StatusActive, nil, "", k.Version+1
	return KeyResumedData{Key: n}, true, nil
}

// SetExpiry decides the key's new expiry under policy p: nil clears it
// (refused under require_expiry or max_lifetime_seconds), a time at or
// before now ends the key now, a later one is capped by max_lifetime_seconds
// (refused beyond it). changed is false when the expiry stays the same.
// Errors: failed_precondition for a revoked or expired key, or naming the
// policy.
func (k KeyState) SetExpiry(t *time.Time, p Policy, now time.Time) (d KeyExpiryChangedData, changed bool, err error) {
	if err := k.checkMutable(now, "given a new expiry"); err != nil {
		return KeyExpiryChangedData{}, false, err
	}
	var exp *time.Time
	switch {
	case t == nil:
		if p.MaxLifetimeSeconds != nil {
			return KeyExpiryChangedData{}, false, Errorf(EPrecondition, "organization policy max_lifetime_seconds (%d): the expiry of keys of organization %s cannot be cleared", *p.MaxLifetimeSeconds, p.OrgID)
		}
		if p.RequireExpiry {
			return KeyExpiryChangedData{}, false, Errorf(EPrecondition, "organization policy require_expiry: the expiry of keys of organization %s cannot be cleared", p.OrgID)
		}
	case !t.After(now):
		exp = &now
	default:
		u := t.UTC().Truncate(time.Millisecond)
		if exp, err = p.ExpiresFor(&u, now); err != nil {
			return KeyExpiryChangedData{}, false, err
		}
	}
	if timeEqual(exp, k.ExpiresAt) {
		return KeyExpiryChangedData{}, false, nil
	}
	n := k.clone()
	n.ExpiresAt, n.Version = exp, k.Version+1
	return KeyExpiryChangedData{ExpiresAt: exp, Previous: k.ExpiresAt, Key: n}, true, nil
}

func timeEqual(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// NoticeDue returns which notice the key is due for at now, with notice
// the organization's expiry_notice_seconds: EventKeyExpiring once it is
// within notice of its expires_at, then EventKeyExpired once that has
// passed (never before key.expiring for the same expiry), each once per
// expiry time; "" when none is (no expiry, revoked, or both sent).
func (k KeyState) NoticeDue(notice time.Duration, now time.Time) string {
	if k.ExpiresAt == nil || k.Status == StatusRevoked {
		return ""
	}
	exp := *k.ExpiresAt
	if !timeEqual(k.ExpiringNoticed, &exp) {
		if !now.Before(exp.Add(-notice)) {
			return EventKeyExpiring
		}
		return ""
	}
	if !timeEqual(k.ExpiredNoticed, &exp) && !now.Before(exp) {
		return EventKeyExpired
	}
	return ""
}

// Notice decides notice typ (EventKeyExpiring or EventKeyExpired) for the
// key at now: changed is false unless it is due (NoticeDue). The payload
// carries the key with its version unchanged, only the notice bookkeeping
// updated.
func (k KeyState) Notice(typ string, notice time.Duration, now time.Time) (d KeyNoticeData, changed bool) {
	if k.NoticeDue(notice, now) != typ || typ == "" {
		return KeyNoticeData{}, false
	}
	n := k.clone()
	exp := *k.ExpiresAt
	if typ == EventKeyExpiring {
		n.ExpiringNoticed = &exp
	} else {
		n.ExpiredNoticed = &exp
	}
	return KeyNoticeData{ExpiresAt: exp, Key: n}, true
}

// Leak decides recording a leak report of the key at url, from source.
// changed is false when this url was reported before, or the key is
// revoked (it can no longer change, and nothing is left to do).
func (k KeyState) Leak(url, source string) (d KeyLeakedData, changed bool) {
	if k.Status == StatusRevoked || slices.Contains(k.LeakedURLs, url) {
		return KeyLeakedData{}, false
	}
	n := k.clone()
	n.LeakedURLs = append(n.LeakedURLs, url)
	if len(n.LeakedURLs) > MaxLeakURLs {
		n.LeakedURLs = n.LeakedURLs[len(n.LeakedURLs)-MaxLeakURLs:]
	}
	n.Version = k.Version + 1
	return KeyLeakedData{URL: url, Source: source, Key: n}, true
}

// checkReason checks a reason (revoke, suspend): at most 500 bytes of text,
// tab and line feed allowed.
func checkReason(reason string) error {
	if len(reason) > MaxReasonLength {
		return Errorf(EInvalid, "reason must be at most %d bytes", MaxReasonLength)
	}
	return CheckText("reason", reason, true)
}

// SuspendKey suspends a key: verification refuses it (suspended) until it
// is resumed. Suspending a suspended key appends nothing.
func (s *Service) SuspendKey(ctx context.Context, org string, cmd SuspendKey) (KeyResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return KeyResult{}, err
	}
	if err := checkReason(cmd.Reason); err != nil {
		return KeyResult{}, err
	}
	w := write[KeyState]{cmd: c, evType: EventKeySuspended, retry: true}
	return s.keyCommand(ctx, org, cmd.KeyID, w, func(k KeyState, now time.Time) (keyEventData, bool, error) {
		// Like a revoke: an organization-scope session may suspend any key
		// of its organization, members' keys included.
		if err := cmd.Scope.checkKey(k, false); err != nil {
			return nil, false, err
		}
		return k.Suspend(cmd.Reason, now)
	})
}

// ResumeKey resumes a suspended key. Resuming an active key appends
// nothing.
func (s *Service) ResumeKey(ctx context.Context, org string, cmd ResumeKey) (KeyResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return KeyResult{}, err
	}
	w := write[KeyState]{cmd: c, evType: EventKeyResumed, retry: true}
	return s.keyCommand(ctx, org, cmd.KeyID, w, func(k KeyState, now time.Time) (keyEventData, bool, error) {
		if err := cmd.Scope.checkKey(k, true); err != nil {
			return nil, false, err
		}
		return k.Resume(now)
	})
}

// SetKeyExpiry changes a key's expiry under its organization's policy
// (KeyState.SetExpiry). Errors: invalid_argument without expires_at.
func (s *Service) SetKeyExpiry(ctx context.Context, org string, cmd SetExpiry) (KeyResult, error) {
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return KeyResult{}, err
	}
	if !cmd.ExpiresAt.Set {
		return KeyResult{}, Errorf(EInvalid, "expires_at is required: an RFC 3339 time, or null to clear the expiry")
	}
	w := write[KeyState]{cmd: c, evType: EventKeyExpiryChanged, retry: true}
	return s.keyCommand(ctx, org, cmd.KeyID, w, func(k KeyState, now time.Time) (keyEventData, bool, error) {
		if err := cmd.Scope.checkKey(k, true); err != nil {
			return nil, false, err
		}
		o, _, err := s.loadOrg(ctx, org)
		if err != nil {
			return nil, false, err
		}
		return k.SetExpiry(cmd.ExpiresAt.Time, o.Policy, now)
	})
}

// noticeActor is who appends notices.
var noticeActor = Actor{Type: "system", ID: "keyd"}

// AppendNotice appends notice typ (EventKeyExpiring or EventKeyExpired) to
// a key if it is due, with the key's organization's expiry_notice_seconds.
// Every process may call it for the same key at once: the notice's message
// id is the key, the type and the expiry time, and the append is guarded by
// the key subject's last sequence, so at most one lands; the others reload
// and find it sent, or their append, with the same message id, is answered
// as the duplicate it is. appended is true when this call's append landed
// or was answered as such a duplicate; false when the notice was not due
// (or already sent).
func (s *Service) AppendNotice(ctx context.Context, org, keyID, typ string) (appended bool, seq uint64, err error) {
	if err := checkKeyRef(org, keyID); err != nil {
		return false, 0, err
	}
	o, _, err := s.loadOrg(ctx, org)
	if err != nil {
		return false, 0, err
	}
	notice := time.Duration(o.Policy.ExpiryNoticeSeconds) * time.Second
	for attempt := 1; attempt <= s.attempts(); attempt++ {
		now := s.now()
		l, found, err := load(ctx, s.Store, keyAggregate(org, keyID))
		if err != nil || !found {
			return false, 0, err
		}
		d, changed := l.state.Notice(typ, notice, now)
		if !changed {
			return false, l.seq, nil
		}
		id := "notice:" + typ + ":" + keyID + ":" + d.ExpiresAt.UTC().Format(time.RFC3339Nano)
		data, err := s.event(typ, org, keyID, now, command{id: id, actor: noticeActor}, l.seq, d)
		if err != nil {
			return false, 0, err
		}
		seq, err := s.Store.Append(ctx, AppendMsg{Subject: KeySubject(org, keyID), ExpectedSequence: l.seq, MsgID: id, Type: typ, Data: data})
		if err == nil {
			return true, seq, nil
		}
		if !errors.Is(err, ErrConflict) {
			return false, 0, storeError(err)
		}
	}
	return false, 0, Errorf(EConflict, "key %s is being changed by other writers; the notice is retried later", keyID)
}

// LeakResult is what a leak report did to one key.
type LeakResult struct {
	// Leaked is true when key.leaked was appended (false: this url was
	// reported before, or the key is revoked).
	Leaked bool
	// Action is the leak_action applied after key.leaked ("" when none
	// was).
	Action   string
	Sequence uint64
}

// ReportLeak records that key keyID of org was found at url (key.leaked,
// once per url), then applies the organization's leak_action: revoke with
// reason "leaked: <url>", suspend, or nothing more (notify). A report of
// the same url again appends nothing (but completes an action a crash cut
// off right after key.leaked).
func (s *Service) ReportLeak(ctx context.Context, org, keyID, url, source string) (LeakResult, error) {
	if err := checkKeyRef(org, keyID); err != nil {
		return LeakResult{}, err
	}
	if len(url) > MaxLeakURLBytes || len(source) > MaxLeakSourceBytes {
		return LeakResult{}, Errorf(EInvalid, "a leak report's url is at most %d bytes and its source at most %d", MaxLeakURLBytes, MaxLeakSourceBytes)
	}
	if err := CheckText("url", url, false); err != nil {
		return LeakResult{}, err
	}
	if err := CheckText("source", source, false); err != nil {
		return LeakResult{}, err
	}
	c, err := s.begin(Meta{Actor: &Actor{Type: "system", ID: "keyd"}})
	if err != nil {
		return LeakResult{}, err
	}
	w := write[KeyState]{aggregate: keyAggregate(org, keyID), cmd: c, evType: EventKeyLeaked, retry: true}
	out, err := mutate(ctx, s, w, func(k KeyState, now time.Time) ([]change[KeyState], error) {
		d, changed := k.Leak(url, source)
		if !changed {
			return nil, nil
		}
		return []change[KeyState]{keyChange(EventKeyLeaked, d)}, nil
	})
	if err != nil {
		return LeakResult{}, err
	}
	res := LeakResult{Leaked: out.changes != nil, Sequence: out.seq}
	if !res.Leaked {
		// A report of this url before: its action is done, unless a crash
		// cut it off (key.leaked of this url is still the key's last event).
		l, found, err := load(ctx, s.Store, keyAggregate(org, keyID))
		if err != nil || !found {
			return res, err
		}
		var d KeyLeakedData
		if l.event.Type != EventKeyLeaked || json.Unmarshal(l.event.Data, &d) != nil || d.URL != url {
			return res, nil
		}
	}
	o, _, err := s.loadOrg(ctx, org)
	if err != nil {
		return LeakResult{}, err
	}
	reason := truncateReason("leaked: " + url)
	switch o.Policy.LeakAction {
	case LeakRevoke:
		r, err := s.RevokeKey(ctx, org, RevokeKey{KeyID: keyID, Reason: reason, Meta: Meta{Actor: &noticeActor}})
		if err != nil {
			return LeakResult{}, err
		}
		res.Action, res.Sequence = LeakRevoke, r.Sequence
	case LeakSuspend:
		r, err := s.SuspendKey(ctx, org, SuspendKey{KeyID: keyID, Reason: reason, Meta: Meta{Actor: &noticeActor}})
		if err != nil {
			return LeakResult{}, err
		}
		res.Action, res.Sequence = LeakSuspend, r.Sequence
	}
	return res, nil
}

// truncateReason cuts r to MaxReasonLength bytes on a rune boundary.
func truncateReason(r string) string {
	if len(r) <= MaxReasonLength {
		return r
	}
	r = r[:MaxReasonLength]
	for len(r) > 0 && r[len(r)-1]&0xC0 == 0x80 {
		r = r[:len(r)-1]
	}
	if len(r) > 0 && r[len(r)-1] >= 0xC0 {
		r = r[:len(r)-1]
	}
	return r
}
