package bench

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/httpapi"
	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/verifier"
)

// Routes the benchmark adds to the API through Server.Extra, so they get
// the same middleware (deadline, metrics, panic handling) as the real one.
const (
	fixedPath    = "/bench/fixed"
	postgresPath = "/bench/verify-postgres"
)

// runVerifyHTTP: POST /v1/keys/verify on keyd's HTTP API (httpapi.Server,
// the verifier booted from the snapshot, last uses written to Postgres as
// keyd does), loaded by HTTPConns keep-alive connections from an in-process
// client for HTTPDuration. Baselines, on the same server and client: a
// handler that writes a fixed verify reply (the floor), and the same route
// done by hand with one Postgres lookup of the digest per request.
func runVerifyHTTP(ctx context.Context, r *runner) (Result, error) {
	ks, err := r.loadKeys(ctx)
	if err != nil {
		return Result{}, err
	}
	w, err := r.newWorld(ctx, "verify_http")
	if err != nil {
		return Result{}, err
	}
	defer w.close()
	r.phase("booting a verifier from the snapshot")
	// Last uses go to keys.last_used_at as keyd writes them (the statement
	// of the verifier's own flush), except while skipWrites is set (the
	// target that shows what the writes cost): an explicit sink that drops
	// them then.
	var skipWrites atomic.Bool
	v, _, err := r.bootVerifier(ctx, w, func(ctx context.Context, used []verifier.LastUsed) error {
		if skipWrites.Load() {
			return nil
		}
		return verifier.WriteLastUsed(ctx, r.db.pool, used)
	})
	if err != nil {
		return Result{}, err
	}
	defer v.Close()

	conns := r.opts.HTTPConns
	pcfg := r.db.pool.Config().Copy()
	pcfg.MaxConns = int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return Result{}, err
	}
	defer pool.Close()

	pg := &postgresVerify{pool: pool, dig: r.dig, token: r.adminToken}
	base, stop, err := r.serveVerify(ctx, v, ks, func(mux *http.ServeMux) { mux.Handle("POST "+postgresPath, pg) })
	if err != nil {
		return Result{}, err
	}
	defer stop()
	// Last uses left over from a round are written (or dropped) before the
	// next target's round, so that their cost stays with the round that
	// made them (within a round keyd writes them every 2s, as always).
	var flushTook time.Duration
	flush := func() error {
		t := time.Now()
		err := v.FlushLastUsed(ctx)
		flushTook += time.Since(t)
		return err
	}
	targets := []struct {
		name, path    string
		check         func([]byte) error
		before, after func() error
	}{
		{"keyd verify", "/v1/keys/verify", checkVerify, nil, flush},
		{"keyd verify, last use not written", "/v1/keys/verify", checkVerify,
			func() error { skipWrites.Store(true); return nil },
			func() error { err := v.FlushLastUsed(ctx); skipWrites.Store(false); return err }},
		{"fixed reply", fixedPath, checkVerify, nil, nil},
		{"Postgres lookup per request", postgresPath, checkVerify, nil, nil},
	}
	// The targets take turns, several rounds each, so that whatever else
	// the machine does weighs on all alike.
	const rounds = 3
	loads := make([]loadResult, len(targets))
	clients := make([]*http.Client, len(targets))
	for i := range targets {
		var closeIdle func()
		clients[i], closeIdle = newHTTPClient(conns)
		defer closeIdle()
	}
	for round := range rounds {
		for i, t := range targets {
			warm := time.Duration(0)
			if round == 0 {
				warm = r.opts.HTTPWarmup
			}
			if t.before != nil {
				if err := t.before(); err != nil {
					return Result{}, err
				}
			}
			label := fmt.Sprintf("%s (round %d of %d)", t.name, round+1, rounds)
			lr, err := r.httpLoad(ctx, clients[i], base+t.path, label, ks.secrets, t.check, warm, r.opts.HTTPDuration/rounds)
			if err != nil {
				return Result{}, fmt.Errorf("%s: %w", t.name, err)
			}
			loads[i] = loads[i].merge(lr)
			if t.after != nil {
				if err := t.after(); err != nil {
					return Result{}, err
				}
			}
		}
	}
	keyd, noWrites, trivial, diy := loads[0], loads[1], loads[2], loads[3]
	res := Result{
		Name: "verify_http", Value: round(keyd.rps, 0), Unit: "req/s",
		Baseline: Baseline{Name: "fixed reply, same stack", Value: round(trivial.rps, 0)},
		Better:   "higher",
		Goal:     "ratio ≥ 0.8; ≥ 2x Postgres lookup",
		Params: map[string]any{
			"keys":               len(ks.secrets),
			"conns":              conns,
			"duration_s":         r.opts.HTTPDuration.Seconds(),
			"rounds":             rounds,
			"verify_requests":    keyd.n,
			"verify_p50_ms":      ms(keyd.lat.pct(0.50)),
			"verify_p99_ms":      ms(keyd.lat.pct(0.99)),
			"no_last_use_rps":    round(noWrites.rps, 0),
			"no_last_use_ratio":  round(noWrites.rps/trivial.rps, 3),
			"no_last_use_p50_ms": ms(noWrites.lat.pct(0.50)),
			"no_last_use_p99_ms": ms(noWrites.lat.pct(0.99)),
			"trivial_rps":        round(trivial.rps, 0),
			"trivial_p50_ms":     ms(trivial.lat.pct(0.50)),
			"trivial_p99_ms":     ms(trivial.lat.pct(0.99)),
			"postgres_rps":       round(diy.rps, 0),
			"postgres_p50_ms":    ms(diy.lat.pct(0.50)),
			"postgres_p99_ms":    ms(diy.lat.pct(0.99)),
			"postgres_ratio":     round(keyd.rps/diy.rps, 2),
			"postgres_pool":      conns,
			"last_use":           "written to keys.last_used_at in batches every 2s as keyd does, each key at most once per resolution (default 1 minute); random keys over this many keys make nearly every verification in the run a key's first use in its window (the worst case); no_last_use_* is the same route with the batches dropped; leftovers flushed after each round, untimed",
			"leftover_flush_s":   round(flushTook.Seconds(), 3),
			"client":             "in-process net/http, MaxIdleConnsPerHost = conns, random keys, one request per connection at a time",
		},
	}
	res.Met = keyd.rps >= 0.8*trivial.rps && keyd.rps >= 2*diy.rps
	return res, nil
}

