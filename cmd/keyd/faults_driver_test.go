package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/adapters/commands"
)

// The fault suite's load driver and checker. Everything here talks to keyd
// only through its public interface: NATS commands (with Keyd-Command-Id,
// resent with the same id until answered, as a client that follows the
// README does) and HTTP verify, list and events.

// faultHTTP is the driver's HTTP client: short timeouts, so a hung request
// is an error within the measurement, not a stuck test.
var faultHTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}

// retryPolicy is how a client resends a command it got no usable answer to.
type retryPolicy struct {
	Attempt time.Duration // timeout of one request
	Budget  time.Duration // give up (outcome unknown) after this long
	Pause   time.Duration // between attempts
}

var defaultRetry = retryPolicy{Attempt: 2 * time.Second, Budget: 15 * time.Second, Pause: 100 * time.Millisecond}

// outcome is the end of one logical command (all its attempts).
type outcome struct {
	Reply    map[string]any // the last reply, if any
	Code     string         // the last reply's error code, "" for success
	Acked    bool
	GaveUp   bool // no success within the budget: the outcome is unknown
	Attempts int
	Took     time.Duration
}

// failure is one failed attempt, for the unavailability window.
type failure struct {
	At   time.Time
	What string // "timeout", "no_responders", or an error code
	Msg  string
}

// ledger records every logical command the load sent and every failed
// attempt, for the checks and the report.
type ledger struct {
	mu       sync.Mutex
	keys     map[string]*keyRecord // by name (one name per logical create)
	failures []failure
	unknown  int // creates given up on
	revUnk   int // revokes given up on
	maxAck   time.Duration
	maxSeq   uint64
	errs     map[string]int // final error codes that were not retried
	msgs     map[string]string
}

// keyRecord is what the driver knows about one logical create.
type keyRecord struct {
	Name        string
	ID          string
	Secret      string // "" if the acknowledged reply carried none (a resend whose first attempt landed)
	Acked       bool
	Revoke      bool // a revoke was sent
	RevokeAcked bool
	RevokeUnk   bool // the revoke's outcome is unknown
}

func newLedger() *ledger {
	return &ledger{keys: map[string]*keyRecord{}, errs: map[string]int{}, msgs: map[string]string{}}
}

func (l *ledger) fail(f failure) {
	l.mu.Lock()
	l.failures = append(l.failures, f)
	l.mu.Unlock()
}

// send sends one logical command over nc with a fresh Keyd-Command-Id and
// resends it with the same id on timeouts, no_responders, `unavailable` and
// `conflict` ("still in progress") until it is answered otherwise or the
// budget is spent. Every failed attempt goes to l.
func (l *ledger) send(ctx context.Context, nc *nats.Conn, subject string, body any, p retryPolicy) outcome {
	data, _ := json.Marshal(body)
	id := randomID()
	start := time.Now()
	var o outcome
	for {
		o.Attempts++
		m := nats.NewMsg(subject)
		m.Data = data
		m.Header.Set(commands.CommandIDHeader, id)
		actx, cancel := context.WithTimeout(context.Background(), p.Attempt)
		reply, err := nc.RequestMsgWithContext(actx, m)
		cancel()
		var f failure
		switch {
		case err == nil:
			o.Reply = map[string]any{}
			if json.Unmarshal(reply.Data, &o.Reply) != nil {
				o.Reply = map[string]any{"error": map[string]any{"code": "bad_reply", "message": string(reply.Data)}}
			}
			o.Code = errCode(o.Reply)
			if o.Code == "" {
				o.Acked, o.Took = true, time.Since(start)
				return o
			}
			if o.Code != "unavailable" && o.Code != "conflict" {
				o.Took = time.Since(start)
				l.mu.Lock()
				l.errs[o.Code]++
				e, _ := o.Reply["error"].(map[string]any)
				l.msgs[o.Code], _ = e["message"].(string)
				l.mu.Unlock()
				return o
			}
			e, _ := o.Reply["error"].(map[string]any)
			msg, _ := e["message"].(string)
			f = failure{At: time.Now(), What: o.Code, Msg: msg}
		case errors.Is(err, nats.ErrNoResponders):
			f = failure{At: time.Now(), What: "no_responders"}
		default:
			f = failure{At: time.Now(), What: "timeout", Msg: err.Error()}
		}
		l.fail(f)
		if time.Since(start) > p.Budget {
			o.GaveUp, o.Took = true, time.Since(start)
			return o
		}
		select {
		case <-time.After(p.Pause):
		case <-ctx.Done():
			if time.Since(start) > p.Budget {
				o.GaveUp, o.Took = true, time.Since(start)
				return o
			}
			// The load is over but this command is not: finish it, within
			// its budget, so that every command sent has an outcome.
			time.Sleep(p.Pause)
		}
	}
}

