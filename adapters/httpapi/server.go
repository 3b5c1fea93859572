// Package httpapi is keyd's HTTP API: the read routes (keys, audit events,
// the permission catalog) over the Postgres read models, the management
// routes, which run through the same command path as NATS
// (commands.Runner), widget sessions, CORS for the embedded widget, and
// health, readiness and metrics.
//
// Every /v1 route needs "Authorization: Bearer <token>": the admin token, or,
// on the routes the contract marks (W), a widget session token of the
// organization in the path. Every reply is JSON (but /metrics); errors are
// {"error": {"code", "message"}} with the status the contract gives each
// code, written and logged in one place (Server.writeError); only internal
// and unavailable errors are logged, never with bodies, tokens or secrets.
//
// Routes (/widget/* are added by the wiring through Server.Extra):
//
//	GET    /v1/orgs/{org}/keys                        (W) list keys
//	POST   /v1/orgs/{org}/keys                        (W) create: 201
//	GET    /v1/orgs/{org}/keys/{key_id}               (W) one key
//	PATCH  /v1/orgs/{org}/keys/{key_id}               (W) update
//	POST   /v1/orgs/{org}/keys/{key_id}/revoke        (W) revoke
//	PUT    /v1/orgs/{org}/keys/{key_id}/permissions   (W) set_permissions
//	POST   /v1/orgs/{org}/keys/{key_id}/rotate        (W) rotate
//	GET    /v1/orgs/{org}/events                          audit events
//	GET    /v1/permissions                            (W) the catalog
//	PUT    /v1/permissions/{slug}                         define
//	DELETE /v1/permissions/{slug}                         retire
//	GET    /v1/roles                                  (W) the role catalog
//	PUT    /v1/roles/{slug}                               define a role
//	DELETE /v1/roles/{slug}                               retire a role
//	POST   /v1/orgs/{org}/users/{user_id}/keys/revoke     revoke a user's keys
//	POST   /v1/keys/verify                                verify a key (in-memory verifier)
//	POST   /v1/widget/sessions                            issue a widget session
//	DELETE /v1/widget/sessions/{id}                       end a widget session
//	GET    /v1/widget/session                  (session) describe the caller's session
//	POST   /v1/orgs/{org}/keys/{key_id}/suspend       (W) suspend
//	POST   /v1/orgs/{org}/keys/{key_id}/resume        (W) resume
//	PUT    /v1/orgs/{org}/keys/{key_id}/expiry        (W) set_expiry
//	GET    /v1/orgs/{org}/keys/{key_id}/history       (W) the key's history
//	GET    /v1/orgs/{org}/policy                      (W) the organization's policy
//	PUT    /v1/orgs/{org}/policy                          set_policy
//	POST   /v1/leaks                                      secret-scanning leak reports (leaks.go)
//	GET    /healthz, /readyz, /metrics
//
// With InternalSurfaces, /metrics and the detailed /readyz move to
// InternalHandler (keyd's --internal-http listener).
//
// Limits (findings M3, M4, L5 of the security review), each answered
// rate_limited (429) with Retry-After: AuthFailureLimit failed
// authentications per client address per AuthFailureWindow; SessionRate
// requests a second per widget session; MaxWaitsPerToken min_sequence waits
// at once per token, all of a process's waits sharing one watcher of the
// read models. Serve limits request headers to 64 KiB (431).
package httpapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/verifier"
)

// Defaults of the Server's tunables and the http.Server timeouts.
const (
	// DefaultMinSequenceWait bounds how long a GET with min_sequence waits
	// for the read models (the contract's 5 s).
	DefaultMinSequenceWait = 5 * time.Second
	// DefaultRequestTimeout bounds one request's work; it exceeds the
	// min_sequence wait so a waiting read answers 503, not a cut connection.
	DefaultRequestTimeout = 15 * time.Second
	// ShutdownTimeout is how long Serve lets requests in flight finish once
	// its context ends.
	ShutdownTimeout = 10 * time.Second

	readHeaderTimeout = 5 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 30 * time.Second // > DefaultRequestTimeout
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 64 << 10

	// SequenceHeader carries, on every read (GET) reply, the stream
	// sequence the read models had applied when the data was read: the data
	// is at least that new.
	SequenceHeader = "Keyd-Sequence"
)

