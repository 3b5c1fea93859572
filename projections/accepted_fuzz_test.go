package projections_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/natscmd"
	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/internal/testworld"
	"github.com/keyd-dev/keyd/projections"
	"github.com/keyd-dev/keyd/verifier"
)

// FuzzAcceptedCommands (issue 10, "text every store can hold"): whatever
// command keyd accepts, its read models and verifiers can apply. Each input
// is one command (create, update, revoke, rotate, set_permissions, define or
// roles.define) whose names, metadata keys and values, reasons, descriptions,
// actor ids, idempotency keys, command ids, owner ids and resource ids are
// the fuzzer's strings (pick's bits add an owner, a role and a resource to
// a create, and a role to a set_permissions). It runs through
// the real edge (the NATS responder, or the command Runner both edges share)
// and the real domain service onto a real in-process JetStream; a command
// the edge refuses is skipped. An accepted one must then be applied by the
// real Postgres projector and the real verifier, and the read model's row
// and the verifier's verdict must match the command's reply. Finding H1 was
// a NUL the edge accepted and the projector could never apply: its vectors
// are the seeds.
//
// One world (database, stream, projector, verifier, responder) serves every
// input of a process, so an execution costs one command and its
// application. After a failure the world is no longer trusted: later inputs
// of that process are skipped, and the failing input is reported as found.
func FuzzAcceptedCommands(f *testing.F) {
	type seed struct {
		op, pick      uint8
		overNATS      bool
		a, b, c, d, e string
	}
	const (
		create = iota
		update
		revoke
		rotate
		setPerms
		define
		defineRole
		ops
	)
	for _, s := range []seed{
		// Accepted commands of every kind, with free text where allowed.
		{define, 0, false, "Read posts:\n\t- list\n\t- get", "", "", "", "admin"},
		{define, 1, true, "Write posts <b>", "", "", "", "svc"},
		{create, 0, false, "CI deploy é漢字🔑", "team", "ops", "idem-1", "alice"},
		{create, 1, true, "over NATS", "env", "prod", "", "bob"},
		{update, 0, false, "renamed", "k", "v 🙂", "cmd-1", "alice"},
		{setPerms, 3, false, "", "", "", "", "alice"},
		{rotate, 1, true, "", "", "", "cmd-2", "carol"},
		{revoke, 0, false, "leaked:\n\tin CI logs", "", "", "", "alice"},
		// Every vector of H1 (refused now: skipped, and nothing appended).
		{create, 0, false, "a\x00b", "", "", "", "alice"},     // name
		{create, 0, true, "a\x00b", "", "", "", "alice"},      // name over NATS
		{create, 0, false, "n", "team", "x\x00", "", "alice"}, // metadata value
		{create, 0, true, "n", "team", "x\x00", "", "alice"},
		{create, 0, false, "n", "te\x00am", "x", "", "alice"}, // metadata key
		{revoke, 0, false, "leaked\x00", "", "", "", "alice"}, // revoke reason
		{revoke, 0, true, "leaked\x00", "", "", "", "alice"},
		{create, 0, false, "n", "", "", "i\x00", "alice"}, // idempotency key
		{create, 0, true, "n", "", "", "i\x00", "alice"},
		{create, 0, false, "n", "", "", "", "bob\x00"}, // actor (admin or NATS)
		{create, 0, true, "n", "", "", "", "bob\x00"},
		{create, 0x80, false, "n", "", "", "", "alice\x00"}, // session user (pick's high bit: a widget session's actor)
		{define, 2, false, "<b>\x00", "", "", "", "admin"},  // permission description
		{define, 2, true, "<b>\x00", "", "", "", "admin"},
		{update, 0, false, "\x00", "", "", "", "alice"},
		// I2: control and bidi characters.
		{create, 0, false, "\u202egnp.exe \a\x1b[31m", "", "", "", "alice"},
		{create, 0, false, "n", "k", "\u2066x\u2069", "", "alice"},
		{revoke, 1, false, "a\r\nb", "", "", "", "alice"},
		{rotate, 0, false, "", "", "", "id\u0085", "alice"}, // command id
		// Owners, roles and resources (issue 12).
		{defineRole, 1, false, "Edits posts:\n\t- write", "", "", "", "admin"},
		{defineRole, 3, true, "Role <b>", "", "", "", "admin"},
		{defineRole, 1, false, "r\x00", "", "", "", "admin"},
		{create, 0x70, false, "owned, with role and resource", "alice", "p_1", "", "alice"},
		{create, 0x60, true, "owned over NATS", "bob@example.com", "p/2", "", "bob"},
		{create, 0x40, false, "bad owner", "al\x00ice", "", "", "alice"},
		{create, 0x20, false, "bad resource", "", "p\u202e1", "", "alice"},
		{setPerms, 0x13, false, "", "", "", "", "alice"},
	} {
		f.Add(s.op, s.pick, s.overNATS, s.a, s.b, s.c, s.d, s.e)
	}
	w := newAcceptWorld(f)
	f.Fuzz(func(t *testing.T, op, pick uint8, overNATS bool, a, b, c, d, e string) {
		if w.broken != "" {
			t.Skipf("the world broke on an earlier input (%s)", w.broken)
		}
		var cmd accepted
		switch op % ops {
		case create:
			body := map[string]any{"name": a, "idempotency_key": d}
			if b != "" && pick&0x40 == 0 {
				body["metadata"] = map[string]string{b: c}
			}
			if pick&0x40 != 0 {
				body["owner"] = map[string]string{"type": domain.OwnerUser, "id": b}
			}
			if pick&0x20 != 0 {
				body["resources"] = []string{"project:" + c}
			}
			if pick&0x10 != 0 {
				body["roles"] = []string{"fuzz-role-0"}
			}
			cmd = w.run(t, commands.Create, overNATS, "", d, e, pick, body)
		case update:
			k := w.key(t, pick)
			body := map[string]any{"key_id": k}
			if a != "" {
				body["name"] = a
			}
			if b != "" {
				body["metadata"] = map[string]string{b: c}
			}
			cmd = w.run(t, commands.Update, overNATS, k, d, e, pick, body)
		case revoke:
			k := w.key(t, pick)
			cmd = w.run(t, commands.Revoke, overNATS, k, d, e, pick, map[string]any{"key_id": k, "reason": a})
		case rotate:
			k := w.key(t, pick)
			cmd = w.run(t, commands.Rotate, overNATS, k, d, e, pick, map[string]any{"key_id": k, "grace_period_seconds": int64(pick%2) * 3600})
		case setPerms:
			k := w.key(t, pick)
			perms := []string{}
			for i := range 4 {
				if pick&(1<<i) != 0 {
					perms = append(perms, fmt.Sprintf("fuzz:p%d", i))
				}
			}
			body := map[string]any{"key_id": k, "permissions": perms}
			if pick&0x10 != 0 {
				body["roles"] = []string{fmt.Sprintf("fuzz-role-%d", pick>>5&1)}
			}
			cmd = w.run(t, commands.SetPermissions, overNATS, k, d, e, pick, body)
		case define:
			cmd = w.run(t, commands.Define, overNATS, "", d, e, pick, map[string]any{"slug": fmt.Sprintf("fuzz:p%d", pick%4), "description": a})
		case defineRole:
			perms := []string{}
			for i := range 4 {
				if pick&(1<<i) != 0 {
					perms = append(perms, fmt.Sprintf("fuzz:p%d", i))
				}
			}
			cmd = w.run(t, commands.DefineRole, overNATS, "", d, e, pick, map[string]any{"slug": fmt.Sprintf("fuzz-role-%d", pick>>4&1), "description": a, "permissions": perms})
		}
		if cmd.skipped {
			return
		}
		w.check(t, cmd)
	})
}

