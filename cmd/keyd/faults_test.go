package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// The fault suite: real `keyd serve` OS processes on real nats-server
// nodes (in-process servers that are shut down and restarted on their
// ports and stores, or cut off by TCP proxies on their routes) and a real
// PostgreSQL, driven under load through keyd's public interface. After each
// fault has healed, every acknowledged command is checked against the read
// models and every verifier (check): 0 lost, 0 duplicated. Each scenario
// logs its figures (report) as text and as a "FAULTS {json}" line;
// docs/reliability.md holds a run's figures.
//
// The scenarios run one after another (they measure timings; sharing two
// cores with each other would blur them), each bounded in time. They are
// skipped with -short. KEYD_FAULTS_LEADER_KILLS sets how many times the
// stream leader is killed (default 2; the figures in docs/reliability.md
// use 5).

// faultEnv is one scenario's keyd processes and the driver's connection.
type faultEnv struct {
	t     *testing.T
	nats  *testenv.NATSNodes
	db    string
	extra []string
	urls  []string // KEYD_NATS_URL per slot

	mu    sync.Mutex
	procs []*proc // by slot; nil while killed
	nc    *nats.Conn
}

// newFaultEnv starts n keyd serve processes on nodes and db (at the same
// instant, as a deployment's processes do), waits until they are ready and
// defines the permission the load grants.
func newFaultEnv(t *testing.T, nodes *testenv.NATSNodes, db string, n int, extra ...string) *faultEnv {
	t.Helper()
	if testing.Short() {
		t.Skip("fault suite: skipped with -short")
	}
	e := &faultEnv{t: t, nats: nodes, db: db, extra: extra, procs: make([]*proc, n)}
	for i := range n {
		e.urls = append(e.urls, joinURLs(nodes.URLs(), i))
		e.procs[i] = launchServe(t, e.urls[i], db, testToken, testSecret, extra...)
	}
	for i, p := range e.procs {
		// On a cluster just formed, keyd serve can exit at start (setting up
		// its R3 key-value bucket times out); a supervisor starts it again,
		// and so does this.
		for attempt := 1; !readyOrExited(p); attempt++ {
			if attempt == 3 {
				t.Fatalf("keyd serve exited at start three times:\n%s", p.logs.String())
			}
			t.Logf("keyd serve k%d exited at start, starting it again: %s", i+1, lastLine(p.logs.String()))
			p = launchServe(t, e.urls[i], db, testToken, testSecret, extra...)
			e.procs[i] = p
		}
	}
	if len(nodes.URLs()) > 1 {
		testenv.StreamReady(t, nodes.URLs(), "KEYD_EVENTS", "keyd.events.keys.ready.probe")
	}
	var err error
	e.nc, err = nats.Connect(nodes.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.nc.Close)
	o := newLedger().send(context.Background(), e.nc, "keyd.cmd.permissions.define", map[string]any{"slug": "faults:read", "description": "fault suite"}, defaultRetry)
	if !o.Acked {
		t.Fatalf("define: %v", o.Reply)
	}
	return e
}

func (e *faultEnv) live() []*proc {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*proc(nil), e.procs...)
}

// kill9 kills the keyd process in slot with SIGKILL.
func (e *faultEnv) kill9(slot int) {
	e.mu.Lock()
	p := e.procs[slot]
	e.procs[slot] = nil
	e.mu.Unlock()
	p.Kill(syscall.SIGKILL)
}

// restart starts slot's keyd process again (same flags) and returns how
// long it took to be ready.
func (e *faultEnv) restart(slot int) time.Duration {
	start := time.Now()
	p := launchServe(e.t, e.urls[slot], e.db, testToken, testSecret, e.extra...)
	p.waitReady(e.t)
	e.mu.Lock()
	e.procs[slot] = p
	e.mu.Unlock()
	return time.Since(start)
}

