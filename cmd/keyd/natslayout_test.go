package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// The reference NATS layout is deploy/nats/accounts.conf, included by the
// three node configurations of docker-compose.yml.
var (
	layoutDir      = filepath.Join("..", "..", "deploy", "nats")
	layoutAccounts = filepath.Join(layoutDir, "accounts.conf")
	layoutNode1    = filepath.Join(layoutDir, "nats-1.conf")
)

// The passwords the layout reads from the environment, as compose passes
// them (hex, as the compose file's header recommends).
var layoutPasswords = map[string]string{
	"KEYD_NATS_PASSWORD":       "4b1d0c8e2f6a9b3d5e7f0a1c2b4d6e8f0a1b2c3d4e5f6a7b",
	"APP_NATS_PASSWORD":        "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718",
	"APP_AUDIT_NATS_PASSWORD":  "5a5a5a5a0b0b0b0b1c1c1c1c2d2d2d2d3e3e3e3e4f4f4f4f",
	"ACME_NATS_PASSWORD":       "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a6978",
	"KEYD_NATS_ROUTE_PASSWORD": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f",
	"KEYD_NATS_ROUTES":         "[nats://route:9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f@127.0.0.1:1]",
	"GLOBEX_NATS_PASSWORD":     "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00",
}

// setLayoutEnv sets the variables the layout's configuration reads. Tests
// that call it cannot be parallel (t.Setenv), which also keeps them from
// running beside TestDockerCompose, which sets the same names.
func setLayoutEnv(t *testing.T) {
	t.Helper()
	for k, v := range layoutPasswords {
		t.Setenv(k, v)
	}
}

// TestNATSLayoutLoadsReliably: the shipped node configuration loads, 50
// times in a row, with every account, export and import in place. nats-server
// authorizes an import against the first export that covers it in Go map
// order (Account.checkServiceExportApproved / checkStreamExportApproved in
// server/accounts.go), so a layout whose exports overlap loads only
// sometimes; the control case below shows that this is still so, and why the
// layout routes tenants through the TENANTS hub account.
func TestNATSLayoutLoadsReliably(t *testing.T) {
	setLayoutEnv(t)
	for i := range 50 {
		opts, err := server.ProcessConfigFile(layoutNode1)
		if err != nil {
			t.Fatalf("load %d of %s: %v", i+1, layoutNode1, err)
		}
		accs := map[string]*server.Account{}
		for _, a := range opts.Accounts {
			accs[a.Name] = a
		}
		for _, name := range []string{"KEYD", "APP", "TENANTS", "acme"} {
			if accs[name] == nil {
				t.Fatalf("load %d: no account %s", i+1, name)
			}
		}
		if !opts.JetStream || opts.Cluster.Name != "keyd" || opts.Cluster.Username != "route" ||
			opts.Cluster.Password != layoutPasswords["KEYD_NATS_ROUTE_PASSWORD"] || len(opts.Routes) != 1 {
			t.Fatalf("load %d: jetstream=%v cluster=%q route user=%q routes=%v", i+1, opts.JetStream, opts.Cluster.Name, opts.Cluster.Username, opts.Routes)
		}
		users := map[string]*server.User{}
		for _, u := range opts.Users {
			users[u.Username] = u
		}
		for user, acc := range map[string]string{"keyd": "KEYD", "app_audit": "KEYD", "app": "APP", "acme": "acme"} {
			u := users[user]
			if u == nil || u.Account == nil || u.Account.Name != acc {
				t.Fatalf("load %d: user %s is not in account %s: %+v", i+1, user, acc, u)
			}
		}
		if p := users["keyd"].Password; p != layoutPasswords["KEYD_NATS_PASSWORD"] {
			t.Fatalf("load %d: keyd's password %q is not the environment's", i+1, p)
		}
		if users["keyd"].Permissions == nil || users["keyd"].Permissions.Response == nil {
			t.Fatalf("load %d: keyd's user does not have allow_responses", i+1)
		}
		if len(users) != 4 {
			t.Fatalf("load %d: users %v, want keyd, app_audit, app and acme only", i+1, users)
		}
	}

	// A password missing from the environment stops the server from
	// starting, instead of leaving an account open.
	t.Setenv("APP_NATS_PASSWORD", "")
	os.Unsetenv("APP_NATS_PASSWORD")
	if _, err := server.ProcessConfigFile(layoutNode1); err == nil || !strings.Contains(err.Error(), "APP_NATS_PASSWORD") {
		t.Fatalf("loading without APP_NATS_PASSWORD: %v, want an error naming it", err)
	}

	// Control: one account exporting keyd.cmd.> to APP beside
	// keyd.cmd.keys.*.> for tenants fails to load now and then.
	overlapping := `
accounts {
  KEYD { exports: [
    { service: "keyd.cmd.>", accounts: [APP] }
    { service: "keyd.cmd.keys.*.>", account_token_position: 4 }
  ] }
  APP { imports: [ { service: { account: KEYD, subject: "keyd.cmd.>" } } ] }
  acme { imports: [ { service: { account: KEYD, subject: "keyd.cmd.keys.acme.>" } } ] }
}
`
	failed := 0
	for range 50 {
		var o server.Options
		if err := o.ProcessConfigString(overlapping); err != nil {
			failed++
		}
	}
	if failed == 0 {
		t.Errorf("the overlapping layout loaded 50 times out of 50: nats-server now authorizes imports deterministically, and the TENANTS hub of %s may be simplified away", layoutAccounts)
	}
	t.Logf("the overlapping layout failed to load %d times out of 50", failed)
}