// Server is keyd's HTTP API. Set its fields, then call Handler or Serve; do
// not change them afterwards.
type Server struct {
	// Runner runs the management commands (the one command path).
	Runner *commands.Runner
	// Reads answers the read routes.
	Reads *postgres.ReadModel
	// AdminToken is the bearer token with access to every route. Empty
	// disables admin access.
	AdminToken string
	// Sessions verifies widget session tokens and issues them. Nil disables
	// widget sessions.
	Sessions *Sessions
	// Metrics records HTTP request counts and latencies and serves
	// /metrics. Nil disables both.
	Metrics *metrics.Metrics
	// Ready reports readiness (NATS, Postgres, verifier caught up) for
	// GET /readyz, with details for the reply body. Nil means ready.
	Ready func(ctx context.Context) (ok bool, detail map[string]any)
	// WidgetOrigins are the origins (exact "scheme://host[:port]") the
	// widget may be embedded on; they get CORS on the widget routes.
	WidgetOrigins []string
	// AllowLocalhostOrigins also allows any http(s) origin on localhost,
	// 127.0.0.1 or [::1] (keyd dev).
	AllowLocalhostOrigins bool
	// Log receives internal errors (nil: slog.Default()).
	Log *slog.Logger
	// Extra, if set, registers more routes on the mux (keyd adds
	// /widget/*); they get the same timeout, metrics, JSON 404/405 and
	// panic handling.
	Extra func(mux *http.ServeMux)
	// Verifier answers POST /v1/keys/verify (nil: the route answers
	// unavailable).
	Verifier *verifier.Verifier
	// MinSequenceWait bounds a min_sequence wait (DefaultMinSequenceWait
	// if zero).
	MinSequenceWait time.Duration
	// RequestTimeout bounds each request (DefaultRequestTimeout if zero).
	RequestTimeout time.Duration
	// SessionRate is how many requests a second one widget session may
	// make (the burst is one second's worth); more are rate_limited. Zero
	// means DefaultSessionRate, a negative value no limit. The admin token
	// has none.
	SessionRate float64
	// AuthFailureLimit is how many failed authentications one client
	// address may make within AuthFailureWindow before every
	// authentication from it is rate_limited until the window ends. Zero
	// means the package's AuthFailureLimit, a negative value no limit.
	AuthFailureLimit int
	// EndedSessions records the widget sessions ended by
	// DELETE /v1/widget/sessions/{id}, refused on every request. Nil: the
	// route answers unavailable.
	EndedSessions EndedSessions
	// InternalSurfaces moves /metrics and the detailed /readyz to
	// InternalHandler: the API's own /readyz then answers only
	// {"status"}, and it has no /metrics.
	InternalSurfaces bool
	// LoopbackHostsOnly answers 403 permission_denied to every request
	// whose Host is not localhost, 127.0.0.1 or [::1] (any port): keyd dev,
	// which a web page could otherwise reach by DNS rebinding.
	LoopbackHostsOnly bool
	// Now is the clock of the rate limits (nil: time.Now).
	Now func() time.Time
	// LeakKeys are the public keys leak reports may be signed with
	// (--leak-signing-keys); nil: only the admin token may report.
	LeakKeys *LeakKeys

	once     sync.Once
	handler  http.Handler
	limits   limits
	authLogs everySecond
}

// limits is the state of a Server's limits, built with its handler.
type limits struct {
	failures *failureLimiter
	sessions *tokenBuckets // nil: no per-session limit
	waits    waitSlots
	watcher  sequenceWatcher
}

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) logger() *slog.Logger {
	if s.Log != nil {
		return s.Log
	}
	return slog.Default()
}

func (s *Server) minSequenceWait() time.Duration {
	if s.MinSequenceWait > 0 {
		return s.MinSequenceWait
	}
	return DefaultMinSequenceWait
}

func (s *Server) requestTimeout() time.Duration {
	if s.RequestTimeout > 0 {
		return s.RequestTimeout
	}
	return DefaultRequestTimeout
}

