package domain_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

func TestSuspendResumeRules(t *testing.T) {
	e := newEnv(t)
	e.define("posts:read")
	k := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:read"}})
	id := k.Key.ID

	res, err := e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: id, Reason: "audit"})
	if err != nil || res.Key.Status != domain.StatusSuspended || res.Key.Version != 2 {
		t.Fatalf("suspend: %+v, %v", res.Key, err)
	}
	ev, _ := e.lastEvent("org_1", id)
	if ev.Type != domain.EventKeySuspended || string(ev.Data) == "" {
		t.Fatalf("last event %s", ev.Type)
	}
	seq := e.lastSeq()
	if again, err := e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: id}); err != nil || again.Key.Version != 2 || e.lastSeq() != seq {
		t.Fatalf("suspending a suspended key appended: %+v %v", again.Key, err)
	}
	_, err = e.svc.RotateKey(e.ctx, "org_1", domain.RotateKey{KeyID: id, GracePeriodSeconds: ptr[int64](0)})
	wantErr(t, err, domain.EPrecondition, "suspended")
	// A suspended key can be updated and re-scoped.
	if _, err := e.svc.UpdateKey(e.ctx, "org_1", domain.UpdateKey{KeyID: id, Name: ptr("renamed")}); err != nil {
		t.Fatalf("update a suspended key: %v", err)
	}
	if _, err := e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: id, Permissions: []string{}}); err != nil {
		t.Fatalf("set_permissions on a suspended key: %v", err)
	}
	r, err := e.svc.ResumeKey(e.ctx, "org_1", domain.ResumeKey{KeyID: id})
	if err != nil || r.Key.Status != domain.StatusActive {
		t.Fatalf("resume: %+v %v", r.Key, err)
	}
	seq = e.lastSeq()
	if _, err := e.svc.ResumeKey(e.ctx, "org_1", domain.ResumeKey{KeyID: id}); err != nil || e.lastSeq() != seq {
		t.Fatalf("resuming an active key appended (%v)", err)
	}
	if _, err := e.svc.RevokeKey(e.ctx, "org_1", domain.RevokeKey{KeyID: id}); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: id})
	wantErr(t, err, domain.EPrecondition, "revoked")
	_, err = e.svc.ResumeKey(e.ctx, "org_1", domain.ResumeKey{KeyID: id})
	wantErr(t, err, domain.EPrecondition, "revoked")
}

func TestSetExpiryRules(t *testing.T) {
	p := domain.DefaultPolicy("org_1")
	max := p
	max.MaxLifetimeSeconds = ptr[int64](3600)
	req := p
	req.RequireExpiry = true
	now := t0
	future := now.Add(30 * time.Minute)
	far := now.Add(2 * time.Hour)
	past := now.Add(-time.Hour)
	active := domain.KeyState{ID: "key_01", OrgID: "org_1", Status: domain.StatusActive, Version: 3}
	withExp := active
	withExp.ExpiresAt = &future
	expired := active
	expired.ExpiresAt = &past
	revoked := active
	revoked.Status = domain.StatusRevoked
	tests := []struct {
		name    string
		k       domain.KeyState
		t       *time.Time
		p       domain.Policy
		want    *time.Time
		changed bool
		code    string
		mention string
	}{
		{"future", active, &future, p, &future, true, "", ""},
		{"clear", withExp, nil, p, nil, true, "", ""},
		{"clear nothing", active, nil, p, nil, false, "", ""},
		{"now", active, &past, p, &now, true, "", ""},
		{"same", withExp, &future, p, nil, false, "", ""},
		{"within max", active, &future, max, &future, true, "", ""},
		{"beyond max", active, &far, max, nil, false, domain.EPrecondition, "max_lifetime_seconds"},
		{"clear under max", withExp, nil, max, nil, false, domain.EPrecondition, "max_lifetime_seconds"},
		{"clear under require_expiry", withExp, nil, req, nil, false, domain.EPrecondition, "require_expiry"},
		{"expired key", expired, &future, p, nil, false, domain.EPrecondition, "expired"},
		{"revoked key", revoked, &future, p, nil, false, domain.EPrecondition, "revoked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, changed, err := tt.k.SetExpiry(tt.t, tt.p, now)
			if tt.code != "" {
				wantErr(t, err, tt.code, tt.mention)
				return
			}
			if err != nil || changed != tt.changed {
				t.Fatalf("changed %v, err %v; want changed %v", changed, err, tt.changed)
			}
			if !changed {
				return
			}
			if (d.Key.ExpiresAt == nil) != (tt.want == nil) || (tt.want != nil && !d.Key.ExpiresAt.Equal(*tt.want)) {
				t.Fatalf("expires_at %v, want %v", d.Key.ExpiresAt, tt.want)
			}
			if d.Key.Version != tt.k.Version+1 {
				t.Fatalf("version %d", d.Key.Version)
			}
		})
	}
}