// acceptWorld is the one keyd every input of a process runs on.
type acceptWorld struct {
	ctx       context.Context
	logs      *testenv.SyncBuffer
	events    *testworld.Events
	runner    *commands.Runner
	projector *projections.Projector
	projDone  chan error
	verifier  *verifier.Verifier
	reads     *postgres.ReadModel
	org       string
	keys      []heldKey // keys to run commands on (at most maxHeldKeys)
	next      int       // the slot the next new key takes once keys is full
	broken    string    // why the world is no longer trusted
}

type heldKey struct{ id, secret string }

const maxHeldKeys = 32

// applyTimeout bounds the wait for the projector and the verifier to apply
// an accepted command (generous: CI machines are slow under -race).
const applyTimeout = 20 * time.Second

func newAcceptWorld(f *testing.F) *acceptWorld {
	pool, _ := testworld.MigratedPool(f)
	events := testworld.EventStream(f)
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	svc := events.Service([]byte("accepted commands fuzz secret"))
	idem, err := eventstore.NewKVIdempotency(ctx, events.JS, 1)
	if err != nil {
		f.Fatal(err)
	}
	svc.Idempotency = idem
	// Not testenv.Logger: f's log may not be written while inputs run. The
	// logs are shown when an input fails.
	logs := &testenv.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	w := &acceptWorld{
		ctx: ctx, logs: logs, events: events, org: "fuzzorg",
		reads:     postgres.NewReadModel(pool, nil),
		projector: projections.NewProjector(pool, events.JS, log),
		projDone:  make(chan error, 1),
	}
	w.projector.EventKey = events.EventKey
	go func() { w.projDone <- w.projector.Run(ctx) }()
	f.Cleanup(func() { cancel(); <-w.projDone })
	w.verifier = verifier.New(verifier.Config{Pool: pool, JS: events.JS, Conn: events.Conn, Digester: svc.Digester, EventKey: events.EventKey, Log: log, LastUsedInterval: -1})
	if err := w.verifier.Start(ctx); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(w.verifier.Close)
	w.runner = &commands.Runner{Service: svc, WaitApplied: w.verifier.WaitApplied, Log: log}
	resp := &natscmd.Responder{Conn: events.Conn, Runner: w.runner, Log: log}
	if err := resp.Start(); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { resp.Stop(context.Background()) })
	return w
}