// TestNATSLayoutRefusesForeignImports: a tenant account that imports another
// organization's commands or events does not load: account_token_position
// ties each slice to the account named as its org.
func TestNATSLayoutRefusesForeignImports(t *testing.T) {
	setLayoutEnv(t)
	for _, slice := range []string{"keyd.cmd.keys.", "keyd.events.keys."} {
		dir := writeLayout(t, func(accounts string) string {
			globex := tenantAccount(t, accounts, "globex")
			globex = strings.Replace(globex, `subject: "`+slice+`globex.>"`, `subject: "`+slice+`acme.>"`, 1)
			return addAccount(t, accounts, globex)
		})
		_, err := server.ProcessConfigFile(filepath.Join(dir, "nats-1.conf"))
		if err == nil || !strings.Contains(err.Error(), "not authorized") {
			t.Errorf("account globex importing %sacme.>: %v, want not authorized", slice, err)
		}
	}
}

// TestNATSLayout runs keyd serve on a nats-server started from the shipped
// layout (one node; ports and store moved to loopback and a temp dir) with
// a second tenant, globex, added as accounts.conf tells operators to (plus
// a user with no permission limits at all, to show that the accounts alone
// keep tenants apart), and shows:
//   - a tenant runs its own org's commands and gets the replies, and sees
//     its own org's audit events;
//   - a tenant cannot command another org (acme's user: permissions
//     violation; globex's unlimited user: no responders, nothing appended),
//     nor the permission catalog;
//   - a tenant receives nothing of another tenant's replies (an `>`
//     subscriber in globex sees none of acme's create reply or secret) nor
//     of its audit events;
//   - a tenant cannot write to keyd.events.>: the publishes are refused or
//     land in its own account, and KEYD_EVENTS gains nothing from them; a
//     reply subject pointed at keyd.events.… (finding C1) stays in the
//     tenant's account too;
//   - APP commands every org and the catalog, and its read-only user in
//     KEYD (app_audit) reads every audit subject and can publish nothing;
//   - keyd's own user lacks no permission it needs (no violation logged
//     for it while it serves all of this).
func TestNATSLayout(t *testing.T) {
	setLayoutEnv(t)
	dir := writeLayout(t, func(accounts string) string {
		globex := tenantAccount(t, accounts, "globex")
		globex = strings.Replace(globex, "users: [", `users: [
      { user: globex_any, password: $GLOBEX_NATS_PASSWORD }`, 1)
		return addAccount(t, accounts, globex)
	})
	opts, err := server.ProcessConfigFile(filepath.Join(dir, "nats-1.conf"))
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port = "127.0.0.1", -1
	opts.HTTPHost, opts.HTTPPort = "", 0
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	slog := &serverLog{}
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.SetLoggerV2(slog, false, false, false)
	go ns.Start()
	t.Cleanup(func() { testenv.ShutdownServer(ns) })
	if !ns.ReadyForConnections(30 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	testenv.WaitFor(t, 30*time.Second, "JetStream on", ns.JetStreamEnabled)
	addr := strings.TrimPrefix(ns.ClientURL(), "nats://")
	userURL := func(user, pwEnv string) string {
		return "nats://" + url.UserPassword(user, layoutPasswords[pwEnv]).String() + "@" + addr
	}

	const token = "kat_5f0c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7"
	keyd := MustStart(t, map[string]string{"KEYD_ADMIN_TOKEN": token, "KEYD_SECRET": testSecret},
		"serve", "--http", "127.0.0.1:0", "--database-url", testenv.PostgresURL(t),
		"--nats-url", userURL("keyd", "KEYD_NATS_PASSWORD"))
	if strings.Contains(keyd.App.NATSURL, layoutPasswords["KEYD_NATS_PASSWORD"]) {
		t.Errorf("keyd reports its NATS URL with the password: %s", keyd.App.NATSURL)
	}

	app := layoutConn(t, "test app", userURL("app", "APP_NATS_PASSWORD"))
	appAudit := layoutConn(t, "test app_audit", userURL("app_audit", "APP_AUDIT_NATS_PASSWORD"))
	acme := layoutConn(t, "test acme", userURL("acme", "ACME_NATS_PASSWORD"))
	globex := layoutConn(t, "test globex", userURL("globex", "GLOBEX_NATS_PASSWORD"))
	globexAny := layoutConn(t, "test globex_any", userURL("globex_any", "GLOBEX_NATS_PASSWORD"))
	keydSide := layoutConn(t, "test keyd", userURL("keyd", "KEYD_NATS_PASSWORD")) // to read KEYD_EVENTS
	js, err := jetstream.New(keydSide.nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	stream, err := js.Stream(ctx, "KEYD_EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	lastSeq := func() uint64 {
		t.Helper()
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq
	}

	// No tenant commands another org or the catalog, and no tenant writes
	// to keyd.events.>. (Before any subscriber exists in globex's account,
	// so that a request nobody in KEYD answers meets no responders.)
	before := lastSeq()
	if _, err := acme.nc.Request("keyd.cmd.keys.globex.create", []byte(`{"name":"x"}`), time.Second); err == nil {
		t.Error("acme's request on globex's create subject was answered")
	}
	acme.awaitViolation(t, `Publish to "keyd.cmd.keys.globex.create"`)
	for _, subj := range []string{"keyd.cmd.keys.acme.create", "keyd.cmd.permissions.define", "keyd.cmd.keys.globex2.create"} {
		if _, err := globexAny.nc.Request(subj, []byte(`{"name":"x","slug":"posts:write","description":"x"}`), 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
			t.Errorf("globex's unlimited user on %s: %v, want no responders", subj, err)
		}
	}
	if _, err := acme.nc.SubscribeSync("keyd.events.keys.globex.>"); err != nil {
		t.Fatal(err)
	}
	acme.awaitViolation(t, `Subscription to "keyd.events.keys.globex.>"`)
	// acme's user is refused; globex's unlimited user publishes into its own
	// account, where no stream and no JetStream are.
	forged := []byte(`{"id":"evt_forged","type":"key.updated","forged":"forged-by-a-tenant"}`)
	if err := acme.nc.Publish("keyd.events.keys.acme.key_01M8SB00000000000000000000", forged); err != nil {
		t.Fatal(err)
	}
	acme.awaitViolation(t, `Publish to "keyd.events.keys.acme.key_01M8SB00000000000000000000"`)
	for _, subj := range []string{"keyd.events.keys.acme.key_01M8SB00000000000000000000", "keyd.events.keys.globex.key_01M8SB00000000000000000000", "keyd.events.permissions", "$JS.API.STREAM.DELETE.KEYD_EVENTS", "$JS.API.STREAM.PURGE.KEYD_EVENTS"} {
		if err := globexAny.nc.Publish(subj, forged); err != nil {
			t.Fatal(err)
		}
	}
	gjs, err := jetstream.New(globexAny.nc)
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	if _, err := gjs.Publish(pctx, "keyd.events.keys.globex.key_01M8SB00000000000000000000", forged); !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) {
		t.Errorf("a JetStream publish from globex's account: %v, want no responders", err)
	}
	pcancel()
	if err := globexAny.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := lastSeq(); got != before {
		t.Errorf("KEYD_EVENTS' last sequence went from %d to %d on tenants' commands and writes", before, got)
	}

	// The backend's read-only user inside KEYD publishes nothing.
	for _, subj := range []string{"keyd.events.keys.acme.key_01M8SB00000000000000000000", "keyd.cmd.keys.acme.create"} {
		if err := appAudit.nc.Publish(subj, forged); err != nil {
			t.Fatal(err)
		}
		appAudit.awaitViolation(t, `Publish to "`+subj+`"`)
	}
	if got := lastSeq(); got != before {
		t.Errorf("KEYD_EVENTS' last sequence went from %d to %d on app_audit's writes", before, got)
	}

	appEvents := appAudit.sniff(t, "keyd.events.>")
	acmeEvents := acme.sniff(t, "keyd.events.keys.acme.>")
	acmeInbox := acme.sniff(t, "_INBOX.>")
	globexEvents := globex.sniff(t, "keyd.events.keys.globex.>")
	globexInbox := globex.sniff(t, "_INBOX.>")
	globexAll := globexAny.sniff(t, ">")

	// APP defines the catalog (the first event since the writes above: none
	// of them got in before it); tenants create keys in their own orgs.
	mustOK(t, request(t, app.nc, "keyd.cmd.permissions.define", `{"slug":"posts:read","description":"Read posts"}`))
	if got := lastSeq(); got != before+1 {
		t.Errorf("KEYD_EVENTS' last sequence is %d after one define, want %d", got, before+1)
	}
	acmeKey := mustOK(t, request(t, acme.nc, "keyd.cmd.keys.acme.create", `{"name":"acme ci","permissions":["posts:read"]}`))
	acmeSecret, _ := acmeKey["secret"].(string)
	acmeID, _ := keyOf(acmeKey)["id"].(string)
	if !strings.HasPrefix(acmeSecret, "sk_") || acmeID == "" {
		t.Fatalf("acme's create reply: %v", acmeKey)
	}
	globexKey := mustOK(t, request(t, globex.nc, "keyd.cmd.keys.globex.create", `{"name":"globex ci"}`))
	globexSecret, _ := globexKey["secret"].(string)
	globexID, _ := keyOf(globexKey)["id"].(string)
	if !strings.HasPrefix(globexSecret, "sk_") || globexID == "" {
		t.Fatalf("globex's create reply: %v", globexKey)
	}
	mustOK(t, request(t, acme.nc, "keyd.cmd.keys.acme.revoke", map[string]string{"key_id": acmeID, "reason": "test"}))
	// A retried command (Keyd-Command-Id) is answered from keyd's
	// idempotency records, which its user must be allowed to write.
	var retried []string
	for range 2 {
		m := nats.NewMsg("keyd.cmd.keys.acme.create")
		m.Header.Set("Keyd-Command-Id", "layout-retry-1")
		m.Data = []byte(`{"name":"retried"}`)
		reply, err := acme.nc.RequestMsg(m, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		if err := json.Unmarshal(reply.Data, &out); err != nil {
			t.Fatalf("retried create: %q", reply.Data)
		}
		id, _ := keyOf(mustOK(t, out))["id"].(string)
		retried = append(retried, id)
	}
	if retried[0] == "" || retried[0] != retried[1] {
		t.Errorf("a retried create made keys %v, want one", retried)
	}

	// Each tenant sees its own org's events; APP sees all of them.
	acmeEvents.await(t, "keyd.events.keys.acme."+acmeID, 2)
	globexEvents.await(t, "keyd.events.keys.globex."+globexID, 1)
	appEvents.await(t, "keyd.events.keys.acme."+acmeID, 2)
	appEvents.await(t, "keyd.events.keys.globex."+globexID, 1)
	appEvents.await(t, "keyd.events.permissions", 1)

	// APP commands any org.
	appKey := mustOK(t, request(t, app.nc, "keyd.cmd.keys.globex.create", `{"name":"made by the backend"}`))
	appKeyID, _ := keyOf(appKey)["id"].(string)
	appEvents.await(t, "keyd.events.keys.globex."+appKeyID, 1)
	globexEvents.await(t, "keyd.events.keys.globex."+appKeyID, 1)

	// A command whose reply subject points into keyd.events.… (finding C1):
	// keyd answers on _R_.… in its own account, which the server maps back
	// to that subject in globex's account; the stream gains the new key's
	// event and nothing else.
	seq := lastSeq()
	poisoned := "keyd.events.keys.globex.key_01M8SB99999999999999999999"
	if err := globexAny.nc.PublishRequest("keyd.cmd.keys.globex.create", poisoned, []byte(`{"name":"reply-to poison"}`)); err != nil {
		t.Fatal(err)
	}
	if poison := globexAll.await(t, poisoned, 1)[0]; !strings.Contains(string(poison.Data), `"secret"`) {
		t.Fatalf("the reply on %s is %s", poisoned, poison.Data)
	}
	mustOK(t, request(t, app.nc, "keyd.cmd.keys.acme.create", `{"name":"barrier"}`))
	if got := lastSeq(); got != seq+2 {
		t.Errorf("KEYD_EVENTS' last sequence is %d, want %d (the reply-to create's event, the barrier's)", got, seq+2)
	}
	for seq := uint64(1); seq <= lastSeq(); seq++ {
		m, err := stream.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(m.Data), "forged") || strings.Contains(string(m.Data), `"secret"`) ||
			m.Header.Get("Keyd-Event-Type") == "" || m.Subject == poisoned {
			t.Errorf("KEYD_EVENTS sequence %d (%s) is not keyd's event: %s", seq, m.Subject, m.Data)
		}
	}

	// Barriers for the absence checks below: each tenant has received its
	// latest reply and event, so the server has routed everything before
	// them; a flush delivers whatever was routed to the sniffers.
	for _, c := range []*layoutClient{app, appAudit, acme, globex, globexAny} {
		if err := c.nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range []*sniffer{globexInbox, globexEvents, globexAll} {
		for _, m := range s.all() {
			if strings.Contains(string(m.Data), acmeSecret) || strings.Contains(string(m.Data), acmeID) ||
				strings.Contains(m.Subject, ".acme.") || strings.Contains(string(m.Data), `"acme"`) {
				t.Errorf("globex's %s subscriber received acme's %s: %s", s.subject, m.Subject, m.Data)
			}
		}
	}
	if len(globexAll.all()) == 0 || len(globexInbox.all()) == 0 {
		t.Fatal("globex's sniffers saw nothing at all, not even globex's own traffic")
	}
	for _, s := range []*sniffer{acmeInbox, acmeEvents} {
		for _, m := range s.all() {
			if strings.Contains(string(m.Data), globexSecret) || strings.Contains(string(m.Data), globexID) || strings.Contains(m.Subject, ".globex.") {
				t.Errorf("acme's %s subscriber received globex's %s: %s", s.subject, m.Subject, m.Data)
			}
		}
	}
	if n := len(acmeInbox.all()); n < 2 {
		t.Errorf("acme's _INBOX.> subscriber saw %d messages, want at least its own 2 replies", n)
	}

	// keyd's user had every permission it used.
	if v := slog.violations(`KEYD/User \"keyd\"`); len(v) > 0 {
		t.Errorf("nats-server refused keyd's own user:\n%s", strings.Join(v, "\n"))
	}
	if len(slog.violations("test acme")) == 0 {
		t.Errorf("the server log shows none of acme's violations; is it captured?\n%s", strings.Join(slog.violations(""), "\n"))
	}
}

// writeLayout copies the shipped node 1 configuration and its accounts file
// to a temp dir, the accounts passed through edit, and returns the dir.
func writeLayout(t *testing.T, edit func(accounts string) string) string {
	t.Helper()
	dir := t.TempDir()
	node, err := os.ReadFile(layoutNode1)
	if err != nil {
		t.Fatal(err)
	}
	accounts, err := os.ReadFile(layoutAccounts)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nats-1.conf"), node, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "accounts.conf"), []byte(edit(string(accounts))), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// tenantAccount returns the example tenant acme's account block of accounts
// renamed to org, as the file tells operators to add tenants.
func tenantAccount(t *testing.T, accounts, org string) string {
	t.Helper()
	start := strings.Index(accounts, "\n  acme {\n")
	if start < 0 {
		t.Fatal("accounts.conf has no acme account block")
	}
	end := strings.Index(accounts[start:], "\n  }\n")
	if end < 0 {
		t.Fatal("accounts.conf: acme's block does not end")
	}
	block := accounts[start : start+end+len("\n  }\n")]
	block = strings.ReplaceAll(block, "acme", org)
	return strings.ReplaceAll(block, "ACME_NATS_PASSWORD", strings.ToUpper(org)+"_NATS_PASSWORD")
}

// addAccount inserts an account block at the end of the accounts map.
func addAccount(t *testing.T, accounts, block string) string {
	t.Helper()
	i := strings.LastIndex(accounts, "\n}")
	if i < 0 {
		t.Fatal("accounts.conf does not end its accounts block")
	}
	return accounts[:i] + block + accounts[i:]
}

// layoutClient is a NATS connection that records the permission violations
// the server reports to it.
type layoutClient struct {
	nc         *nats.Conn
	mu         sync.Mutex
	violations []string
}

func layoutConn(t *testing.T, name, u string) *layoutClient {
	t.Helper()
	c := &layoutClient{}
	nc, err := nats.Connect(u, nats.Name(name), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.violations = append(c.violations, err.Error())
	}))
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(nc.Close)
	c.nc = nc
	return c
}

// awaitViolation waits until the server has told c of a permissions
// violation whose text contains what.
func (c *layoutClient) awaitViolation(t *testing.T, what string) {
	t.Helper()
	testenv.WaitFor(t, 5*time.Second, "a permissions violation for "+what, func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, v := range c.violations {
			if strings.Contains(strings.ToLower(v), strings.ToLower(what)) {
				return true
			}
		}
		return false
	})
}