func TestNoticeRules(t *testing.T) {
	exp := t0.Add(10 * time.Hour)
	k := domain.KeyState{ID: "key_01", OrgID: "org_1", Status: domain.StatusActive, ExpiresAt: &exp, Version: 4}
	day := 24 * time.Hour
	if got := k.NoticeDue(time.Hour, t0); got != "" {
		t.Fatalf("due %q 10 h before expiry with a 1 h notice", got)
	}
	if got := k.NoticeDue(day, t0); got != domain.EventKeyExpiring {
		t.Fatalf("due %q, want key.expiring", got)
	}
	// Past expiry without a key.expiring: key.expiring first.
	if got := k.NoticeDue(time.Hour, exp.Add(time.Minute)); got != domain.EventKeyExpiring {
		t.Fatalf("due %q after expiry, want key.expiring first", got)
	}
	if _, ok := k.Notice(domain.EventKeyExpired, day, exp.Add(time.Minute)); ok {
		t.Fatal("key.expired before key.expiring")
	}
	d, ok := k.Notice(domain.EventKeyExpiring, day, t0)
	if !ok || d.Key.Version != k.Version || !d.ExpiresAt.Equal(exp) {
		t.Fatalf("expiring notice %+v %v: the version must not change", d, ok)
	}
	k2 := d.Key
	if _, ok := k2.Notice(domain.EventKeyExpiring, day, t0); ok {
		t.Fatal("key.expiring twice for one expiry")
	}
	if _, ok := k2.Notice(domain.EventKeyExpired, day, exp.Add(-time.Second)); ok {
		t.Fatal("key.expired before the expiry")
	}
	d, ok = k2.Notice(domain.EventKeyExpired, day, exp)
	if !ok || d.Key.Version != k.Version {
		t.Fatalf("expired notice %+v %v", d, ok)
	}
	if got := d.Key.NoticeDue(day, exp.Add(time.Hour)); got != "" {
		t.Fatalf("due %q after both notices", got)
	}
	// A changed expiry gets its own notices.
	k3 := d.Key
	later := exp.Add(48 * time.Hour)
	k3.ExpiresAt = &later
	if got := k3.NoticeDue(day, exp.Add(time.Hour)); got != "" {
		t.Fatalf("due %q 47 h before the new expiry", got)
	}
	if got := k3.NoticeDue(day, later.Add(-time.Hour)); got != domain.EventKeyExpiring {
		t.Fatalf("due %q for the new expiry", got)
	}
	rev := k
	rev.Status = domain.StatusRevoked
	if got := rev.NoticeDue(day, exp); got != "" {
		t.Fatalf("revoked key due %q", got)
	}
}