// accepted is a command the edge accepted, with its reply.
type accepted struct {
	skipped bool
	name    string
	reply   []byte
	seq     uint64
	keyIDs  []string // the keys it replied with (rotate: new, then previous)
}

// run sends the command over NATS (with Keyd-Command-Id commandID when a
// NATS header can carry it) or straight to the Runner, as the admin token
// with actor {"type": "user", "id": actorID} or, when pick's high bit is
// set, as a widget session of user actorID (the HTTP edge's Transport.Actor;
// such a session is issued only for a user id that passes the same check).
func (w *acceptWorld) run(t *testing.T, name string, overNATS bool, keyID, commandID, actorID string, pick uint8, body map[string]any) accepted {
	t.Helper()
	if keyID == "" && name != commands.Create && name != commands.Define && name != commands.DefineRole {
		return accepted{skipped: true}
	}
	tr := commands.Transport{CommandID: commandID}
	if pick&0x80 != 0 && !overNATS {
		tr.Actor = &domain.Actor{Type: "user", ID: actorID}
	} else {
		body["actor"] = map[string]string{"type": "user", "id": actorID}
	}
	payload, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	before := w.events.LastSeq(t)
	var data []byte
	var code string
	if overNATS && !strings.ContainsAny(commandID, "\r\n\x00") {
		subject := "keyd.cmd.keys." + w.org + "." + name
		switch name {
		case commands.Define:
			subject = "keyd.cmd.permissions.define"
		case commands.DefineRole:
			subject = "keyd.cmd.roles.define"
		}
		m := nats.NewMsg(subject)
		m.Data = payload
		if commandID != "" {
			m.Header.Set(commands.CommandIDHeader, commandID)
		}
		r, err := w.events.Conn.RequestMsg(m, applyTimeout)
		if err != nil {
			w.fail(t, "request %s: %v", subject, err)
		}
		data, code = r.Data, r.Header.Get(natscmd.ErrorCodeHeader)
	} else {
		reply, err := w.runner.Run(w.ctx, name, w.org, payload, tr)
		if code = domain.ErrorCode(err); err == nil {
			if data, err = json.Marshal(reply); err != nil {
				t.Fatal(err)
			}
		}
	}
	if code != "" {
		// Refused (or changed nothing it could): whatever it was, it must
		// not have appended anything.
		if code == domain.EInternal || code == domain.EUnavailable {
			w.fail(t, "%s %s: %s %s", name, payload, code, data)
		}
		if after := w.events.LastSeq(t); after != before {
			w.fail(t, "%s %s was refused (%s) but the stream went from %d to %d", name, payload, code, before, after)
		}
		t.Logf("refused (skipped): %s %s: %s %s", name, payload, code, data)
		return accepted{skipped: true}
	}
	var r struct {
		Key      *domain.KeyView `json:"key"`
		Previous *domain.KeyView `json:"previous"`
		Secret   string          `json:"secret"`
		Sequence uint64          `json:"sequence"`
	}
	if err := json.Unmarshal(data, &r); err != nil {
		w.fail(t, "%s reply %s: %v", name, data, err)
	}
	a := accepted{name: name, reply: data, seq: r.Sequence}
	if r.Key != nil {
		a.keyIDs = append(a.keyIDs, r.Key.ID)
		if r.Secret != "" {
			w.hold(heldKey{id: r.Key.ID, secret: r.Secret})
		}
	}
	if r.Previous != nil {
		a.keyIDs = append(a.keyIDs, r.Previous.ID)
	}
	return a
}