func randomID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// loadSpec is a load of creates (and revokes of every other key created).
type loadSpec struct {
	Org     string
	Workers int
	Pause   time.Duration // between one worker's logical commands
	Retry   retryPolicy
}

// runLoad runs spec's workers, connected to natsURL, until ctx is done, and
// waits for every command in flight to reach its outcome.
func runLoad(ctx context.Context, t *testing.T, natsURL string, spec loadSpec, l *ledger) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range spec.Workers {
		nc, err := nats.Connect(natsURL, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond),
			nats.Name(fmt.Sprintf("faults load %d", w)))
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer nc.Close()
			for i := 0; ctx.Err() == nil; i++ {
				name := fmt.Sprintf("w%02d-%05d", w, i)
				rec := &keyRecord{Name: name}
				l.mu.Lock()
				l.keys[name] = rec
				l.mu.Unlock()
				o := l.send(ctx, nc, "keyd.cmd.keys."+spec.Org+".create", map[string]any{"name": name, "permissions": []string{"faults:read"}}, spec.Retry)
				l.mu.Lock()
				switch {
				case o.Acked:
					rec.Acked = true
					rec.ID, _ = keyOf(o.Reply)["id"].(string)
					rec.Secret, _ = o.Reply["secret"].(string)
					l.maxAck = max(l.maxAck, o.Took)
					l.maxSeq = max(l.maxSeq, seqOf(o.Reply))
				case o.GaveUp:
					l.unknown++
				}
				l.mu.Unlock()
				if o.Acked && i%2 == 1 && rec.ID != "" {
					rec.Revoke = true
					o := l.send(ctx, nc, "keyd.cmd.keys."+spec.Org+".revoke", map[string]any{"key_id": rec.ID, "reason": "faults"}, spec.Retry)
					l.mu.Lock()
					switch {
					case o.Acked:
						rec.RevokeAcked = true
						l.maxAck = max(l.maxAck, o.Took)
						l.maxSeq = max(l.maxSeq, seqOf(o.Reply))
					default:
						rec.RevokeUnk = true
						if o.GaveUp {
							l.revUnk++
						}
					}
					l.mu.Unlock()
				}
				if spec.Pause > 0 {
					select {
					case <-time.After(spec.Pause):
					case <-ctx.Done():
					}
				}
			}
		}()
	}
	wg.Wait()
}

func seqOf(reply map[string]any) uint64 {
	f, _ := reply["sequence"].(float64)
	return uint64(f)
}

// window is the unavailability: the failed attempts merged into windows
// (failures less than a second apart are one window); it returns the total
// length of the windows, the longest, and the count of failures by kind.
func (l *ledger) window() (total, longest time.Duration, kinds map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kinds = map[string]int{}
	at := make([]time.Time, 0, len(l.failures))
	for _, f := range l.failures {
		kinds[f.What]++
		at = append(at, f.At)
	}
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	for i := 0; i < len(at); {
		j := i
		for j+1 < len(at) && at[j+1].Sub(at[j]) < time.Second {
			j++
		}
		w := at[j].Sub(at[i])
		total += w
		longest = max(longest, w)
		i = j + 1
	}
	return total, longest, kinds
}

// ---- HTTP ---------------------------------------------------------------

// hdo sends an HTTP request with the admin token; unlike httpDo it never
// fails the test (it runs on the driver's goroutines): a transport error is
// status 0.
func hdo(method, u string, body any) (int, map[string]any, http.Header) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, u, rd)
	req.Header.Set("Authorization", "Bearer "+testToken)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := faultHTTP.Do(req)
	if err != nil {
		return 0, map[string]any{"error": map[string]any{"code": "transport", "message": err.Error()}}, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := map[string]any{}
	_ = json.Unmarshal(raw, &out)
	return resp.StatusCode, out, resp.Header
}

// verifyCode verifies secret on the process at base and returns the code
// ("valid", "revoked", …), or "http <status>" when it gave no verdict.
func verifyCode(base, secret string) string {
	st, out, _ := hdo("POST", base+"/v1/keys/verify", map[string]any{"key": secret})
	if st != 200 {
		return "http " + strconv.Itoa(st)
	}
	c, _ := out["code"].(string)
	return c
}