func TestAppendNoticeOnceUnderRacingSchedulers(t *testing.T) {
	e := newEnv(t)
	exp := t0.Add(time.Hour)
	k := e.create("org_1", domain.CreateKey{ExpiresAt: &exp})
	e.clk.Advance(2 * time.Hour)
	var wg sync.WaitGroup
	var mu sync.Mutex
	landed := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			svc := e.svc
			if i%2 == 1 {
				svc = e.other
			}
			for _, typ := range []string{domain.EventKeyExpiring, domain.EventKeyExpired} {
				ok, _, err := svc.AppendNotice(e.ctx, "org_1", k.Key.ID, typ)
				if err != nil {
					t.Error(err)
				}
				if ok {
					mu.Lock()
					landed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	// A racing append with the same message id may be answered as the
	// duplicate it is (landed counts it); the stream holds each once.
	if landed < 2 {
		t.Fatalf("%d notices reported, want at least 2", landed)
	}
	var types []string
	var after uint64
	for {
		rec, ok, err := e.mem.Next(e.ctx, domain.KeySubject("org_1", k.Key.ID), after)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		ev, _ := domain.DecodeEvent(rec.Data)
		types = append(types, ev.Type)
		after = rec.Sequence
	}
	if len(types) != 3 || types[1] != domain.EventKeyExpiring || types[2] != domain.EventKeyExpired {
		t.Fatalf("events %v, want key.created, key.expiring, key.expired", types)
	}
	ev, _ := e.lastEvent("org_1", k.Key.ID)
	st := e.load("org_1", k.Key.ID)
	if ev.Type != domain.EventKeyExpired || st.Version != 1 || ev.Actor.ID != "keyd" {
		t.Fatalf("last %s, version %d, actor %+v", ev.Type, st.Version, ev.Actor)
	}
}

func TestPolicyRules(t *testing.T) {
	e := newEnv(t)
	e.define("posts:read", "posts:write")
	_, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{ExpiryNoticeSeconds: ptr[int64](0)})
	wantErr(t, err, domain.EInvalid, "expiry_notice_seconds")
	_, err = e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{AllowedCIDRs: []string{}})
	wantErr(t, err, domain.EInvalid, "allowed_cidrs")
	_, err = e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{LeakAction: ptr("delete")})
	wantErr(t, err, domain.EInvalid, "leak_action")

	res, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{
		MaxLifetimeSeconds: ptr[int64](3600), AllowedPermissions: []string{"posts:read"},
		AllowedCIDRs: []string{"10.1.2.3/8", "2001:db8::1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if p := res.Policy; p.Version != 1 || p.LeakAction != "revoke" || p.ExpiryNoticeSeconds != 604800 ||
		len(p.AllowedCIDRs) != 2 || p.AllowedCIDRs[0] != "10.0.0.0/8" || p.AllowedCIDRs[1] != "2001:db8::1/128" {
		t.Fatalf("policy %+v", p)
	}
	seq := e.lastSeq()
	if _, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{
		MaxLifetimeSeconds: ptr[int64](3600), AllowedPermissions: []string{"posts:read"}, AllowedCIDRs: []string{"10.0.0.0/8", "2001:db8::1"},
	}); err != nil || e.lastSeq() != seq {
		t.Fatalf("the same policy again appended (%v)", err)
	}

	// Create: max lifetime gives a default expiry and refuses a later one;
	// permissions must be allowed.
	k := e.create("org_1", domain.CreateKey{Permissions: []string{"posts:read"}})
	if k.Key.ExpiresAt == nil || !k.Key.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("expires_at %v, want now + 1 h", k.Key.ExpiresAt)
	}
	late := t0.Add(2 * time.Hour)
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "x", ExpiresAt: &late})
	wantErr(t, err, domain.EPrecondition, "max_lifetime_seconds")
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "x", Permissions: []string{"posts:write"}})
	wantErr(t, err, domain.EPrecondition, "allowed_permissions", "posts:write")
	_, err = e.svc.SetPermissions(e.ctx, "org_1", domain.SetPermissions{KeyID: k.Key.ID, Permissions: []string{"posts:write"}})
	wantErr(t, err, domain.EPrecondition, "allowed_permissions")
	_, err = e.svc.SetKeyExpiry(e.ctx, "org_1", domain.SetExpiry{KeyID: k.Key.ID, ExpiresAt: domain.OptionalTime{Set: true}})
	wantErr(t, err, domain.EPrecondition, "max_lifetime_seconds")

	// Rotate keeps the expiry, capped at now + max.
	e.clk.Advance(30 * time.Minute)
	r, err := e.svc.RotateKey(e.ctx, "org_1", domain.RotateKey{KeyID: k.Key.ID, GracePeriodSeconds: ptr[int64](60)})
	if err != nil {
		t.Fatal(err)
	}
	if !r.Key.ExpiresAt.Equal(t0.Add(time.Hour)) {
		t.Fatalf("rotated key expires %v, want the old key's %v", r.Key.ExpiresAt, t0.Add(time.Hour))
	}

	// require_expiry without a max lifetime refuses a key without one.
	if _, err := e.svc.SetPolicy(e.ctx, "org_2", domain.SetPolicy{RequireExpiry: ptr(true)}); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.CreateKey(e.ctx, "org_2", domain.CreateKey{Name: "x"})
	wantErr(t, err, domain.EPrecondition, "require_expiry")

	// A key holding a permission the policy no longer allows cannot be rotated.
	w := e.create("org_3", domain.CreateKey{Permissions: []string{"posts:write"}})
	if _, err := e.svc.SetPolicy(e.ctx, "org_3", domain.SetPolicy{AllowedPermissions: []string{"posts:read"}}); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.RotateKey(e.ctx, "org_3", domain.RotateKey{KeyID: w.Key.ID, GracePeriodSeconds: ptr[int64](0)})
	wantErr(t, err, domain.EPrecondition, "allowed_permissions")
}