// key returns the id of a held key (pick chooses), creating one if none is
// held.
func (w *acceptWorld) key(t *testing.T, pick uint8) string {
	t.Helper()
	if len(w.keys) == 0 {
		a := w.run(t, commands.Create, false, "", "", "fuzz", 0, map[string]any{"name": "base"})
		if a.skipped {
			w.fail(t, "a plain create was refused")
		}
		w.check(t, a)
	}
	return w.keys[int(pick&0x7f)%len(w.keys)].id
}

func (w *acceptWorld) hold(k heldKey) {
	if len(w.keys) < maxHeldKeys {
		w.keys = append(w.keys, k)
		return
	}
	w.keys[w.next] = k
	w.next = (w.next + 1) % maxHeldKeys
}

func (w *acceptWorld) secretOf(id string) string {
	for _, k := range w.keys {
		if k.id == id {
			return k.secret
		}
	}
	return ""
}

// check waits until the projector and the verifier have applied a, then
// compares what they hold with a's reply.
func (w *acceptWorld) check(t *testing.T, a accepted) {
	t.Helper()
	ctx, cancel := context.WithTimeout(w.ctx, applyTimeout)
	defer cancel()
	var failingSince time.Time
	for {
		st := w.projector.Status()
		if st.Applied >= a.seq {
			break
		}
		// A projector that keeps failing on the command's event will not
		// get past it (it retries with backoff): say so without waiting
		// out applyTimeout.
		switch {
		case st.Err == nil:
			failingSince = time.Time{}
		case failingSince.IsZero():
			failingSince = time.Now()
		case time.Since(failingSince) > 3*time.Second:
			w.fail(t, "the projector keeps failing before applying %s %s (sequence %d): applied %d, error %v", a.name, a.reply, a.seq, st.Applied, st.Err)
		}
		select {
		case err := <-w.projDone:
			w.fail(t, "the projector stopped at %d before applying %s (sequence %d): %v", st.Applied, a.reply, a.seq, err)
		case <-ctx.Done():
			w.fail(t, "the projector did not apply %s %s (sequence %d) within %s: applied %d, error %v", a.name, a.reply, a.seq, applyTimeout, st.Applied, st.Err)
		case <-time.After(time.Millisecond):
		}
	}
	if err := w.verifier.WaitApplied(ctx, a.seq); err != nil || !w.verifier.Ready() {
		w.fail(t, "the verifier did not apply %s %s (sequence %d): %v; status %+v", a.name, a.reply, a.seq, err, w.verifier.Status())
	}
	if a.name == commands.Define {
		var p domain.PermissionResult
		if err := json.Unmarshal(a.reply, &p); err != nil {
			t.Fatal(err)
		}
		list, err := w.reads.ListPermissions(ctx)
		if err != nil {
			w.fail(t, "list permissions: %v", err)
		}
		if !slices.Contains(list, p.Permission) {
			w.fail(t, "the catalog read model %+v lacks %+v", list, p.Permission)
		}
		return
	}
	if a.name == commands.DefineRole {
		var r domain.RoleResult
		if err := json.Unmarshal(a.reply, &r); err != nil {
			t.Fatal(err)
		}
		list, err := w.reads.ListRoles(ctx)
		if err != nil {
			w.fail(t, "list roles: %v", err)
		}
		if !slices.ContainsFunc(list, func(x domain.Role) bool {
			return x.Slug == r.Role.Slug && x.Description == r.Role.Description && slices.Equal(x.Permissions, r.Role.Permissions)
		}) {
			w.fail(t, "the role read model %+v lacks %+v", list, r.Role)
		}
		return
	}
	for _, id := range a.keyIDs {
		w.checkKey(t, ctx, a, id)
	}
	events, _, err := w.reads.ListEvents(ctx, w.org, a.seq-1, 1)
	if err != nil || len(events) != 1 {
		w.fail(t, "audit events after %d: %v %s", a.seq-1, err, events)
	}
}