// sniffer records every message of a subscription.
type sniffer struct {
	subject string
	mu      sync.Mutex
	msgs    []*nats.Msg
}

func (c *layoutClient) sniff(t *testing.T, subject string) *sniffer {
	t.Helper()
	s := &sniffer{subject: subject}
	if _, err := c.nc.Subscribe(subject, func(m *nats.Msg) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.msgs = append(s.msgs, m)
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return s
}

func (s *sniffer) all() []*nats.Msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*nats.Msg(nil), s.msgs...)
}

// await waits until at least n messages on subject have arrived and
// returns them.
func (s *sniffer) await(t *testing.T, subject string, n int) []*nats.Msg {
	t.Helper()
	var got []*nats.Msg
	testenv.WaitFor(t, 10*time.Second, fmt.Sprintf("%d messages on %s at the %s subscriber", n, subject, s.subject), func() bool {
		got = got[:0]
		for _, m := range s.all() {
			if m.Subject == subject {
				got = append(got, m)
			}
		}
		return len(got) >= n
	})
	return got
}

// serverLog is a nats-server logger that keeps the error lines.
type serverLog struct {
	mu     sync.Mutex
	errors []string
}

func (l *serverLog) Noticef(string, ...any) {}
func (l *serverLog) Warnf(string, ...any)   {}
func (l *serverLog) Fatalf(format string, v ...any) {
	l.Errorf(format, v...)
}
func (l *serverLog) Debugf(string, ...any) {}
func (l *serverLog) Tracef(string, ...any) {}
func (l *serverLog) Errorf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errors = append(l.errors, fmt.Sprintf(format, v...))
}

