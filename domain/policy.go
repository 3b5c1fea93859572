package domain

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Organization policies: an organization's rules for its keys, kept as their
// own aggregate on OrgSubject(org). set_policy replaces the policy
// (org.policy_changed); while the policy has max_active_keys, every create
// and rotate appends org.keys_counted on the same subject, in the same
// atomic batch as its key events, carrying the keys that count: optimistic
// concurrency on the organization's subject then decides racing creates, so
// the limit holds exactly.

// Leak actions: what a leak report does after key.leaked.
const (
	LeakRevoke  = "revoke"
	LeakSuspend = "suspend"
	LeakNotify  = "notify"
)

// Policy limits.
const (
	DefaultExpiryNotice   = 7 * 24 * time.Hour
	MaxExpiryNoticeSecond = 31_536_000
	MaxPolicyLifetime     = 10 * 365 * 24 * time.Hour
	MaxPolicyActiveKeys   = 10_000
	MaxPolicyCIDRs        = 32
	MaxPolicyPermissions  = 1000
)

// OrgSubject is the subject of an organization's aggregate (its policy).
func OrgSubject(org string) string { return "keyd.events.orgs." + org }

// Policy is an organization's policy (the contract's Policy). Nil fields
// are unset: no limit.
type Policy struct {
	OrgID               string   `json:"org_id"`
	MaxLifetimeSeconds  *int64   `json:"max_lifetime_seconds"`
	RequireExpiry       bool     `json:"require_expiry"`
	AllowedPermissions  []string `json:"allowed_permissions"`
	MaxActiveKeys       *int64   `json:"max_active_keys"`
	AllowedCIDRs        []string `json:"allowed_cidrs"`
	LeakAction          string   `json:"leak_action"`
	ExpiryNoticeSeconds int64    `json:"expiry_notice_seconds"`
	Version             int64    `json:"version"`
}

// DefaultPolicy is the policy of an organization that never set one.
func DefaultPolicy(org string) Policy {
	return Policy{OrgID: org, LeakAction: LeakRevoke, ExpiryNoticeSeconds: int64(DefaultExpiryNotice / time.Second)}
}