// ---- revocation propagation probe -----------------------------------------

// probe measures revocation propagation: it revokes pre-created keys one at
// a time over NATS and, from each acknowledgement, polls verify on every
// live process until it says revoked.
type probe struct {
	org     string
	secrets []string
	ids     []string

	mu      sync.Mutex
	lat     map[int][]time.Duration // by process slot
	missed  map[int]int             // not revoked within probeMax
	worst   map[int]time.Duration
	revokes int
}

const probeMax = 20 * time.Second

// newProbe creates n keys in org through nc and waits until every process
// verifies the last of them.
func newProbe(t *testing.T, nc *nats.Conn, org string, n int, procs []*proc) *probe {
	t.Helper()
	p := &probe{org: org, lat: map[int][]time.Duration{}, missed: map[int]int{}, worst: map[int]time.Duration{}}
	l := newLedger()
	for i := range n {
		o := l.send(context.Background(), nc, "keyd.cmd.keys."+org+".create", map[string]any{"name": fmt.Sprintf("probe-%d", i), "permissions": []string{"faults:read"}}, defaultRetry)
		if !o.Acked {
			t.Fatalf("probe key %d: %v", i, o.Reply)
		}
		p.ids = append(p.ids, keyOf(o.Reply)["id"].(string))
		p.secrets = append(p.secrets, o.Reply["secret"].(string))
	}
	for _, pr := range procs {
		waitVerify(t, pr, p.secrets[n-1], "valid")
	}
	return p
}

