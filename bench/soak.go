package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/keyd-dev/keyd/domain"
)

// SoakOptions sizes a soak (keyd bench --soak).
type SoakOptions struct {
	// Duration is how long the load runs.
	Duration time.Duration
	// Interval is how often a line of figures is printed (a minute).
	Interval time.Duration
	// The steady load: creates and revokes per second over NATS, verifies
	// over HTTP from VerifyClients clients (each one verify at a time,
	// VerifyPause between), lists per second over HTTP.
	CreatesPerSec, RevokesPerSec, ListsPerSec float64
	VerifyClients                             int
	VerifyPause                               time.Duration
	// Keys, when above 0, fixes the key set: the soak first creates Keys
	// keys, then sends no creates or revokes but UpdatesPerSec updates (a
	// random key gets a new random metadata map and, half the time, a new
	// name), so that with the data's size constant only a leak can grow.
	Keys          int
	UpdatesPerSec float64
	// HeapProfile, when not empty, is a path prefix: after each interval's
	// forced GC the soak writes the heap profile to
	// HeapProfile-<interval number>.pprof (1, 2, …), for
	// go tool pprof -diff_base.
	HeapProfile string
}

// DefaultSoakOptions is the load of keyd bench --soak: 20 creates, 10
// revokes and 5 lists a second, 4 verify clients with a 1 ms pause; with a
// fixed key set (Keys > 0), 30 updates a second in place of the creates and
// revokes.
func DefaultSoakOptions(d time.Duration) SoakOptions {
	return SoakOptions{Duration: d, Interval: time.Minute, CreatesPerSec: 20, RevokesPerSec: 10, ListsPerSec: 5,
		VerifyClients: 4, VerifyPause: time.Millisecond, UpdatesPerSec: 30}
}

// SoakSample is one interval's figures. Memory, goroutines and fds are the
// benchmark process's, which runs keyd in-process (and the embedded NATS
// server); connections are the NATS server's client count and the
// process's open sockets.
type SoakSample struct {
	Minute      float64                  `json:"minute"` // since the start
	RSSBytes    int64                    `json:"rss_bytes"`
	HeapBytes   uint64                   `json:"heap_alloc_bytes"`
	LiveBytes   uint64                   `json:"heap_live_bytes"` // heap after a forced GC
	Goroutines  int                      `json:"goroutines"`
	FDs         int                      `json:"fds"`
	Sockets     int                      `json:"sockets"`
	NATSClients int                      `json:"nats_clients"`
	Keys        int                      `json:"keys_created"`
	Ops         map[string]SoakOpFigures `json:"ops"`
}

// SoakOpFigures is one operation's figures over an interval.
type SoakOpFigures struct {
	N      int     `json:"n"`
	Errors int     `json:"errors"`
	P50    float64 `json:"p50_ms"`
	P99    float64 `json:"p99_ms"`
}

// soakOps are the operations, in report order: those of a growing key set
// and those of a fixed one.
var (
	soakOps      = []string{"create", "revoke", "verify", "list"}
	soakFixedOps = []string{"update", "verify", "list"}
)