// serveVerify serves keyd's HTTP API (httpapi.Server, verifying with v) on
// a loopback port, with the route fixedPath that writes a fixed verify reply
// (a real one, of ks' first key, so both write as much) and the routes of
// extra; it returns the base URL and the function that stops the server.
func (r *runner) serveVerify(ctx context.Context, v *verifier.Verifier, ks *keySet, extra func(*http.ServeMux)) (string, func(), error) {
	sample, err := v.Verify(ctx, ks.secrets[0])
	if err != nil {
		return "", nil, err
	}
	fixed, err := json.Marshal(sample)
	if err != nil {
		return "", nil, err
	}
	fixed = append(fixed, '\n')
	api := &httpapi.Server{
		Verifier: v, AdminToken: r.adminToken, Metrics: metrics.New(), Log: r.log,
		Extra: func(mux *http.ServeMux) {
			mux.HandleFunc("POST "+fixedPath, func(w http.ResponseWriter, _ *http.Request) {
				writeReply(w, fixed)
			})
			if extra != nil {
				extra(mux)
			}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	sctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- api.Serve(sctx, ln) }()
	return "http://" + ln.Addr().String(), func() { stop(); <-served }, nil
}

// checkVerify checks a verify reply of a key of the benchmark's key set:
// valid or revoked.
func checkVerify(body []byte) error {
	var res verifier.Result
	if err := json.Unmarshal(body, &res); err != nil {
		return fmt.Errorf("reply %q: %w", body, err)
	}
	if res.Code != verifier.CodeValid && res.Code != verifier.CodeRevoked {
		return fmt.Errorf("reply %q: code %s", body, res.Code)
	}
	return nil
}

// newHTTPClient returns a client of conns keep-alive connections, and the
// function that closes them.
func newHTTPClient(conns int) (*http.Client, func()) {
	tr := &http.Transport{
		MaxIdleConns: conns, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns,
		DisableCompression: true, IdleConnTimeout: time.Minute,
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}, tr.CloseIdleConnections
}

// writeReply writes a JSON reply the way the API does.
func writeReply(w http.ResponseWriter, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(b)))
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
}

// postgresVerify is the verify route done by hand: the same bearer check,
// body decoding and digest, then one indexed lookup of the digest in
// verification_keys through a pgx pool, and the same reply.
type postgresVerify struct {
	pool  *pgxpool.Pool
	dig   *domain.Digester
	token string
}