// checkKey compares key id in the read model and in the verifier with the
// event store's state of it.
func (w *acceptWorld) checkKey(t *testing.T, ctx context.Context, a accepted, id string) {
	t.Helper()
	want, _, err := w.runner.Service.LoadKey(ctx, w.org, id)
	if err != nil {
		w.fail(t, "load %s: %v", id, err)
	}
	got, err := w.reads.GetKey(ctx, w.org, id)
	if err != nil {
		w.fail(t, "read model: key %s after %s: %v", id, a.reply, err)
	}
	if got.Name != want.Name || !maps.Equal(got.Metadata, want.Metadata) || !slices.Equal(got.Permissions, want.Permissions) ||
		got.Version != want.Version || (got.Status == domain.StatusRevoked) != (want.Status == domain.StatusRevoked) ||
		got.Owner != want.Owner || !slices.Equal(orNone(got.Roles), orNone(want.Roles)) || !slices.Equal(orNone(got.Resources), orNone(want.Resources)) {
		w.fail(t, "read model row %+v does not match the key %+v after %s", got, want, a.reply)
	}
	secret := w.secretOf(id)
	if secret == "" {
		return
	}
	res, err := w.verifier.Verify(ctx, secret)
	if err != nil {
		w.fail(t, "verify %s: %v", id, err)
	}
	if want.Status == domain.StatusRevoked {
		if res.Code != verifier.CodeRevoked {
			w.fail(t, "revoked key %s verifies as %q", id, res.Code)
		}
		return
	}
	perms, _, err := w.runner.Service.Catalog(ctx)
	if err != nil {
		w.fail(t, "catalog: %v", err)
	}
	roles, _, err := w.runner.Service.Roles(ctx)
	if err != nil {
		w.fail(t, "roles: %v", err)
	}
	k := res.Key
	if k.ID != id || k.Name != want.Name || !maps.Equal(k.Metadata, want.Metadata) || k.Owner != want.Owner ||
		!slices.Equal(k.Permissions, domain.Effective(want.Permissions, want.Roles, perms, roles)) || !slices.Equal(k.Resources, orNone(want.Resources)) {
		w.fail(t, "the verifier's key %+v does not match the key %+v after %s", k, want, a.reply)
	}
}

// fail marks the world broken and fails the input.
func (w *acceptWorld) fail(t *testing.T, format string, args ...any) {
	t.Helper()
	w.broken = fmt.Sprintf(format, args...)
	t.Fatalf("%s\nkeyd's warnings and errors so far:\n%s", w.broken, w.logs.String())
}

func orNone(ss []string) []string {
	if ss == nil {
		return []string{}
	}
	return ss
}