func TestMaxActiveKeysUnderRacingCreates(t *testing.T) {
	e := newEnv(t)
	var ids []string
	for range 2 {
		ids = append(ids, e.create("org_1", domain.CreateKey{}).Key.ID)
	}
	// set_policy counts the keys the read model lists (checked against the
	// stream: a revoked one does not count).
	gone := e.create("org_1", domain.CreateKey{}).Key.ID
	if _, err := e.svc.RevokeKey(e.ctx, "org_1", domain.RevokeKey{KeyID: gone}); err != nil {
		t.Fatal(err)
	}
	e.svc.OrgKeys = func(context.Context, string) ([]string, error) { return append(ids, gone), nil }
	if _, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{MaxActiveKeys: ptr[int64](3)}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	won, refused := 0, 0
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			svc := e.svc
			if i%2 == 1 {
				svc = e.other
			}
			_, err := svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "racer"})
			mu.Lock()
			defer mu.Unlock()
			switch domain.ErrorCode(err) {
			case "":
				won++
			case domain.EPrecondition:
				refused++
			default:
				t.Errorf("create: %v", err)
			}
		}()
	}
	wg.Wait()
	if won != 1 || refused != 19 {
		t.Fatalf("%d creates won and %d were refused; want exactly 1 and 19", won, refused)
	}
	_, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "one more"})
	wantErr(t, err, domain.EPrecondition, "max_active_keys (3)")
}

func TestMaxActiveKeysFreedByRevoke(t *testing.T) {
	e := newEnv(t)
	if _, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{MaxActiveKeys: ptr[int64](1)}); err != nil {
		t.Fatal(err)
	}
	k := e.create("org_1", domain.CreateKey{})
	_, err := e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "second"})
	wantErr(t, err, domain.EPrecondition, "max_active_keys")
	// Suspended still counts.
	if _, err := e.svc.SuspendKey(e.ctx, "org_1", domain.SuspendKey{KeyID: k.Key.ID}); err != nil {
		t.Fatal(err)
	}
	_, err = e.svc.CreateKey(e.ctx, "org_1", domain.CreateKey{Name: "second"})
	wantErr(t, err, domain.EPrecondition, "max_active_keys")
	if _, err := e.svc.RevokeKey(e.ctx, "org_1", domain.RevokeKey{KeyID: k.Key.ID}); err != nil {
		t.Fatal(err)
	}
	e.create("org_1", domain.CreateKey{Name: "second"})
}

func TestReportLeak(t *testing.T) {
	for _, action := range []string{domain.LeakRevoke, domain.LeakSuspend, domain.LeakNotify} {
		t.Run(action, func(t *testing.T) {
			e := newEnv(t)
			if _, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{LeakAction: ptr(action)}); err != nil {
				t.Fatal(err)
			}
			k := e.create("org_1", domain.CreateKey{})
			res, err := e.svc.ReportLeak(e.ctx, "org_1", k.Key.ID, "https://github.com/o/r/blob/x/.env", "content")
			if err != nil || !res.Leaked {
				t.Fatalf("report: %+v %v", res, err)
			}
			want := map[string]string{domain.LeakRevoke: domain.StatusRevoked, domain.LeakSuspend: domain.StatusSuspended, domain.LeakNotify: domain.StatusActive}[action]
			st := e.load("org_1", k.Key.ID)
			if st.Status != want {
				t.Fatalf("status %s after the report, want %s", st.Status, want)
			}
			seq := e.lastSeq()
			if res, err := e.svc.ReportLeak(e.ctx, "org_1", k.Key.ID, "https://github.com/o/r/blob/x/.env", "content"); err != nil || res.Leaked || e.lastSeq() != seq {
				t.Fatalf("a repeated report appended: %+v %v", res, err)
			}
		})
	}
}

// A second, different policy replaces the first: guarded by the
// organization subject's own last sequence, not by 0 (a regression: every
// set_policy after the first was refused as a conflict).
func TestSetPolicyReplaces(t *testing.T) {
	e := newEnv(t)
	for i, notice := range []int64{3600, 7200, 60} {
		res, err := e.svc.SetPolicy(e.ctx, "org_1", domain.SetPolicy{ExpiryNoticeSeconds: ptr(notice)})
		if err != nil {
			t.Fatalf("set_policy %d: %v", i+1, err)
		}
		if res.Policy.Version != int64(i+1) || res.Policy.ExpiryNoticeSeconds != notice || res.Sequence != e.lastSeq() {
			t.Fatalf("set_policy %d: %+v (stream at %d)", i+1, res, e.lastSeq())
		}
	}
	got, err := e.svc.Policy(e.ctx, "org_1")
	if err != nil || got.Policy.ExpiryNoticeSeconds != 60 || got.Policy.Version != 3 {
		t.Fatalf("policy read back: %+v, %v", got, err)
	}
}