// underLoad runs spec's load for d and, meanwhile, fault (which should
// return before d is over); it returns once every command sent has its
// outcome.
func (e *faultEnv) underLoad(spec loadSpec, d time.Duration, l *ledger, fault func()) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); runLoad(ctx, e.t, e.nats.URL(), spec, l) }()
	fault()
	<-done
}

func leaderKills() int {
	if n, err := strconv.Atoi(os.Getenv("KEYD_FAULTS_LEADER_KILLS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// TestFaultKillKeyd kills one of two keyd processes with SIGKILL in the
// middle of a burst of creates and revokes, restarts it, and checks every
// acknowledged command. A command cut by the kill is resent with its
// Keyd-Command-Id and must be answered soon after (issue 11 P3: today a
// resend of a create whose first attempt died with the process answers
// `conflict` for up to 30 s).
func TestFaultKillKeyd(t *testing.T) {
	nodes := testenv.StartNATSNodes(t, 1, 0)
	e := newFaultEnv(t, nodes, testenv.PostgresURL(t), 2)
	l := newLedger()
	spec := loadSpec{Org: "kill", Workers: 8, Retry: retryPolicy{Attempt: time.Second, Budget: 10 * time.Second, Pause: 50 * time.Millisecond}}
	var ready time.Duration
	var killedAt time.Time
	e.underLoad(spec, 9*time.Second, l, func() {
		time.Sleep(3 * time.Second)
		killedAt = time.Now()
		e.kill9(0)
		time.Sleep(1500 * time.Millisecond)
		ready = e.restart(0)
	})
	c := check(t, spec.Org, l, e.live())
	c.finish(l)
	report(t, "kill_keyd", c, map[string]any{"restart_ready_s": round3(ready.Seconds()), "killed_at_unix": killedAt.Unix()})
	if c.UnknownCreates+c.UnknownRevokes > 0 {
		t.Errorf("kill_keyd: %d creates and %d revokes got no answer within the client's %s retry budget (issue 11 P3: a resend after a crash answers conflict for up to 30 s)",
			c.UnknownCreates, c.UnknownRevokes, spec.Retry.Budget)
	}
	if c.MaxAckS > 4 {
		t.Errorf("kill_keyd: a command took %.1f s to be acknowledged; want ≤ 4 s (the kill, 1.5 s down, a restart, and 2 s for a resend: issue 11 P3)", c.MaxAckS)
	}
}

// TestFaultStreamLeaderKill kills the node that leads KEYD_EVENTS on a
// 3-node cluster, again and again (KEYD_FAULTS_LEADER_KILLS times), and
// then a follower, while two keyd processes take creates and revokes and a
// probe measures how long each revocation takes to reach every process's
// verifier. The goal (issue 11 point 1; P1 is a verifier that stops
// following the stream until the dead node returns): p99 under 1 s on
// every process through the failovers.
func TestFaultStreamLeaderKill(t *testing.T) {
	nodes := testenv.StartNATSNodes(t, 3, 0)
	e := newFaultEnv(t, nodes, testenv.PostgresURL(t), 2, "--stream-replicas", "3")
	kills := leaderKills()
	pr := newProbe(t, e.nc, "probe", 40*(kills+1), e.live())
	l := newLedger()
	spec := loadSpec{Org: "leader", Workers: 4, Pause: 5 * time.Millisecond, Retry: retryPolicy{Attempt: 2 * time.Second, Budget: 20 * time.Second, Pause: 100 * time.Millisecond}}
	const down = 4 * time.Second
	var killed []string
	pctx, pcancel := context.WithCancel(context.Background())
	pdone := make(chan struct{})
	go func() { defer close(pdone); pr.run(pctx, t, e.nc, 100*time.Millisecond, e.live) }()
	e.underLoad(spec, time.Duration(kills+1)*(down+6*time.Second)+3*time.Second, l, func() {
		time.Sleep(2 * time.Second)
		for k := 0; k <= kills; k++ {
			leader := nodes.StreamLeader("KEYD_EVENTS", 15*time.Second)
			if leader < 0 {
				t.Errorf("no stream leader before kill %d", k+1)
				return
			}
			victim, what := leader, "leader"
			if k == kills {
				victim, what = (leader+1)%3, "follower"
			}
			killed = append(killed, fmt.Sprintf("%s n%d", what, victim+1))
			nodes.Kill(victim)
			time.Sleep(down)
			nodes.Restart(t, victim)
			nodes.WaitCurrent(t)
			time.Sleep(5 * time.Second)
		}
	})
	pcancel()
	<-pdone
	c := check(t, spec.Org, l, e.live())
	c.finish(l)
	figs := pr.figures()
	report(t, "stream_leader_kill", c, map[string]any{"kills": killed, "node_down_s": down.Seconds(), "revocation_propagation": figs, "probe_revokes": pr.revokes})
	for name, f := range figs {
		t.Logf("revocation propagation to %s: n %d, p50 %.1f ms, p99 %.1f ms, max %.1f ms, missed %d", name, f.N, f.P50, f.P99, f.Max, f.Missed)
		if f.P99 >= 1000 || f.Missed > 0 {
			t.Errorf("revocation propagation to %s through %d leader kills: p99 %.0f ms, %d not seen within %s; want p99 < 1 s (issue 11 P1: a verifier stuck behind a consumer on the dead node)", name, kills, f.P99, f.Missed, probeMax)
		}
	}
	if len(figs) != 2 {
		t.Errorf("propagation measured on %d processes, want 2", len(figs))
	}
}

// TestFaultPartition cuts the stream leader's node off from the other two
// (every route through a proxy the test closes; its clients stay
// connected to it) for 6 s under load, heals it, and checks every
// acknowledged command.
func TestFaultPartition(t *testing.T) {
	nodes := testenv.StartNATSNodes(t, 3, 0)
	e := newFaultEnv(t, nodes, testenv.PostgresURL(t), 2, "--stream-replicas", "3")
	l := newLedger()
	spec := loadSpec{Org: "partition", Workers: 4, Pause: 5 * time.Millisecond, Retry: retryPolicy{Attempt: 2 * time.Second, Budget: 20 * time.Second, Pause: 100 * time.Millisecond}}
	var cut int
	var healedToAck time.Duration
	e.underLoad(spec, 18*time.Second, l, func() {
		time.Sleep(2 * time.Second)
		cut = nodes.StreamLeader("KEYD_EVENTS", 15*time.Second)
		if cut < 0 {
			t.Error("no stream leader")
			return
		}
		nodes.Cut(cut)
		time.Sleep(6 * time.Second)
		nodes.Heal(cut)
		healed := time.Now()
		nodes.WaitCurrent(t)
		o := newLedger().send(context.Background(), e.nc, "keyd.cmd.keys.partition.create", map[string]any{"name": "after-heal", "permissions": []string{"faults:read"}}, defaultRetry)
		healedToAck = time.Since(healed)
		if !o.Acked {
			t.Errorf("a create after the heal: %v", o.Reply)
		}
	})
	c := check(t, spec.Org, l, e.live())
	c.finish(l)
	report(t, "partition", c, map[string]any{"cut": fmt.Sprintf("n%d (stream leader)", cut+1), "cut_s": 6, "heal_to_first_ack_s": round3(healedToAck.Seconds())})
	if c.UnknownCreates+c.UnknownRevokes > 0 {
		t.Errorf("partition: %d creates and %d revokes got no answer within %s", c.UnknownCreates, c.UnknownRevokes, spec.Retry.Budget)
	}
}

// TestFaultPostgresRestart stops the test's own PostgreSQL (immediate
// shutdown, like a crash) for 4 s under load and starts it again. Commands
// and verification do not need it; reads answer 503 meanwhile (never 500:
// issue 11 P7). Measured from the moment Postgres accepts a connection
// again (pg.Start returns then, after its crash recovery), on every process
// at once: /readyz is 200 again within 1 s (P2: a standby kept a stale
// projector error), and the read models resume within 1 s (P4): a read
// shows an event appended while Postgres was down. How long they take to
// catch up with the whole backlog of the outage is reported
// (read_models_caught_up_s; a throughput, which keyd bench measures).
func TestFaultPostgresRestart(t *testing.T) {
	const bound = 1.0 // seconds
	nodes := testenv.StartNATSNodes(t, 1, 0)
	pg := testenv.StartPostgresServer(t)
	e := newFaultEnv(t, nodes, pg.NewDatabase(t), 2)
	l := newLedger()
	spec := loadSpec{Org: "pg", Workers: 4, Pause: 5 * time.Millisecond, Retry: defaultRetry}
	reads := &readWatch{}
	var resumed, caughtUp, readyAfter []float64
	var pgStart time.Duration
	var atStop, target uint64
	e.underLoad(spec, 14*time.Second, l, func() {
		rctx, rcancel := context.WithCancel(context.Background())
		rdone := reads.run(rctx, spec.Org, e.live())
		time.Sleep(3 * time.Second)
		pg.Stop(true)
		// Nothing is applied while Postgres is down: the read models stay
		// at or below atStop, and a read above it shows the projection
		// resumed.
		atStop = streamLast(t, e.nc)
		time.Sleep(4 * time.Second)
		t0 := time.Now()
		pg.Start(t)
		back := time.Now()
		pgStart = back.Sub(t0)
		target = streamLast(t, e.nc)
		procs := e.live()
		resumed, caughtUp, readyAfter = make([]float64, len(procs)), make([]float64, len(procs)), make([]float64, len(procs))
		var wg sync.WaitGroup
		for i, p := range procs {
			wg.Go(func() {
				readyAfter[i] = round3(waitFor(10*time.Second, func() bool {
					st, _, _ := hdo("GET", p.HTTP+"/readyz", nil)
					return st == 200
				}, back))
			})
			wg.Go(func() {
				resumed[i], caughtUp[i] = -1, -1
				waitFor(20*time.Second, func() bool {
					st, _, h := hdo("GET", p.HTTP+"/v1/orgs/pg/keys?limit=1", nil)
					seq, _ := strconv.ParseUint(h.Get("Keyd-Sequence"), 10, 64)
					if st == 200 && seq > atStop && resumed[i] < 0 {
						resumed[i] = round3(time.Since(back).Seconds())
					}
					if st == 200 && seq >= target {
						caughtUp[i] = round3(time.Since(back).Seconds())
						return true
					}
					return false
				}, back)
			})
		}
		wg.Wait()
		rcancel()
		<-rdone
	})
	c := check(t, spec.Org, l, e.live())
	c.finish(l)
	report(t, "postgres_restart", c, map[string]any{"pg_down_s": 4, "pg_start_to_accepting_s": round3(pgStart.Seconds()), "reads": reads.counts(),
		"backlog_events": target - atStop, "read_models_resumed_s": resumed, "read_models_caught_up_s": caughtUp, "ready_again_s": readyAfter})
	if n := reads.count(500); n > 0 {
		t.Errorf("postgres_restart: %d reads answered 500 during the outage; want 503 (issue 11 P7)", n)
	}
	if target <= atStop {
		t.Errorf("postgres_restart: no event was appended while Postgres was down (stream at %d, then %d); the load did not run", atStop, target)
	}
	for i, s := range resumed {
		if s > bound || s < 0 {
			t.Errorf("postgres_restart: k%d's read models resumed %.2f s after Postgres accepted connections again (-1: not in 20 s); want ≤ %.0f s (issue 11 P4)", i+1, s, bound)
		}
	}
	for i, s := range caughtUp {
		if s < 0 {
			t.Errorf("postgres_restart: k%d's read models did not catch up with the %d events of the outage within 20 s", i+1, target-atStop)
		}
	}
	for i, s := range readyAfter {
		if s > bound || s < 0 {
			t.Errorf("postgres_restart: k%d's /readyz was 200 again %.2f s after Postgres accepted connections again (-1: not within 10 s); want ≤ %.0f s (issue 11 P2)", i+1, s, bound)
		}
	}
	if c.Failures["unavailable"]+c.Failures["timeout"] > 0 {
		t.Errorf("postgres_restart: commands failed during the Postgres outage (%v); they do not need it", c.Failures)
	}
}

// TestFaultNATSRestart shuts the NATS server down for 4 s under load and
// starts it again on the same port and store. An HTTP create during the
// outage must answer 503 within 2 s (issue 11 P6: today 15 s); commands
// recover by themselves.
func TestFaultNATSRestart(t *testing.T) {
	nodes := testenv.StartNATSNodes(t, 1, 0)
	e := newFaultEnv(t, nodes, testenv.PostgresURL(t), 2)
	l := newLedger()
	spec := loadSpec{Org: "natsdown", Workers: 4, Pause: 5 * time.Millisecond, Retry: defaultRetry}
	var httpCreate time.Duration
	var httpStatus int
	var firstAck time.Duration
	e.underLoad(spec, 12*time.Second, l, func() {
		time.Sleep(3 * time.Second)
		nodes.Kill(0)
		time.Sleep(500 * time.Millisecond)
		start := time.Now()
		httpStatus, _, _ = hdo("POST", e.live()[1].HTTP+"/v1/orgs/natsdown/keys", map[string]any{"name": "during-outage", "permissions": []string{"faults:read"}})
		httpCreate = time.Since(start)
		time.Sleep(max(0, 4*time.Second-time.Since(start)-500*time.Millisecond))
		nodes.Restart(t, 0)
		back := time.Now()
		o := newLedger().send(context.Background(), e.nc, "keyd.cmd.keys.natsdown.create", map[string]any{"name": "after-restart", "permissions": []string{"faults:read"}}, defaultRetry)
		firstAck = time.Since(back)
		if !o.Acked {
			t.Errorf("a create after the restart: %v", o.Reply)
		}
	})
	c := check(t, spec.Org, l, e.live())
	c.finish(l)
	report(t, "nats_restart", c, map[string]any{"nats_down_s": 4, "http_create_during_outage": map[string]any{"status": httpStatus, "took_s": round3(httpCreate.Seconds())}, "restart_to_first_ack_s": round3(firstAck.Seconds())})
	if httpStatus != 503 || httpCreate > 2*time.Second {
		t.Errorf("nats_restart: an HTTP create during the outage answered %d after %.1f s (0: nothing within the client's %s timeout); want 503 within 2 s (issue 11 P6)", httpStatus, httpCreate.Seconds(), faultHTTP.Timeout)
	}
	if c.UnknownCreates+c.UnknownRevokes > 0 {
		t.Errorf("nats_restart: %d creates and %d revokes got no answer within %s", c.UnknownCreates, c.UnknownRevokes, spec.Retry.Budget)
	}
}

// TestFaultStorageFull runs JetStream with a small max_file_store until
// creates no longer fit, then raises the limit (a configuration reload, as
// an operator freeing space would). While full, commands must answer
// `unavailable` with a message that says the event store is out of space,
// nothing acknowledged may be lost, and keyd must take commands again once
// space returns.
func TestFaultStorageFull(t *testing.T) {
	nodes := testenv.StartNATSNodes(t, 1, 512<<10)
	e := newFaultEnv(t, nodes, testenv.PostgresURL(t), 1)
	l := newLedger()
	spec := loadSpec{Org: "full", Workers: 4, Retry: retryPolicy{Attempt: 2 * time.Second, Budget: 3 * time.Second, Pause: 100 * time.Millisecond}}
	var fullAt, recovered time.Duration
	var fullReply map[string]any
	start := time.Now()
	e.underLoad(spec, 9*time.Second, l, func() {
		// Wait until the store is full: a create no longer succeeds.
		nc := e.nc
		for i := 0; time.Since(start) < 6*time.Second; i++ {
			o := newLedger().send(context.Background(), nc, "keyd.cmd.keys.full.create", map[string]any{"name": fmt.Sprintf("fill-%d", i), "permissions": []string{"faults:read"}}, retryPolicy{Attempt: 2 * time.Second, Pause: 50 * time.Millisecond})
			if !o.Acked {
				fullAt, fullReply = time.Since(start), o.Reply
				break
			}
		}
		time.Sleep(2 * time.Second)
		nodes.SetMaxStore(t, 1<<30)
		raised := time.Now()
		o := newLedger().send(context.Background(), nc, "keyd.cmd.keys.full.create", map[string]any{"name": "after-space", "permissions": []string{"faults:read"}}, defaultRetry)
		recovered = time.Since(raised)
		if !o.Acked {
			t.Errorf("a create after space returned: %v", o.Reply)
		}
	})
	c := check(t, spec.Org, l, e.live())
	c.finish(l)
	report(t, "storage_full", c, map[string]any{"max_file_store_bytes": 512 << 10, "full_after_s": round3(fullAt.Seconds()), "reply_when_full": fullReply, "space_to_first_ack_s": round3(recovered.Seconds())})
	if fullReply == nil {
		t.Fatal("storage_full: the store never filled up")
	}
	code := errCode(fullReply)
	msg, _ := fullReply["error"].(map[string]any)["message"].(string)
	if code != "unavailable" || !(strings.Contains(msg, "storage") || strings.Contains(msg, "space") || strings.Contains(msg, "full")) {
		t.Errorf("storage_full: a create on a full store answered %s %q; want unavailable, saying the event store is out of space", code, msg)
	}
	for code := range c.Errors {
		if code != "unavailable" {
			t.Errorf("storage_full: %d commands answered %s (%q) while the store was full; want unavailable", c.Errors[code], code, c.ErrorMessages[code])
		}
	}
}

// ---- helpers --------------------------------------------------------------

// readyOrExited waits up to 60 s until p's /readyz answers 200 (true) or p
// exits (false).
func readyOrExited(p *proc) bool {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return false
		default:
		}
		if st, _, _ := hdo("GET", p.HTTP+"/readyz", nil); st == 200 {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// waitFor polls cond until it is true and returns the seconds since from,
// or -1 after timeout.
func waitFor(timeout time.Duration, cond func() bool, from time.Time) float64 {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if cond() {
			return time.Since(from).Seconds()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return -1
}

// streamLast returns KEYD_EVENTS' last sequence.
func streamLast(t *testing.T, nc *nats.Conn) uint64 {
	t.Helper()
	m, err := nc.Request("$JS.API.STREAM.INFO.KEYD_EVENTS", nil, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		State struct {
			LastSeq uint64 `json:"last_seq"`
		} `json:"state"`
	}
	if err := json.Unmarshal(m.Data, &info); err != nil {
		t.Fatal(err)
	}
	return info.State.LastSeq
}

// readWatch lists keys on every process every 100 ms and counts the
// statuses.
type readWatch struct {
	mu sync.Mutex
	by map[int]int
}

func (r *readWatch) run(ctx context.Context, org string, procs []*proc) chan struct{} {
	r.by = map[int]int{}
	done := make(chan struct{})
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				st, _, _ := hdo("GET", p.HTTP+"/v1/orgs/"+org+"/keys?limit=5", nil)
				r.mu.Lock()
				r.by[st]++
				r.mu.Unlock()
				time.Sleep(100 * time.Millisecond)
			}
		}()
	}
	go func() { wg.Wait(); close(done) }()
	return done
}

func (r *readWatch) count(status int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.by[status]
}

func (r *readWatch) counts() map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.by {
		out[strconv.Itoa(k)] = v
	}
	return out
}