func waitVerify(t *testing.T, pr *proc, secret, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := verifyCode(pr.HTTP, secret)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("verify on %s: %s, want %s", pr.HTTP, got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// run revokes one probe key every interval until ctx is done or the keys
// run out; live returns the processes to poll (slot → process, nil when
// down).
func (p *probe) run(ctx context.Context, t *testing.T, nc *nats.Conn, interval time.Duration, live func() []*proc) {
	var wg sync.WaitGroup
	l := newLedger()
	for i := 0; i < len(p.ids) && ctx.Err() == nil; i++ {
		o := l.send(context.Background(), nc, "keyd.cmd.keys."+p.org+".revoke", map[string]any{"key_id": p.ids[i]}, defaultRetry)
		if !o.Acked {
			continue
		}
		acked := time.Now()
		p.mu.Lock()
		p.revokes++
		p.mu.Unlock()
		for slot, pr := range live() {
			if pr == nil {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Since(acked) < probeMax {
					if verifyCode(pr.HTTP, p.secrets[i]) == "revoked" {
						d := time.Since(acked)
						p.mu.Lock()
						p.lat[slot] = append(p.lat[slot], d)
						p.worst[slot] = max(p.worst[slot], d)
						p.mu.Unlock()
						return
					}
					time.Sleep(5 * time.Millisecond)
				}
				p.mu.Lock()
				p.missed[slot]++
				p.worst[slot] = max(p.worst[slot], probeMax)
				p.mu.Unlock()
			}()
		}
		select {
		case <-time.After(interval):
		case <-ctx.Done():
		}
	}
	wg.Wait()
}

// propagation is one process's revocation propagation figures.
type propagation struct {
	N      int     `json:"n"`
	Missed int     `json:"missed"` // not revoked within probeMax (counted at probeMax)
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
	Max    float64 `json:"max_ms"`
}

func (p *probe) figures() map[string]propagation {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]propagation{}
	slots := map[int]bool{}
	for s := range p.lat {
		slots[s] = true
	}
	for s := range p.missed {
		slots[s] = true
	}
	for s := range slots {
		l := slices.Clone(p.lat[s])
		for range p.missed[s] {
			l = append(l, probeMax)
		}
		sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
		pct := func(q float64) float64 {
			if len(l) == 0 {
				return 0
			}
			return msf(l[min(len(l)-1, int(q*float64(len(l))))])
		}
		out[fmt.Sprintf("k%d", s+1)] = propagation{N: len(l), Missed: p.missed[s], P50: pct(0.5), P99: pct(0.99), Max: msf(p.worst[s])}
	}
	return out
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// ---- the check ------------------------------------------------------------

// checkResult is what the check after a scenario found.
type checkResult struct {
	AckedCreates     int            `json:"acknowledged_creates"`
	AckedRevokes     int            `json:"acknowledged_revokes"`
	UnknownCreates   int            `json:"unknown_creates"` // given up on (they may have landed)
	UnknownRevokes   int            `json:"unknown_revokes"`
	LandedWithout    int            `json:"landed_without_ack"`
	Lost             int            `json:"lost"`
	Duplicated       int            `json:"duplicated"`
	WrongVerdicts    int            `json:"wrong_verdicts"`
	NoSecret         int            `json:"acked_without_secret"`
	UnavailableS     float64        `json:"unavailability_s"` // total of the windows with failed attempts
	LongestS         float64        `json:"longest_window_s"`
	Failures         map[string]int `json:"failed_attempts"`
	Errors           map[string]int `json:"errors"`
	MaxAckS          float64        `json:"max_ack_s"`
	ConvergedS       float64        `json:"read_models_converged_s"`
	problems         []string
	ErrorMessages    map[string]string `json:"error_messages,omitempty"`
	ProcessesChecked int               `json:"processes_checked"`
}

func (c *checkResult) problem(format string, args ...any) {
	if len(c.problems) < 20 {
		c.problems = append(c.problems, fmt.Sprintf(format, args...))
	}
}

// check waits until every process's read models have applied the highest
// acknowledged sequence, then checks every logical command of l against the
// listing (each acknowledged key listed once, with its status, no name
// with two keys), the audit events (one key.created and at most one
// key.revoked per key) and every process's verifier (valid, or revoked
// once its revoke was acknowledged).
func check(t *testing.T, org string, l *ledger, procs []*proc) checkResult {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var c checkResult
	c.Errors, c.ErrorMessages, c.UnknownCreates, c.UnknownRevokes = l.errs, l.msgs, l.unknown, l.revUnk
	c.MaxAckS = round3(l.maxAck.Seconds())
	c.ProcessesChecked = len(procs)

	start := time.Now()
	for _, pr := range procs {
		deadline := time.Now().Add(60 * time.Second)
		for {
			st, _, _ := hdo("GET", fmt.Sprintf("%s/v1/orgs/%s/keys?limit=1&min_sequence=%d", pr.HTTP, org, l.maxSeq), nil)
			if st == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the read models of %s did not reach sequence %d in 60 s (last status %d)", pr.HTTP, l.maxSeq, st)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	c.ConvergedS = time.Since(start).Seconds()

	// The listing, through the first process.
	type row struct{ id, name, status string }
	var rows []row
	cursor := ""
	for {
		q := url.Values{"limit": {"100"}, "status": {"all"}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		st, out, _ := hdo("GET", procs[0].HTTP+"/v1/orgs/"+org+"/keys?"+q.Encode(), nil)
		if st != 200 {
			t.Fatalf("list: %d %v", st, out)
		}
		data, _ := out["data"].([]any)
		for _, d := range data {
			k := d.(map[string]any)
			rows = append(rows, row{id: fmt.Sprint(k["id"]), name: fmt.Sprint(k["name"]), status: fmt.Sprint(k["status"])})
		}
		next, _ := out["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	byID := map[string]int{}
	byName := map[string][]row{}
	for _, r := range rows {
		byID[r.id]++
		byName[r.name] = append(byName[r.name], r)
	}
	for id, n := range byID {
		if n > 1 {
			c.Duplicated++
			c.problem("key %s listed %d times", id, n)
		}
	}
	for name, rs := range byName {
		if len(rs) > 1 {
			c.Duplicated++
			c.problem("create %s produced %d keys", name, len(rs))
		}
	}

	// The audit events: one key.created per key, at most one key.revoked.
	created, revoked := map[string]int{}, map[string]int{}
	after := "0"
	for {
		st, out, _ := hdo("GET", procs[0].HTTP+"/v1/orgs/"+org+"/events?limit=1000&after="+after, nil)
		if st != 200 {
			t.Fatalf("events: %d %v", st, out)
		}
		data, _ := out["data"].([]any)
		for _, d := range data {
			e := d.(map[string]any)
			id, _ := e["key_id"].(string)
			switch e["type"] {
			case "key.created":
				created[id]++
			case "key.revoked":
				revoked[id]++
			}
		}
		next := fmt.Sprint(out["next_after"])
		if len(data) == 0 || next == after || next == "<nil>" {
			break
		}
		after = next
	}
	for id, n := range created {
		if n > 1 {
			c.Duplicated++
			c.problem("key %s has %d key.created events", id, n)
		}
	}
	for id, n := range revoked {
		if n > 1 {
			c.Duplicated++
			c.problem("key %s has %d key.revoked events", id, n)
		}
	}

	// Every logical command against the listing and the events.
	type verifyJob struct{ secret, want, name string }
	var jobs []verifyJob
	for name, rec := range l.keys {
		rs := byName[name]
		if !rec.Acked {
			if len(rs) > 0 {
				c.LandedWithout++
			}
			continue
		}
		c.AckedCreates++
		if rec.RevokeAcked {
			c.AckedRevokes++
		}
		if len(rs) == 0 || created[rec.ID] == 0 {
			c.Lost++
			c.problem("acknowledged create %s (key %s) is missing: %d rows, %d key.created events", name, rec.ID, len(rs), created[rec.ID])
			continue
		}
		want := "active"
		if rec.RevokeAcked {
			want = "revoked"
			if revoked[rec.ID] == 0 {
				c.Lost++
				c.problem("acknowledged revoke of %s has no key.revoked event", rec.ID)
			}
		}
		if rs[0].id != rec.ID {
			c.problem("create %s acknowledged as key %s, listed as %s", name, rec.ID, rs[0].id)
			c.Lost++
		}
		if !rec.RevokeUnk && rs[0].status != want {
			c.Lost++
			c.problem("key %s is listed %s, want %s", rec.ID, rs[0].status, want)
		}
		if rec.Secret == "" {
			c.NoSecret++
			continue
		}
		if rec.RevokeUnk {
			continue
		}
		v := "valid"
		if rec.RevokeAcked {
			v = "revoked"
		}
		jobs = append(jobs, verifyJob{rec.Secret, v, name})
	}

	// Every verifier: the verdict of every acknowledged key.
	var wrong atomic.Int64
	var mu sync.Mutex
	for _, pr := range procs {
		ch := make(chan verifyJob)
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range ch {
					got := verifyCode(pr.HTTP, j.secret)
					if got == "http 503" {
						// A verifier still catching up after a fault answers
						// unavailable; give it the time the staleness bound gives.
						deadline := time.Now().Add(35 * time.Second)
						for got == "http 503" && time.Now().Before(deadline) {
							time.Sleep(200 * time.Millisecond)
							got = verifyCode(pr.HTTP, j.secret)
						}
					}
					if got != j.want {
						wrong.Add(1)
						mu.Lock()
						c.problem("verify %s on %s: %s, want %s", j.name, pr.HTTP, got, j.want)
						mu.Unlock()
					}
				}
			}()
		}
		for _, j := range jobs {
			ch <- j
		}
		close(ch)
		wg.Wait()
	}
	c.WrongVerdicts = int(wrong.Load())
	return c
}

// report logs a scenario's figures, as text and as one JSON line
// ("FAULTS {json}") that docs/reliability.md's tables are made from.
func report(t *testing.T, scenario string, c checkResult, extra map[string]any) {
	t.Helper()
	m := map[string]any{"scenario": scenario}
	b, _ := json.Marshal(c)
	_ = json.Unmarshal(b, &m)
	for k, v := range extra {
		m[k] = v
	}
	line, _ := json.Marshal(m)
	t.Logf("%s: %d creates and %d revokes acknowledged, %d lost, %d duplicated, %d wrong verdicts, unavailable %.2f s, failed attempts %v, errors %v",
		scenario, c.AckedCreates, c.AckedRevokes, c.Lost, c.Duplicated, c.WrongVerdicts, c.UnavailableS, c.Failures, c.Errors)
	t.Logf("FAULTS %s", line)
	for _, p := range c.problems {
		t.Errorf("%s: %s", scenario, p)
	}
	if c.AckedCreates == 0 {
		t.Errorf("%s: no create was acknowledged: the load did not run", scenario)
	}
	if c.Lost != 0 || c.Duplicated != 0 || c.WrongVerdicts != 0 {
		t.Errorf("%s: %d lost, %d duplicated, %d wrong verdicts; want 0", scenario, c.Lost, c.Duplicated, c.WrongVerdicts)
	}
}

// finish fills in the ledger's window figures.
func (c *checkResult) finish(l *ledger) {
	w, longest, kinds := l.window()
	c.UnavailableS, c.LongestS, c.Failures = round3(w.Seconds()), round3(longest.Seconds()), kinds
}

func round3(f float64) float64 {
	v, _ := strconv.ParseFloat(strconv.FormatFloat(f, 'f', 3, 64), 64)
	return v
}

// joinURLs rotates urls by i and joins them, so that processes list the
// nodes in different orders.
func joinURLs(urls []string, i int) string {
	r := append(slices.Clone(urls[i%len(urls):]), urls[:i%len(urls)]...)
	return strings.Join(r, ",")
}