// Soak runs a steady mixed load (creates and revokes over NATS, verifies
// and lists over HTTP) against an in-process keyd on an embedded NATS
// server and a fresh Postgres database, as the benchmark sets them up, for
// o.Duration, and prints one line of figures per o.Interval to out: memory
// (RSS, heap), goroutines, open fds and sockets, NATS connections, and
// latency p50/p99 per operation. It returns the samples. A soak shows
// leaks: every figure but the keys created should stay flat, and with a
// fixed key set (o.Keys > 0) every figure, memory included.
func Soak(ctx context.Context, env Env, o SoakOptions, out io.Writer) ([]SoakSample, error) {
	tmp, err := os.MkdirTemp("", "keyd-soak-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	db, err := createDatabase(ctx, env.DatabaseURL)
	if err != nil {
		return nil, err
	}
	defer db.drop()
	p := newProgress(env.Progress)
	defer p.clear()
	r := &runner{env: env, tmp: tmp, db: db, progress: p, log: env.Log, prefix: "soak"}
	r.init()
	w, err := r.newWorld(ctx, "soak")
	if err != nil {
		return nil, err
	}
	defer w.close()
	k, err := r.startKeyd(ctx, w)
	if err != nil {
		return nil, err
	}
	nc, err := w.connect("keyd soak")
	if err != nil {
		return nil, err
	}
	if err := definePermission(ctx, nc); err != nil {
		return nil, err
	}
	base := "http://" + k.HTTPAddr
	client := &http.Client{Timeout: 10 * time.Second}
	org := "soak-org"
	ops := soakOps
	if o.Keys > 0 {
		ops = soakFixedOps
	}
	s := &soak{ops: ops, lat: map[string][]time.Duration{}, errs: map[string]int{}}
	if o.Keys > 0 {
		start := time.Now()
		if err := s.seed(ctx, nc, org, o.Keys); err != nil {
			return nil, err
		}
		fmt.Fprintf(out, "keyd bench --soak %s --soak-keys %d: %d keys created in %s; then %g updates/s, %g lists/s, %d verify clients; a line every %s\n",
			o.Duration, o.Keys, o.Keys, time.Since(start).Round(time.Millisecond), o.UpdatesPerSec, o.ListsPerSec, o.VerifyClients, o.Interval)
	} else {
		fmt.Fprintf(out, "keyd bench --soak %s: %g creates/s, %g revokes/s, %g lists/s, %d verify clients; a line every %s\n",
			o.Duration, o.CreatesPerSec, o.RevokesPerSec, o.ListsPerSec, o.VerifyClients, o.Interval)
	}
	fmt.Fprintf(out, "%6s %9s %9s %9s %6s %5s %5s %5s %7s", "m:ss", "rss_MB", "heap_MB", "live_MB", "gorout", "fds", "socks", "natsc", "keys")
	for _, op := range ops {
		fmt.Fprintf(out, " %22s", op+" n/p50/p99 ms")
	}
	fmt.Fprintln(out)

	lctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var wg sync.WaitGroup
	paced := func(rate float64, op func()) {
		if rate <= 0 {
			return
		}
		wg.Go(func() {
			t := time.NewTicker(time.Duration(float64(time.Second) / rate))
			defer t.Stop()
			for {
				select {
				case <-lctx.Done():
					return
				case <-t.C:
					op()
				}
			}
		})
	}
	if o.Keys > 0 {
		paced(o.UpdatesPerSec, func() {
			id := s.randomID()
			if id == "" {
				return
			}
			start := time.Now()
			s.record(lctx, "update", start, request(lctx, nc, "keyd.cmd.keys."+org+".update", randomUpdate(id), nil))
		})
	} else {
		s.growing(lctx, paced, nc, org, o)
	}
	paced(o.ListsPerSec, func() {
		start := time.Now()
		s.record(lctx, "list", start, httpOK(lctx, client, "GET", base+"/v1/orgs/"+org+"/keys?limit=20", r.adminToken, nil))
	})
	for range o.VerifyClients {
		wg.Go(func() {
			for lctx.Err() == nil {
				secret := s.randomSecret()
				if secret == "" {
					time.Sleep(10 * time.Millisecond)
					continue
				}
				body, _ := json.Marshal(map[string]any{"key": secret})
				start := time.Now()
				s.record(lctx, "verify", start, httpOK(lctx, client, "POST", base+"/v1/keys/verify", r.adminToken, body))
				time.Sleep(o.VerifyPause)
			}
		})
	}

	var samples []SoakSample
	begin := time.Now()
	lastSample := begin
	tick := time.NewTicker(o.Interval)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-tick.C:
		case <-lctx.Done():
			done = true
		}
		if done && time.Since(lastSample) < o.Interval/2 {
			break // a partial last interval of almost nothing
		}
		lastSample = time.Now()
		sm := s.sample(time.Since(begin), w.ns.NumClients())
		samples = append(samples, sm)
		if o.HeapProfile != "" {
			if err := writeHeapProfile(fmt.Sprintf("%s-%d.pprof", o.HeapProfile, len(samples))); err != nil {
				return samples, err
			}
		}
		el := time.Duration(sm.Minute * float64(time.Minute)).Round(time.Second)
		fmt.Fprintf(out, "%6s %9.1f %9.1f %9.1f %6d %5d %5d %5d %7d", fmt.Sprintf("%d:%02d", int(el.Minutes()), int(el.Seconds())%60),
			float64(sm.RSSBytes)/(1<<20), float64(sm.HeapBytes)/(1<<20), float64(sm.LiveBytes)/(1<<20),
			sm.Goroutines, sm.FDs, sm.Sockets, sm.NATSClients, sm.Keys)
		for _, op := range ops {
			f := sm.Ops[op]
			fmt.Fprintf(out, " %22s", fmt.Sprintf("%d/%.2f/%.2f", f.N, f.P50, f.P99))
			if f.Errors > 0 {
				fmt.Fprintf(out, " (%d errors)", f.Errors)
			}
		}
		fmt.Fprintln(out)
	}
	cancel()
	wg.Wait()
	if ctx.Err() != nil {
		return samples, ctx.Err()
	}
	return samples, nil
}

// growing starts the load of a growing key set: paced creates and revokes.
func (s *soak) growing(ctx context.Context, paced func(float64, func()), nc *nats.Conn, org string, o SoakOptions) {
	paced(o.CreatesPerSec, func() {
		var res domain.CreateKeyResult
		start := time.Now()
		err := request(ctx, nc, "keyd.cmd.keys."+org+".create", map[string]any{"name": "soak key", "permissions": []string{benchPermission}}, &res)
		s.record(ctx, "create", start, err)
		if err == nil {
			s.add(res.Key.ID, res.Secret)
		}
	})
	paced(o.RevokesPerSec, func() {
		id := s.takeToRevoke()
		if id == "" {
			return
		}
		start := time.Now()
		s.record(ctx, "revoke", start, request(ctx, nc, "keyd.cmd.keys."+org+".revoke", map[string]any{"key_id": id}, nil))
	})
}