// violations returns the logged permission violations of connections whose
// log prefix (address, id, client name) contains who.
func (l *serverLog) violations(who string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, e := range l.errors {
		if strings.Contains(e, "Violation") && strings.Contains(e, who) {
			out = append(out, e)
		}
	}
	return out
}

// TestNATSLayoutCluster: the three shipped node configurations (on loopback,
// stores in temp dirs) form an authenticated cluster: the routes log in as
// "route" with the password of the environment, JetStream elects a leader,
// and keyd's user can create a stream replicated three times in KEYD.
func TestNATSLayoutCluster(t *testing.T) {
	setLayoutEnv(t)
	var addrs, routes []string
	for range 3 {
		a := freeAddr(t)
		addrs = append(addrs, a)
		routes = append(routes, "nats://route:"+layoutPasswords["KEYD_NATS_ROUTE_PASSWORD"]+"@"+a)
	}
	t.Setenv("KEYD_NATS_ROUTES", "["+strings.Join(routes, ", ")+"]")
	var servers []*server.Server
	for i := range 3 {
		opts, err := server.ProcessConfigFile(filepath.Join(layoutDir, fmt.Sprintf("nats-%d.conf", i+1)))
		if err != nil {
			t.Fatal(err)
		}
		host, port, _ := strings.Cut(addrs[i], ":")
		opts.Host, opts.Port = "127.0.0.1", -1
		opts.HTTPHost, opts.HTTPPort = "", 0
		opts.Cluster.Host = host
		fmt.Sscan(port, &opts.Cluster.Port)
		opts.StoreDir = t.TempDir()
		opts.NoSigs, opts.NoLog = true, true
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatal(err)
		}
		go s.Start()
		t.Cleanup(func() { testenv.ShutdownServer(s) })
		servers = append(servers, s)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(30 * time.Second) {
			t.Fatalf("%s not ready", s.Name())
		}
	}
	testenv.WaitFor(t, 30*time.Second, "three routed nodes with a JetStream leader", func() bool {
		leader := false
		for _, s := range servers {
			if s.NumRoutes() < 2 || !s.JetStreamIsCurrent() {
				return false
			}
			leader = leader || s.JetStreamIsLeader()
		}
		return leader
	})
	u := strings.TrimPrefix(servers[0].ClientURL(), "nats://")
	nc := connect(t, "nats://"+url.UserPassword("keyd", layoutPasswords["KEYD_NATS_PASSWORD"]).String()+"@"+u)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var st jetstream.Stream
	testenv.WaitFor(t, 30*time.Second, "an R3 stream in KEYD", func() bool {
		st, err = js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{Name: "KEYD_EVENTS", Subjects: []string{"keyd.events.>"}, Replicas: 3})
		return err == nil
	})
	if info, err := st.Info(ctx); err != nil || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
		t.Fatalf("stream info: %+v, %v", info, err)
	}
}