const postgresVerifyQuery = `SELECT key_id, org_id, owner_type, owner_id, name, permissions, expires_at, status, metadata
FROM verification_keys WHERE digest = $1`

func (p *postgresVerify) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, code, msg string) {
		b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = w.Write(append(b, '\n'))
	}
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	got, want := sha256.Sum256([]byte(token)), sha256.Sum256([]byte(p.token))
	if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		fail(http.StatusUnauthorized, domain.EUnauthorized, "the bearer token is not valid")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, commands.MaxBytes+1))
	if err != nil {
		fail(http.StatusBadRequest, domain.EInvalid, "request body could not be read")
		return
	}
	var req struct {
		Key         string   `json:"key"`
		Permissions []string `json:"permissions"`
	}
	if err := commands.Decode(body, &req); err != nil {
		fail(http.StatusBadRequest, domain.EInvalid, err.Error())
		return
	}
	res := verifier.Result{Code: verifier.CodeMalformed}
	if domain.ValidSecret(req.Key) {
		d := p.dig.Digest(req.Key)
		var k verifier.KeyInfo
		var status string
		err := p.pool.QueryRow(r.Context(), postgresVerifyQuery, d[:]).Scan(
			&k.ID, &k.OrgID, &k.Owner.Type, &k.Owner.ID, &k.Name, &k.Permissions, &k.ExpiresAt, &status, &k.Metadata)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			res.Code = verifier.CodeNotFound
		case err != nil:
			fail(http.StatusServiceUnavailable, domain.EUnavailable, "the database did not answer")
			return
		default:
			res.Key = k
			switch {
			case status == domain.StatusRevoked:
				res.Code = verifier.CodeRevoked
			case k.ExpiresAt != nil && !time.Now().Before(*k.ExpiresAt):
				res.Code = verifier.CodeExpired
			default:
				res.Code, res.Valid = verifier.CodeValid, true
				for _, perm := range req.Permissions {
					if !slices.Contains(k.Permissions, perm) {
						res.Code, res.Valid = verifier.CodeInsufficientPermissions, false
					}
				}
			}
		}
	}
	b, err := json.Marshal(res)
	if err != nil {
		fail(http.StatusInternalServerError, domain.EInternal, "internal error")
		return
	}
	writeReply(w, append(b, '\n'))
}

// httpLoad posts {"key": <random secret>} to url from HTTPConns
// goroutines, each on its own keep-alive connection (of client), one
// request at a time: warm, then d measured. Every reply must be 200; every
// 256th is checked with check.
func (r *runner) httpLoad(ctx context.Context, client *http.Client, url, label string, secrets []string, check func([]byte) error, warm, d time.Duration) (loadResult, error) {
	conns := r.opts.HTTPConns
	worker := func(c int) func(i int) error {
		rng := mrand.New(mrand.NewPCG(uint64(c)+1, uint64(time.Now().UnixNano())))
		p := r.newPoster(ctx, client, url)
		return func(i int) error {
			reply, err := p.post(secrets[rng.IntN(len(secrets))])
			if err == nil && i%256 == 0 {
				err = check(reply)
			}
			return err
		}
	}
	return r.closedLoop(ctx, label, "req/s", conns, warm, d, worker)
}

// poster posts verify requests, one at a time, reusing its buffers.
type poster struct {
	ctx         context.Context
	client      *http.Client
	url, auth   string
	body, reply bytes.Buffer
}

func (r *runner) newPoster(ctx context.Context, client *http.Client, url string) *poster {
	return &poster{ctx: ctx, client: client, url: url, auth: "Bearer " + r.adminToken}
}

// post posts {"key": secret} and returns the reply body (valid until the
// next post), or an error for a failure or a status other than 200.
func (p *poster) post(secret string) ([]byte, error) {
	p.body.Reset()
	p.body.WriteString(`{"key":"`)
	p.body.WriteString(secret)
	p.body.WriteString(`"}`)
	req, err := http.NewRequestWithContext(p.ctx, http.MethodPost, p.url, bytes.NewReader(p.body.Bytes()))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", p.auth)
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	p.reply.Reset()
	_, err = p.reply.ReadFrom(resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d: %s", resp.StatusCode, bytes.TrimSpace(p.reply.Bytes()))
	}
	return p.reply.Bytes(), err
}