// seed creates n keys (the fixed key set) as fast as 8 concurrent
// requesters go; the first failure stops it and is returned.
func (s *soak) seed(ctx context.Context, nc *nats.Conn, org string, n int) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	next := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range next {
				var res domain.CreateKeyResult
				if err := request(ctx, nc, "keyd.cmd.keys."+org+".create", map[string]any{"name": "soak key", "permissions": []string{benchPermission}}, &res); err != nil {
					cancel(fmt.Errorf("creating the soak's keys: %w", err))
					continue
				}
				s.add(res.Key.ID, res.Secret)
			}
		})
	}
	for range n {
		if ctx.Err() != nil {
			break
		}
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	return context.Cause(ctx)
}

// soakMetadataKeys are the metadata keys an update draws from.
var soakMetadataKeys = []string{"team", "env", "tier", "region", "owner", "plan"}

// randomUpdate is an update command for key id: a new metadata map of 1 to
// 4 entries with random values and, half the time, a new name.
func randomUpdate(id string) map[string]any {
	md := map[string]string{}
	for range 1 + rand.IntN(4) {
		md[soakMetadataKeys[rand.IntN(len(soakMetadataKeys))]] = strconv.FormatUint(rand.Uint64(), 36)
	}
	u := map[string]any{"key_id": id, "metadata": md}
	if rand.IntN(2) == 0 {
		u["name"] = "soak key " + strconv.Itoa(rand.IntN(1_000_000))
	}
	return u
}

// soak is a soak's shared state: the keys created (to verify and revoke)
// and the current interval's latencies.
type soak struct {
	ops     []string // reported, in order
	mu      sync.Mutex
	ids     []string // not yet revoked
	secrets []string // the last 10,000 created
	created int
	lat     map[string][]time.Duration
	errs    map[string]int
}

func (s *soak) add(id, secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.created++
	s.ids = append(s.ids, id)
	if len(s.ids) > 10_000 {
		s.ids = s.ids[len(s.ids)-10_000:]
	}
	s.secrets = append(s.secrets, secret)
	if len(s.secrets) > 10_000 {
		s.secrets = s.secrets[len(s.secrets)-10_000:]
	}
}

// takeToRevoke returns a random created, unrevoked key id (and forgets it).
func (s *soak) takeToRevoke() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ids) == 0 {
		return ""
	}
	i := rand.IntN(len(s.ids))
	id := s.ids[i]
	s.ids[i] = s.ids[len(s.ids)-1]
	s.ids = s.ids[:len(s.ids)-1]
	return id
}

// randomID returns a random created, unrevoked key id ("" if none).
func (s *soak) randomID() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.ids) == 0 {
		return ""
	}
	return s.ids[rand.IntN(len(s.ids))]
}

func (s *soak) randomSecret() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.secrets) == 0 {
		return ""
	}
	return s.secrets[rand.IntN(len(s.secrets))]
}

func (s *soak) record(ctx context.Context, op string, start time.Time, err error) {
	d := time.Since(start)
	if err != nil && ctx.Err() != nil {
		return // cut by the end of the soak
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lat[op] = append(s.lat[op], d)
	if err != nil {
		s.errs[op]++
	}
}

// sample takes the interval's figures and starts a new interval.
func (s *soak) sample(el time.Duration, natsClients int) SoakSample {
	s.mu.Lock()
	lat, errs := s.lat, s.errs
	s.lat, s.errs = map[string][]time.Duration{}, map[string]int{}
	created := s.created
	s.mu.Unlock()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heap := ms.HeapAlloc
	runtime.GC()
	runtime.ReadMemStats(&ms)
	fds, socks := openFDs()
	sm := SoakSample{Minute: round(el.Minutes(), 3), RSSBytes: rss(), HeapBytes: heap, LiveBytes: ms.HeapAlloc, Goroutines: runtime.NumGoroutine(),
		FDs: fds, Sockets: socks, NATSClients: natsClients, Keys: created, Ops: map[string]SoakOpFigures{}}
	for _, op := range s.ops {
		l := latencies(lat[op]).sorted()
		sm.Ops[op] = SoakOpFigures{N: len(l), Errors: errs[op], P50: ms2(l.pct(0.50)), P99: ms2(l.pct(0.99))}
	}
	return sm
}

func ms2(d time.Duration) float64 { return round(float64(d)/1e6, 2) }

// httpOK sends a request with the bearer token and returns an error unless
// it answers 200.
func httpOK(ctx context.Context, c *http.Client, method, url, token string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 {
		return fmt.Errorf("%s %s: %d", method, url, resp.StatusCode)
	}
	return nil
}

// rss is the process's resident set size (Linux; 0 elsewhere).
func rss() int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// openFDs counts the process's open file descriptors and, among them,
// sockets (Linux; 0 elsewhere).
func openFDs() (fds, sockets int) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, 0
	}
	for _, e := range ents {
		fds++
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			sockets++
		}
	}
	return fds, sockets
}

// writeHeapProfile writes the heap profile to path. Taken right after
// sample's forced GC, its inuse figures are the live heap as of that GC.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("writing heap profile %s: %w", path, err)
	}
	return f.Close()
}