// Handler returns the API's http.Handler, built on first use.
func (s *Server) Handler() http.Handler {
	s.init()
	return s.handler
}

// init builds the handler and the limits' state, once.
func (s *Server) init() {
	s.once.Do(func() {
		if s.AuthFailureLimit >= 0 {
			s.limits.failures = newFailureLimiter(s.now)
			if s.AuthFailureLimit > 0 {
				s.limits.failures.limit = s.AuthFailureLimit
			}
		}
		switch rate := s.SessionRate; {
		case rate == 0:
			s.limits.sessions = newTokenBuckets(DefaultSessionRate, s.now)
		case rate > 0:
			s.limits.sessions = newTokenBuckets(rate, s.now)
		}
		s.limits.waits.max = MaxWaitsPerToken
		s.limits.watcher.applied = func(ctx context.Context) (uint64, error) { return s.Reads.AppliedSequence(ctx) }
		mux := http.NewServeMux()
		s.routes(mux)
		if s.Extra != nil {
			s.Extra(mux)
		}
		s.handler = s.wrap(mux)
	})
}

// InternalHandler returns the handler of the internal listener: GET
// /metrics, the detailed GET /readyz and GET /healthz. Serve it on an
// address only operators reach (keyd's --internal-http) with
// InternalSurfaces set.
func (s *Server) InternalHandler() http.Handler {
	s.init()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyzDetail)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics.Handler())
	}
	return s.wrap(mux)
}

// Serve serves the API on ln until ctx ends, then shuts down gracefully:
// it stops accepting, lets requests in flight finish for up to
// ShutdownTimeout, then closes what is left. It returns nil after a
// shutdown caused by ctx, or the error that stopped serving.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.serve(ctx, ln, s.Handler())
}

// ServeInternal serves InternalHandler on ln as Serve serves the API.
func (s *Server) ServeInternal(ctx context.Context, ln net.Listener) error {
	return s.serve(ctx, ln, s.InternalHandler())
}

func (s *Server) serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.logger().Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		_ = srv.Close()
		err = fmt.Errorf("http: shutdown: requests still running after %s were cut off: %w", ShutdownTimeout, err)
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = fmt.Errorf("http: serve on %s: %w", ln.Addr(), serr)
	}
	return err
}

// routes registers the contract's routes (but /widget/*, which Extra adds).
func (s *Server) routes(mux *http.ServeMux) {
	r := router{s: s, mux: mux, preflights: map[string]bool{}}
	r.handle("GET /v1/orgs/{org}/keys", widget, s.listKeys)
	r.handle("POST /v1/orgs/{org}/keys", widget, s.command(commands.Create))
	r.handle("GET /v1/orgs/{org}/keys/{key_id}", widget, s.getKey)
	r.handle("PATCH /v1/orgs/{org}/keys/{key_id}", widget, s.command(commands.Update))
	r.handle("POST /v1/orgs/{org}/keys/{key_id}/revoke", widget, s.command(commands.Revoke))
	r.handle("PUT /v1/orgs/{org}/keys/{key_id}/permissions", widget, s.command(commands.SetPermissions))
	r.handle("POST /v1/orgs/{org}/keys/{key_id}/rotate", widget, s.command(commands.Rotate))
	r.handle("GET /v1/orgs/{org}/events", adminOnly, s.listEvents)
	r.handle("GET /v1/permissions", widget, s.listPermissions)
	r.handle("PUT /v1/permissions/{slug}", adminOnly, s.command(commands.Define))
	r.handle("DELETE /v1/permissions/{slug}", adminOnly, s.command(commands.Retire))
	r.handle("POST /v1/keys/verify", adminOnly, s.verify)
	r.handle("GET /v1/roles", widget, s.listRoles)
	r.handle("PUT /v1/roles/{slug}", adminOnly, s.command(commands.DefineRole))
	r.handle("DELETE /v1/roles/{slug}", adminOnly, s.command(commands.RetireRole))
	r.handle("POST /v1/orgs/{org}/users/{user_id}/keys/revoke", adminOnly, s.command(commands.RevokeUserKeys))
	r.handle("POST /v1/widget/sessions", adminOnly, s.createSession)
	r.handle("DELETE /v1/widget/sessions/{id}", adminOnly, s.endSession)
	r.handle("GET /v1/widget/session", sessionOnly, s.getSession)
	s.lifecycleRoutes(r)

	mux.HandleFunc("GET /healthz", s.healthz)
	if s.InternalSurfaces {
		mux.HandleFunc("GET /readyz", s.readyzStatus)
		return
	}
	mux.HandleFunc("GET /readyz", s.readyzDetail)
	if s.Metrics != nil {
		mux.Handle("GET /metrics", s.Metrics.Handler())
	}
}