// CountedKey is a key that counts against max_active_keys, with the expiry
// it had when it was last looked at.
type CountedKey struct {
	ID        string     `json:"id"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// OrgState is an organization's aggregate: what every organization event
// carries in full.
type OrgState struct {
	Policy  Policy       `json:"policy"`
	Counted []CountedKey `json:"counted,omitempty"`
	Version int64        `json:"version"`
}

// OrgEventData is the payload of org.policy_changed and org.keys_counted.
type OrgEventData struct {
	Org OrgState `json:"org"`
}

// OrgState returns the organization's state after this organization event.
func (e Event) OrgState() (OrgState, error) {
	if !e.IsOrgEvent() {
		return OrgState{}, Errorf(EInvalid, "event %s (%s) is not an organization event", e.ID, e.Type)
	}
	var d OrgEventData
	if err := json.Unmarshal(e.Data, &d); err != nil || d.Org.Policy.OrgID != e.OrgID || d.Org.Version < 1 {
		return OrgState{}, Errorf(EInvalid, "event %s (%s) carries no state of organization %s", e.ID, e.Type, e.OrgID)
	}
	return d.Org, nil
}

func orgAggregate(org string) aggregate[OrgState] {
	return aggregate[OrgState]{
		subject: OrgSubject(org),
		name:    "the policy of organization " + org,
		decode:  Event.OrgState,
		empty:   func() (OrgState, error) { return OrgState{Policy: DefaultPolicy(org)}, nil },
	}
}

// SetPolicy replaces an organization's policy; absent fields take their
// defaults.
type SetPolicy struct {
	MaxLifetimeSeconds  *int64   `json:"max_lifetime_seconds"`
	RequireExpiry       *bool    `json:"require_expiry"`
	AllowedPermissions  []string `json:"allowed_permissions"`
	MaxActiveKeys       *int64   `json:"max_active_keys"`
	AllowedCIDRs        []string `json:"allowed_cidrs"`
	LeakAction          *string  `json:"leak_action"`
	ExpiryNoticeSeconds *int64   `json:"expiry_notice_seconds"`
	Meta
}

// PolicyResult is the reply to set_policy and GET policy.
type PolicyResult struct {
	Policy   Policy `json:"policy"`
	Sequence uint64 `json:"sequence"`
}

// NormalizeCIDRs parses 1 to 32 IPv4/IPv6 CIDRs (a bare address is /32 or
// /128; host bits are cleared) and returns them as canonical text. field
// names them in messages. [] is invalid_argument (null removes them).
func NormalizeCIDRs(field string, cidrs []string) ([]string, error) {
	if len(cidrs) == 0 || len(cidrs) > MaxPolicyCIDRs {
		return nil, Errorf(EInvalid, "%s must hold 1 to %d CIDRs (null removes the restriction), got %d", field, MaxPolicyCIDRs, len(cidrs))
	}
	out := make([]string, 0, len(cidrs))
	for _, c := range cidrs {
		p, err := ParseCIDR(c)
		if err != nil {
			return nil, Errorf(EInvalid, "%s: %q is not an IPv4 or IPv6 CIDR (like 10.0.0.0/8 or 2001:db8::/32) or address", field, c)
		}
		out = append(out, p.String())
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// ParseCIDR parses a CIDR or a bare address, host bits cleared.
func ParseCIDR(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		a = a.Unmap()
		return netip.PrefixFrom(a, a.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	if p.Addr().Is4In6() {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	return p.Masked(), nil
}

// CIDRsAllow reports whether ip is in one of cidrs (canonical, as
// NormalizeCIDRs returns them); nil cidrs allow every address.
func CIDRsAllow(cidrs []netip.Prefix, ip netip.Addr) bool {
	if cidrs == nil {
		return true
	}
	ip = ip.Unmap()
	for _, p := range cidrs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// newPolicy checks cmd and returns the policy it sets for org.
func newPolicy(org string, cmd SetPolicy) (Policy, error) {
	p := DefaultPolicy(org)
	if v := cmd.MaxLifetimeSeconds; v != nil {
		if *v < 1 || *v > int64(MaxPolicyLifetime/time.Second) {
			return Policy{}, Errorf(EInvalid, "max_lifetime_seconds must be 1 to %d (10 years), got %d", int64(MaxPolicyLifetime/time.Second), *v)
		}
		p.MaxLifetimeSeconds = v
	}
	if cmd.RequireExpiry != nil {
		p.RequireExpiry = *cmd.RequireExpiry
	}
	if cmd.AllowedPermissions != nil {
		if len(cmd.AllowedPermissions) > MaxPolicyPermissions {
			return Policy{}, Errorf(EInvalid, "allowed_permissions holds at most %d slugs, got %d", MaxPolicyPermissions, len(cmd.AllowedPermissions))
		}
		out := make([]string, 0, len(cmd.AllowedPermissions))
		for _, s := range cmd.AllowedPermissions {
			if err := CheckSlug(s); err != nil {
				return Policy{}, Errorf(EInvalid, "allowed_permissions: %s", err.(*Error).Message)
			}
			out = append(out, s)
		}
		slices.Sort(out)
		p.AllowedPermissions = slices.Compact(out)
	}
	if v := cmd.MaxActiveKeys; v != nil {
		if *v < 1 || *v > MaxPolicyActiveKeys {
			return Policy{}, Errorf(EInvalid, "max_active_keys must be 1 to %d, got %d", MaxPolicyActiveKeys, *v)
		}
		p.MaxActiveKeys = v
	}
	if cmd.AllowedCIDRs != nil {
		c, err := NormalizeCIDRs("allowed_cidrs", cmd.AllowedCIDRs)
		if err != nil {
			return Policy{}, err
		}
		p.AllowedCIDRs = c
	}
	if v := cmd.LeakAction; v != nil {
		switch *v {
		case LeakRevoke, LeakSuspend, LeakNotify:
			p.LeakAction = *v
		default:
			return Policy{}, Errorf(EInvalid, `leak_action must be "revoke", "suspend" or "notify", got %q`, *v)
		}
	}
	if v := cmd.ExpiryNoticeSeconds; v != nil {
		if *v < 1 || *v > MaxExpiryNoticeSecond {
			return Policy{}, Errorf(EInvalid, "expiry_notice_seconds must be 1 to %d, got %d", MaxExpiryNoticeSecond, *v)
		}
		p.ExpiryNoticeSeconds = *v
	}
	return p, nil
}

// maxLifetime is the policy's max lifetime (0: none).
func (p Policy) maxLifetime() time.Duration {
	if p.MaxLifetimeSeconds == nil {
		return 0
	}
	return time.Duration(*p.MaxLifetimeSeconds) * time.Second
}

// ExpiresFor decides the expiry of a key made at now that asks for
// requested (nil: none): with max_lifetime_seconds a key without one gets
// now + max and a later one is refused; require_expiry refuses none.
// Errors: failed_precondition naming the policy.
func (p Policy) ExpiresFor(requested *time.Time, now time.Time) (*time.Time, error) {
	max := p.maxLifetime()
	if requested == nil {
		if max > 0 {
			t := now.Add(max)
			return &t, nil
		}
		if p.RequireExpiry {
			return nil, Errorf(EPrecondition, "organization policy require_expiry: every key of organization %s needs an expires_at", p.OrgID)
		}
		return nil, nil
	}
	if max > 0 && requested.After(now.Add(max)) {
		return nil, Errorf(EPrecondition, "organization policy max_lifetime_seconds (%d): expires_at %s is later than %s, the longest lifetime organization %s allows",
			*p.MaxLifetimeSeconds, requested.UTC().Format(time.RFC3339), now.Add(max).UTC().Format(time.RFC3339), p.OrgID)
	}
	return requested, nil
}

// CheckPermissions returns failed_precondition, naming the policy, unless
// every one of perms is within allowed_permissions.
func (p Policy) CheckPermissions(perms []string) error {
	if p.AllowedPermissions == nil {
		return nil
	}
	for _, s := range perms {
		if _, ok := slices.BinarySearch(p.AllowedPermissions, s); !ok {
			return Errorf(EPrecondition, "organization policy allowed_permissions: permission %q is not allowed in organization %s (allowed: %s)",
				s, p.OrgID, allowedList(p.AllowedPermissions))
		}
	}
	return nil
}

func allowedList(a []string) string {
	if len(a) == 0 {
		return "none"
	}
	return strings.Join(a, ", ")
}

// Policy returns an organization's current policy and the sequence of its
// last event (0: the default policy, never set). It reads the stream, so it
// sees every set_policy that was answered. Errors: invalid_argument for a
// bad org id, unavailable.
func (s *Service) Policy(ctx context.Context, org string) (PolicyResult, error) {
	if err := CheckOrgID(org); err != nil {
		return PolicyResult{}, err
	}
	o, seq, err := s.loadOrg(ctx, org)
	if err != nil {
		return PolicyResult{}, err
	}
	return PolicyResult{Policy: o.Policy, Sequence: seq}, nil
}

func (s *Service) loadOrg(ctx context.Context, org string) (OrgState, uint64, error) {
	a := orgAggregate(org)
	l, found, err := load(ctx, s.Store, a)
	if err != nil {
		return OrgState{}, 0, err
	}
	if !found {
		st, _ := a.empty()
		return st, 0, nil
	}
	return l.state, l.seq, nil
}

// SetPolicy replaces org's policy. Setting the same policy again appends
// nothing. Turning max_active_keys on counts the organization's keys that
// are active or suspended now (Service.OrgKeys, each checked against the
// stream).
func (s *Service) SetPolicy(ctx context.Context, org string, cmd SetPolicy) (PolicyResult, error) {
	if err := CheckOrgID(org); err != nil {
		return PolicyResult{}, err
	}
	c, err := s.begin(cmd.Meta)
	if err != nil {
		return PolicyResult{}, err
	}
	p, err := newPolicy(org, cmd)
	if err != nil {
		return PolicyResult{}, err
	}
	c.byClient = false // setting it again changes nothing: decide anew
	w := write[OrgState]{aggregate: orgAggregate(org), cmd: c, evType: EventOrgPolicyChanged, retry: true}
	out, err := mutate(ctx, s, w, func(o OrgState, now time.Time) ([]change[OrgState], error) {
		next := o
		p.Version = o.Policy.Version + 1
		cur := o.Policy
		cur.Version = p.Version
		if policyEqual(cur, p) && o.Version > 0 {
			return nil, nil
		}
		next.Policy = p
		next.Version = o.Version + 1
		switch {
		case p.MaxActiveKeys == nil:
			next.Counted = nil
		case o.Policy.MaxActiveKeys == nil:
			counted, err := s.countKeys(ctx, org, now)
			if err != nil {
				return nil, err
			}
			next.Counted = counted
		}
		return []change[OrgState]{{typ: EventOrgPolicyChanged, org: org, data: OrgEventData{Org: next}, after: next, subj: OrgSubject(org)}}, nil
	})
	if err != nil {
		return PolicyResult{}, err
	}
	return PolicyResult{Policy: out.state.Policy, Sequence: out.seq}, nil
}

func policyEqual(a, b Policy) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// OrgKeys lists the ids of an organization's keys that may be active or
// suspended (not revoked), for counting them when max_active_keys is turned
// on. keyd sets it to a read-model query; nil counts none.
type OrgKeys func(ctx context.Context, org string) ([]string, error)

// countKeys returns the organization's keys that count now.
func (s *Service) countKeys(ctx context.Context, org string, now time.Time) ([]CountedKey, error) {
	if s.OrgKeys == nil {
		return nil, nil
	}
	ids, err := s.OrgKeys(ctx, org)
	if err != nil {
		return nil, Classify(err, "the read models")
	}
	cs := make([]CountedKey, 0, len(ids))
	for _, id := range ids {
		cs = append(cs, CountedKey{ID: id})
	}
	return s.refreshCounted(ctx, org, cs, now)
}

// refreshCounted keeps of cs the keys that are still active or suspended at
// now, as the stream has them.
func (s *Service) refreshCounted(ctx context.Context, org string, cs []CountedKey, now time.Time) ([]CountedKey, error) {
	out := make([]CountedKey, 0, len(cs))
	for _, c := range cs {
		l, found, err := load(ctx, s.Store, keyAggregate(org, c.ID))
		if err != nil {
			return nil, err
		}
		if !found {
			continue
		}
		switch l.state.EffectiveStatus(now) {
		case StatusActive, StatusSuspended:
			out = append(out, CountedKey{ID: c.ID, ExpiresAt: l.state.ExpiresAt})
		}
	}
	return out, nil
}

// liveCounted drops the entries of cs whose recorded expiry has passed.
func liveCounted(cs []CountedKey, now time.Time) []CountedKey {
	out := make([]CountedKey, 0, len(cs)+1)
	for _, c := range cs {
		if c.ExpiresAt == nil || now.Before(*c.ExpiresAt) {
			out = append(out, c)
		}
	}
	return out
}

// admitKey decides counting a new key (id, expiring at exp) under o's
// max_active_keys, replacing the key `replaces` (a rotation; "" for a
// create): it returns the organization's next state, or failed_precondition
// naming the policy when the organization is at its limit.
func (s *Service) admitKey(ctx context.Context, o OrgState, id string, exp *time.Time, replaces string, now time.Time) (OrgState, error) {
	max := int(*o.Policy.MaxActiveKeys)
	cs := liveCounted(o.Counted, now)
	cs = slices.DeleteFunc(cs, func(c CountedKey) bool { return c.ID == replaces })
	if len(cs) >= max {
		// Some may have been revoked since they were counted: look.
		var err error
		if cs, err = s.refreshCounted(ctx, o.Policy.OrgID, cs, now); err != nil {
			return OrgState{}, err
		}
	}
	if len(cs) >= max {
		return OrgState{}, Errorf(EPrecondition, "organization policy max_active_keys (%d): organization %s already has %d active or suspended keys; revoke one first",
			max, o.Policy.OrgID, len(cs))
	}
	n := o
	n.Counted = append(cs, CountedKey{ID: id, ExpiresAt: exp})
	n.Version = o.Version + 1
	return n, nil
}

// orgChange is the org.keys_counted change that rides along a key event,
// guarded by seq, the organization subject's last sequence as read.
func orgChange[S any](o OrgState, seq uint64) change[S] {
	return change[S]{typ: EventOrgKeysCounted, org: o.Policy.OrgID, data: OrgEventData{Org: o}, subj: OrgSubject(o.Policy.OrgID), expected: seq}
}

// CheckGrants is CheckPermissions for everything a key is granted: its own
// permissions perms and the permissions of each of its roles that roles
// holds active (a retired role grants nothing). The error names the role a
// permission comes through.
func (p Policy) CheckGrants(perms, roleSlugs []string, roles RoleCatalog) error {
	if p.AllowedPermissions == nil {
		return nil
	}
	if err := p.CheckPermissions(perms); err != nil {
		return err
	}
	for _, slug := range roleSlugs {
		r, ok := roles.Get(slug)
		if !ok || r.Status != PermissionActive {
			continue
		}
		for _, s := range r.Permissions {
			if _, ok := slices.BinarySearch(p.AllowedPermissions, s); !ok {
				return Errorf(EPrecondition, "organization policy allowed_permissions: role %q grants permission %q, which is not allowed in organization %s (allowed: %s)",
					slug, s, p.OrgID, allowedList(p.AllowedPermissions))
			}
		}
	}
	return nil
}