// authedHandler is a /v1 route's handler, called once the caller is
// authenticated and authorized.
type authedHandler func(w http.ResponseWriter, r *http.Request, c caller)

type router struct {
	s          *Server
	mux        *http.ServeMux
	preflights map[string]bool
}

// handle registers an authenticated route. Routes the widget calls also
// get CORS headers and an OPTIONS preflight route for their path.
func (rt router) handle(pattern string, a access, h authedHandler) {
	s := rt.s
	cors := a == widget || a == sessionOnly
	if _, path, ok := strings.Cut(pattern, " "); ok && cors && !rt.preflights[path] {
		rt.preflights[path] = true
		rt.mux.HandleFunc("OPTIONS "+path, s.preflight)
	}
	rt.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if cors {
			s.cors(w, r)
		}
		c, err := s.admit(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		if err := s.checkPath(r, c, a); err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r, c)
	})
}

// admit authenticates r under the limits: a client address with too many
// recent failed authentications is rate_limited before its token is even
// looked at (so guessing stops paying), a failure is counted (metric,
// limiter) and logged at most once a second, and a widget session over
// SessionRate is rate_limited.
func (s *Server) admit(r *http.Request) (caller, error) {
	addr := clientAddress(r)
	fl := s.limits.failures
	if fl != nil {
		if d := fl.blocked(addr); d > 0 {
			s.Metrics.Limit(metrics.LimitAuthFailures)
			return caller{}, rateLimited(d, "%d failed authentications from %s within %s; retry after the Retry-After seconds",
				fl.limit, addr, fl.window)
		}
	}
	c, reason, err := s.authenticate(r)
	if err != nil {
		if fl != nil {
			fl.fail(addr)
		}
		s.Metrics.FailAuth(reason)
		if ok, held := s.authLogs.allow(s.now()); ok {
			s.logger().LogAttrs(r.Context(), slog.LevelWarn, "http authentication failed",
				slog.String("client", addr), slog.String("reason", reason), slog.String("route", routeLabel(r)),
				slog.Int("not_logged_since_last", held))
		}
		return caller{}, err
	}
	if !c.admin && s.limits.sessions != nil {
		if d := s.limits.sessions.take(c.session.ID); d > 0 {
			s.Metrics.Limit(metrics.LimitToken)
			return caller{}, rateLimited(d, "this widget session made more than %g requests a second; retry after the Retry-After seconds",
				s.limits.sessions.rate)
		}
	}
	return c, nil
}

// checkPath checks the shape of the ids in the path and that c may call
// the route for its organization: invalid_argument or permission_denied.
func (s *Server) checkPath(r *http.Request, c caller, a access) error {
	org := r.PathValue("org")
	if org != "" {
		if err := domain.CheckOrgID(org); err != nil {
			return err
		}
	}
	if err := authorize(c, a, org); err != nil {
		return err
	}
	if id := r.PathValue("key_id"); id != "" {
		if err := domain.CheckKeyID(id); err != nil {
			return err
		}
	}
	if user := r.PathValue("user_id"); user != "" {
		if err := domain.CheckUserID("user_id", user); err != nil {
			return err
		}
	}
	if slug := r.PathValue("slug"); slug != "" {
		return domain.CheckSlug(slug)
	}
	return nil
}

// wrap adds, around the mux, what every request gets: a deadline, metrics,
// JSON replies for unknown routes (404) and methods (405), and a 500 for a
// panicking handler.
func (s *Server) wrap(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ctx, cancel := context.WithTimeout(r.Context(), s.requestTimeout())
		defer cancel()
		r = r.WithContext(ctx)
		sw := &statusWriter{ResponseWriter: w}
		if s.LoopbackHostsOnly && !loopbackHost(r.Host) {
			writeErrorBody(sw, domain.Errorf(domain.EForbidden,
				"this keyd dev server answers only requests for localhost, 127.0.0.1 or [::1], not %q (a guard against DNS rebinding)", r.Host))
			s.observe(r, sw.code(), time.Since(start))
			return
		}
		defer func() {
			if v := recover(); v != nil {
				if v == http.ErrAbortHandler { //nolint:errorlint // a sentinel compared as net/http does
					panic(v)
				}
				s.logger().Error("http handler panicked", "method", r.Method, "route", routeLabel(r),
					"panic", fmt.Sprint(v), "stack", string(debug.Stack()))
				if !sw.wroteHeader {
					writeErrorBody(sw, errors.New("panic")) // logged above, with the stack
				}
			}
			s.observe(r, sw.code(), time.Since(start))
		}()
		if _, pattern := mux.Handler(r); pattern == "" {
			mux.ServeHTTP(&fallbackWriter{ResponseWriter: sw, method: r.Method, path: r.URL.Path}, r)
			return
		}
		mux.ServeHTTP(sw, r)
	})
}

// loopbackHost reports whether a Host header names localhost, 127.0.0.1
// or [::1], with any port.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	} else if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	return strings.EqualFold(host, "localhost") || host == "127.0.0.1" || host == "::1"
}

// observe records one request in the metrics, labelled by route pattern
// (never the raw path, which holds ids).
func (s *Server) observe(r *http.Request, status int, d time.Duration) {
	if s.Metrics == nil {
		return
	}
	route, method := routeLabel(r), methodLabel(r.Method)
	s.Metrics.HTTPRequests.WithLabelValues(route, method, fmt.Sprint(status)).Inc()
	s.Metrics.HTTPSeconds.WithLabelValues(route, method).Observe(d.Seconds())
}

// methodLabel is the method for metric labels: any method a client makes
// up is "other", so clients cannot grow the metrics without bound.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions:
		return m
	}
	return "other"
}

// routeLabel is the route pattern r matched, or "unmatched".
func routeLabel(r *http.Request) string {
	if r.Pattern == "" {
		return "unmatched"
	}
	return r.Pattern
}

// statusWriter remembers the status of a reply.
type statusWriter struct {
	http.ResponseWriter
	status      int
	wroteHeader bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wroteHeader && code >= 200 {
		w.status, w.wroteHeader = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if !w.wroteHeader {
		w.status, w.wroteHeader = http.StatusOK, true
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) code() int {
	if !w.wroteHeader {
		return http.StatusOK
	}
	return w.status
}

// Unwrap lets http.ResponseController reach the connection.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// fallbackWriter replaces the mux's plain-text 404 and 405 replies by JSON
// errors (keeping the Allow header of a 405).
type fallbackWriter struct {
	http.ResponseWriter
	method, path string
	replaced     bool
}

func (w *fallbackWriter) WriteHeader(code int) {
	switch code {
	case http.StatusNotFound:
		w.replaced = true
		writeErrorBody(w.ResponseWriter, domain.Errorf(domain.ENotFound, "there is no route %s %q; the routes are listed in the keyd HTTP documentation", w.method, w.path))
	case http.StatusMethodNotAllowed:
		// The contract has no code of its own for this; the status says it.
		w.replaced = true
		writeJSON(w.ResponseWriter, http.StatusMethodNotAllowed, domain.ErrorBody{Error: domain.ErrorDetail{
			Code:    domain.EInvalid,
			Message: fmt.Sprintf("%s is not allowed on %s; use %s", w.method, w.path, w.ResponseWriter.Header().Get("Allow")),
		}})
	default:
		w.ResponseWriter.WriteHeader(code)
	}
}

func (w *fallbackWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}
