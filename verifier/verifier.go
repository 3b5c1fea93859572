// Package verifier answers "is this API key valid, and may it do this?" from
// memory, in about a microsecond, without a network round trip.
//
// A Verifier is an in-memory projection of keyd's event stream (KEYD_EVENTS
// on NATS JetStream). It boots from the verification snapshot keyd's
// projector keeps in Postgres and the stream sequence that snapshot
// reflects, then follows the stream from the next sequence, so a revocation
// reaches it in the time NATS takes to deliver one message. Every keyd
// process holds one; any Go program can embed one with Connect and protect
// its routes with Middleware.
//
// It fails closed: until it has caught up with the stream, and whenever it
// has been cut off from the stream for longer than Config.MaxStaleness (so it
// can no longer promise that revocations are current), Verify returns an
// unavailable error instead of a verdict.
package verifier

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// Verification codes, the contract's closed set.
const (
	CodeValid                   = "valid"
	CodeMalformed               = "malformed"                // not shaped like a key, or its checksum fails: no lookup was made
	CodeNotFound                = "not_found"                // no such key
	CodeRevoked                 = "revoked"                  // the key was revoked
	CodeExpired                 = "expired"                  // the key's expires_at is at or before now
	CodeInsufficientPermissions = "insufficient_permissions" // the key is fine but lacks a requested permission
	CodeSuspended               = "suspended"                // the key is suspended until it is resumed
	CodeIPNotAllowed            = "ip_not_allowed"           // the organization's allowed_cidrs do not admit the client address
	CodeResourceNotAllowed      = "resource_not_allowed"     // the key restricts the resource's type and does not list it
)

// Defaults of Config.
const (
	DefaultMaxStaleness       = 30 * time.Second
	DefaultLastUsedInterval   = 2 * time.Second
	DefaultLastUsedResolution = time.Minute
)

// Result is a verification verdict; its JSON is the contract's verify reply:
//
//	{"valid": true, "code": "valid", "key": {...}, "sequence": 42}
//
// Key is set (and in the JSON) whenever the key was found: for valid,
// revoked, expired and insufficient_permissions; it is the zero KeyInfo (and
// left out of the JSON) for malformed and not_found. Sequence is the stream
// sequence the verifier had applied when it answered: the verdict reflects
// at least every event up to it.
type Result struct {
	Valid    bool    `json:"valid"`
	Code     string  `json:"code"`
	Key      KeyInfo `json:"key,omitzero"`
	Sequence uint64  `json:"sequence"`
}

// KeyInfo is what a verification tells about a key. Permissions are its
// effective permissions: its own active permissions plus the active
// permissions of its active roles, sorted and de-duplicated (retired ones
// excluded); Metadata is never nil.
//
// The Permissions slice and the Metadata map are shared with the verifier
// (and with other keys that have equal ones): they must not be modified.
type KeyInfo struct {
	ID          string            `json:"id"`
	OrgID       string            `json:"org_id"`
	Owner       domain.Owner      `json:"owner"`
	Name        string            `json:"name"`
	Permissions []string          `json:"permissions"`
	ExpiresAt   *time.Time        `json:"expires_at"`
	Metadata    map[string]string `json:"metadata"`
	// Roles are the key's active roles (sorted); Resources what it is
	// restricted to ("type:id", sorted; [] when unrestricted).
	Roles     []string `json:"roles"`
	Resources []string `json:"resources"`
}

// IsZero reports whether k is the zero KeyInfo (no key was found).
func (k KeyInfo) IsZero() bool { return k.ID == "" }

// HasPermission reports whether the key holds the (non-retired) permission.
func (k KeyInfo) HasPermission(slug string) bool {
	_, ok := slices.BinarySearch(k.Permissions, slug)
	return ok
}

// LastUsed is one key's last use, as handed to Config.OnLastUsed.
type LastUsed struct {
	KeyID string
	At    time.Time
}

// Config configures a Verifier. JS, Digester and EventKey are required.
type Config struct {
	// Pool is the Postgres database of keyd's read models. The verifier
	// boots from its verification snapshot and writes keys' last_used_at
	// there. Nil: boot by replaying the whole stream, and track last use
	// only if OnLastUsed is set.
	Pool *pgxpool.Pool
	// JS is the JetStream context of the stream KEYD_EVENTS.
	JS jetstream.JetStream
	// Conn is the connection JS uses (nil: JS.Conn()).
	Conn *nats.Conn
	// Digester computes keyed digests with the deployment secret; it must
	// be the one keyd's command side uses.
	Digester *domain.Digester
	// EventKey is keyd's public event key (a verifier credential's, or
	// domain.EventSigner.PublicKey in keyd's own processes): events it does
	// not vouch for are set aside (never applied, never halting), as are
	// events that break a key's or the catalog's history (a version that
	// is not the last + 1, a change to a revoked key).
	EventKey domain.EventKey
	// OnRejected, if set, receives each event set aside (for
	// keyd_events_rejected_total). Called from the stream follower.
	OnRejected func(eventstore.Rejection)
	// Now is the clock for expiry and last-use times, for tests; leave it
	// nil in production. Nil: a coarse clock the verifier keeps (renewed
	// every millisecond while verifications happen), with the real clock
	// deciding expiries within a second of now and staleness near the
	// bound (see clock.go; the path the benchmarks measure). A non-nil Now,
	// even time.Now, costs two clock reads per verification of a found
	// key. Staleness is measured on the monotonic clock, not with Now.
	Now func() time.Time
	// MaxStaleness is how long the verifier may be cut off from the stream
	// before Verify answers unavailable (0: DefaultMaxStaleness).
	MaxStaleness time.Duration
	// Log receives boot progress and problems (nil: discard).
	Log *slog.Logger
	// OnLastUsed, if set, receives the batches of last uses that would
	// otherwise be written to Pool's keys.last_used_at (for a verifier
	// whose database user may only read, for instance). It is called from
	// one goroutine at a time; an error keeps the batch for the next flush.
	OnLastUsed func(ctx context.Context, used []LastUsed) error
	// LastUsedInterval is how often last uses are flushed (0:
	// DefaultLastUsedInterval; negative: only by FlushLastUsed).
	LastUsedInterval time.Duration
	// LastUsedResolution is how precisely a key's last use is kept: a
	// key's use is recorded again (and so written again) only once this
	// much time has passed since its last recorded use, so a key is
	// written at most once per resolution however often it is verified
	// (0: DefaultLastUsedResolution, one minute, what a person reads as
	// "last used 3 minutes ago"; negative: every use, to the millisecond).
	LastUsedResolution time.Duration
}

// Verifier is an in-memory projection of the key state that answers
// verifications. Build it with New (or Connect), then Start it. Its methods
// are safe for concurrent use, except that Close must not race with Start.
type Verifier struct {
	// realClock: Config.Now is nil, so the coarse clock serves a
	// verification's expiry, last use and staleness checks.
	realClock    bool
	cfg          Config
	log          *slog.Logger
	now          func() time.Time
	nc           *nats.Conn
	maxStaleness time.Duration
	heartbeat    time.Duration
	probeEvery   time.Duration
	stallAfter   time.Duration // the tail's watchdog (eventstore.TailOptions.StallAfter)

	keys    *keyTable
	nkeys   atomic.Int64
	applied atomic.Uint64
	booted  atomic.Bool
	failed  atomic.Pointer[failure] // an event the verifier could not apply

	// appliedCh is closed and replaced each time applied advances.
	appliedMu sync.Mutex
	appliedCh chan struct{}

	contact        contact
	stream         atomic.Pointer[jetstream.Stream]
	progress       atomic.Uint64 // applied sequence while booting
	lastConsumeLog atomic.Int64
	lastRejectLog  atomic.Int64
	rejected       atomic.Uint64
	// consumerRestarts counts the tail watchdog's replacements.
	consumerRestarts atomic.Uint64
	used             usedQueue
	coarse           coarseClock // Verify's clock when realClock
	// policyCIDRs maps an organization to its policy's allowed_cidrs (only
	// organizations that have them); replaced whole by the applier.
	policyCIDRs atomic.Pointer[map[string][]netip.Prefix]

	// Lifecycle.
	started   atomic.Bool
	readyCh   chan struct{}
	replay    chan struct{} // asks the follower for a full replay
	readyOnce sync.Once
	bootErrCh chan error
	cancel    context.CancelFunc
	done      chan struct{} // closed when the background goroutines ended
	closeOnce sync.Once
	closers   []func() // resources Connect opened

	// boot records how the verifier booted (for tests and logs).
	bootMu   sync.Mutex
	bootInfo bootInfo
	// afterSnapshot, if set (tests), runs after the snapshot and the
	// stream's state were read, before the stream subscription.
	afterSnapshot func()
}

type failure struct{ err error }

// New returns a verifier; it answers unavailable until Start has caught up.
func New(cfg Config) *Verifier {
	v := &Verifier{
		cfg:          cfg,
		log:          cfg.Log,
		now:          cfg.Now,
		nc:           cfg.Conn,
		maxStaleness: cfg.MaxStaleness,
		keys:         newKeyTable(),
		appliedCh:    make(chan struct{}),
		readyCh:      make(chan struct{}),
		replay:       make(chan struct{}, 1),
		bootErrCh:    make(chan error, 1),
		done:         make(chan struct{}),
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.now == nil {
		v.now = time.Now
		v.realClock = true
	}
	if v.nc == nil && cfg.JS != nil {
		v.nc = cfg.JS.Conn()
	}
	if v.maxStaleness <= 0 {
		v.maxStaleness = DefaultMaxStaleness
	}
	// Probe the stream several times per staleness window, at most every
	// 2s; heartbeats every second at most, so a dead consumer is replaced
	// quickly.
	v.probeEvery = min(max(v.maxStaleness/5, 10*time.Millisecond), 2*time.Second)
	v.heartbeat = min(max(v.maxStaleness/3, 500*time.Millisecond), time.Second) // the client allows 500ms-30s
	// A stalled consumer is replaced well within a second, so a
	// revocation reaches this verifier in under a second even then.
	v.stallAfter = min(eventstore.DefaultStallAfter, max(v.maxStaleness/4, 50*time.Millisecond))
	v.contact.init()
	v.coarse.set(&v.contact, time.Now())
	v.coarse.idle.Store(true)
	v.used.init(v.trackingLastUse(), cfg.LastUsedResolution)
	return v
}

// Start boots the verifier and returns once it has caught up with the
// stream (it then answers verifications), or with an error. It keeps
// following the stream in the background until ctx ends or Close is called.
//
// Boot: one REPEATABLE READ transaction reads the checkpoint of the read
// models, the verification snapshot and the retired permissions; then an
// ordered consumer delivers the stream from the next sequence. When the
// snapshot cannot be used (Pool nil, tables missing, no checkpoint, a
// checkpoint beyond the stream's end, or a stream that no longer holds the
// events right after the checkpoint), the verifier replays the whole stream
// instead. Caught up means: applied the stream's last sequence as read after
// the snapshot. Long replays log their progress every second.
//
// Errors: a configuration error (JS or Digester nil), Start called twice,
// the stream missing, a database error other than missing tables, and ctx
// ending before the verifier caught up.
func (v *Verifier) Start(ctx context.Context) error {
	return v.start(ctx, ctx)
}

// start boots within bootCtx and runs until runCtx ends (or Close).
func (v *Verifier) start(bootCtx, runCtx context.Context) error {
	if v.cfg.JS == nil || v.cfg.Digester == nil {
		return errors.New("verifier: Config.JS and Config.Digester are required")
	}
	if !v.started.CompareAndSwap(false, true) {
		return errors.New("verifier: Start called twice")
	}
	ctx := bootCtx
	runCtx, cancel := context.WithCancel(runCtx)
	v.cancel = cancel
	var wg sync.WaitGroup
	wg.Go(func() { v.run(runCtx) })
	wg.Go(func() { v.probeLoop(runCtx) })
	wg.Go(func() { v.flushLoop(runCtx) })
	if v.realClock {
		wg.Go(func() { v.clockLoop(runCtx) })
	}
	go func() { wg.Wait(); close(v.done) }()
	select {
	case <-v.readyCh:
		return nil
	case err := <-v.bootErrCh:
		cancel()
		return err
	case <-ctx.Done():
		cancel()
		return ctx.Err()
	}
}

// Close stops the background work (after a last flush of last uses) and
// closes what Connect opened. It is safe to call more than once, and on a
// verifier never started.
func (v *Verifier) Close() {
	v.closeOnce.Do(func() {
		if v.cancel != nil {
			v.cancel()
			<-v.done
		}
		if v.started.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := v.FlushLastUsed(ctx); err != nil {
				v.log.Warn("verifier: last flush of key last-use times failed", "err", err)
			}
			cancel()
		}
		for i := len(v.closers) - 1; i >= 0; i-- {
			v.closers[i]()
		}
	})
}

// Verify checks secret and, when given, that the key holds every one of
// permissions. It returns the verdict, or an error and no verdict:
//
//   - invalid_argument when a requested permission is not a permission slug;
//   - unavailable while the verifier has not caught up with the stream, has
//     been cut off from it longer than MaxStaleness, or met an event it
//     cannot apply.
//
// A secret that is not shaped like a key (ValidSecret) is malformed without
// a digest or lookup. Verify does not allocate, whatever the verdict (the
// result shares the verifier's immutable key data, see KeyInfo; permissions
// passed as literal arguments stay on the caller's stack). A valid verdict
// records the key's last use in memory; it is written out in batches (see
// FlushLastUsed).
func (v *Verifier) Verify(ctx context.Context, secret string, permissions ...string) (Result, error) {
	return v.VerifyRequest(ctx, secret, Request{}, permissions...)
}

// VerifyFrom is Verify for a request from client (the zero Addr: not
// given): after revoked, expired and suspended, a key of an organization
// whose policy has allowed_cidrs answers ip_not_allowed unless client is
// within them (a request without a client address included).
func (v *Verifier) VerifyFrom(ctx context.Context, secret string, client netip.Addr, permissions ...string) (Result, error) {
	return v.VerifyRequest(ctx, secret, Request{ClientIP: client}, permissions...)
}

// VerifyResource is Verify for a request on resource ("<type>:<id>"; ""
// for none): a key that restricts that type (lists resources of it) and does
// not list the resource is resource_not_allowed, checked after expiry,
// suspension and the client address, and before permissions. Errors: as
// Verify, and invalid_argument for a resource that is not one
// (domain.CheckResource).
func (v *Verifier) VerifyResource(ctx context.Context, secret, resource string, permissions ...string) (Result, error) {
	return v.VerifyRequest(ctx, secret, Request{Resource: resource}, permissions...)
}

// Request is what a verification knows of the request beyond the key and
// the permissions it needs.
type Request struct {
	// ClientIP is the caller's address (the zero Addr: not given); see
	// VerifyFrom.
	ClientIP netip.Addr
	// Resource is what the request acts on ("<type>:<id>"; "": nothing in
	// particular); see VerifyResource.
	Resource string
}

// VerifyRequest is Verify for a request req. The first code that applies
// answers, in the contract's order: malformed, not_found, revoked, expired,
// suspended, ip_not_allowed, resource_not_allowed, insufficient_permissions.
// It allocates no more than Verify.
func (v *Verifier) VerifyRequest(ctx context.Context, secret string, req Request, permissions ...string) (Result, error) {
	resource, client := req.Resource, req.ClientIP
	if resource != "" {
		if err := domain.CheckResource("resource", resource); err != nil {
			return Result{}, err
		}
	}
	for _, p := range permissions {
		if !domain.ValidSlug(p) {
			return Result{}, invalidPermission(p)
		}
	}
	seq := v.applied.Load() // before the lookup: the state read is at least this new
	// The clock: the coarse one (see clock.go) in production, read without
	// serializing the CPU, the real one where it could matter; or Now.
	var wall int64 // Unix ns
	var mono time.Duration
	exact := false
	if v.realClock {
		if v.coarse.idle.Load() {
			// The first verification since a tick: the coarse clock
			// may be an idle tick old.
			v.coarse.idle.Store(false)
			now := time.Now()
			mono, wall, exact = v.contact.at(now), now.UnixNano(), true
		} else {
			mono, wall = v.coarse.read()
		}
	} else {
		mono, exact = v.contact.clock(), true
	}
	if err := v.unavailableAt(mono, exact); err != nil {
		return Result{}, err
	}
	if !domain.ValidSecret(secret) {
		return Result{Code: CodeMalformed, Sequence: seq}, nil
	}
	d := v.cfg.Digester.Digest(secret)
	sl := v.keys.lookup(&d)
	if sl == nil {
		return Result{Code: CodeNotFound, Sequence: seq}, nil
	}
	ent := sl.state.Load()
	r := Result{Code: CodeValid, Key: ent.info(), Sequence: seq}
	if !v.realClock {
		wall = v.now().UnixNano()
	}
	switch {
	case ent.revoked:
		r.Code = CodeRevoked
	case ent.expires != nil && v.expired(ent.expires, wall, exact):
		r.Code = CodeExpired
	case ent.suspended:
		r.Code = CodeSuspended
	case !v.clientAllowed(ent.org.id, client):
		r.Code = CodeIPNotAllowed
	case resource != "" && !domain.ResourceAllowed(r.Key.Resources, resource):
		r.Code = CodeResourceNotAllowed
	default:
		for _, p := range permissions {
			if _, ok := slices.BinarySearch(r.Key.Permissions, p); !ok {
				r.Code = CodeInsufficientPermissions
				return r, nil
			}
		}
		r.Valid = true
		v.used.record(sl, &d, wall/int64(time.Millisecond))
	}
	return r, nil
}

// clientAllowed reports whether org's policy admits client.
func (v *Verifier) clientAllowed(org string, client netip.Addr) bool {
	m := v.policyCIDRs.Load()
	if m == nil {
		return true
	}
	cidrs, ok := (*m)[org]
	if !ok {
		return true
	}
	return client.IsValid() && domain.CIDRsAllow(cidrs, client)
}

// expired reports whether a key expiring at exp has expired at wall (Unix
// ns; exact: read from the real clock or Config.Now). A coarse reading
// within coarseSlack of exp is replaced by the real clock's.
func (v *Verifier) expired(exp *time.Time, wall int64, exact bool) bool {
	at := time.Unix(0, wall)
	if !exact && v.realClock && exp.Sub(at) < coarseSlack && at.Sub(*exp) < coarseSlack {
		at = time.Now()
	}
	return expiredAt(exp, at)
}

func invalidPermission(p string) error {
	return domain.Errorf(domain.EInvalid, "permission %q is not a permission slug (^[a-z0-9][a-z0-9_.:-]{0,127}$)", p)
}

// unavailable returns why the verifier cannot give a verdict now, or nil.
func (v *Verifier) unavailable() error { return v.unavailableAt(v.contact.clock(), true) }

// unavailableAt is unavailable at instant mono of the contact clock; exact:
// mono was read from the real clock, else from the coarse one, and the real
// clock decides when the coarse one puts the last contact more than half
// of MaxStaleness ago.
func (v *Verifier) unavailableAt(mono time.Duration, exact bool) error {
	if !v.booted.Load() {
		return domain.Errorf(domain.EUnavailable, "the key verifier is still loading keys (applied stream sequence %d); retry shortly", v.applied.Load())
	}
	if f := v.failed.Load(); f != nil {
		return domain.Errorf(domain.EUnavailable, "the key verifier met an event it cannot apply and no longer vouches for keys: %v", f.err)
	}
	since := v.contact.sinceAt(mono)
	if !exact && since > v.maxStaleness/2 {
		since = v.contact.since()
	}
	if since > v.maxStaleness {
		return domain.Errorf(domain.EUnavailable, "the key verifier has been cut off from the event stream for %s (longer than %s), so revocations may be missing; retry later",
			since.Round(time.Millisecond), v.maxStaleness)
	}
	return nil
}

// WaitApplied returns nil once the verifier has applied stream sequence seq
// (at once if it has), ctx's error if ctx ends first, and unavailable if the
// verifier stops. A command's reply waits on it so that a verification on
// this process right after the reply sees the command's effect.
func (v *Verifier) WaitApplied(ctx context.Context, seq uint64) error {
	for {
		v.appliedMu.Lock()
		ch := v.appliedCh
		v.appliedMu.Unlock()
		if v.applied.Load() >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		case <-v.done:
			if v.applied.Load() >= seq {
				return nil
			}
			return domain.Errorf(domain.EUnavailable, "the key verifier stopped before applying stream sequence %d", seq)
		}
	}
}

// setApplied publishes the applied sequence and wakes WaitApplied callers.
func (v *Verifier) setApplied(seq uint64) {
	v.applied.Store(seq)
	v.appliedMu.Lock()
	close(v.appliedCh)
	v.appliedCh = make(chan struct{})
	v.appliedMu.Unlock()
	v.contact.advanced(seq)
}

// Applied returns the last stream sequence the verifier applied.
func (v *Verifier) Applied() uint64 { return v.applied.Load() }

// Ready reports whether Verify gives verdicts: caught up at boot, in
// contact with the stream within MaxStaleness, and no event it could not
// apply.
func (v *Verifier) Ready() bool { return v.unavailable() == nil }

// Status is a verifier's state, for readiness checks and metrics.
type Status struct {
	Ready bool `json:"ready"` // Verify gives verdicts (see Ready)
	// Stale: booted, but cut off from the stream longer than MaxStaleness.
	Stale      bool   `json:"stale"`
	Applied    uint64 `json:"applied"`     // last stream sequence applied
	StreamLast uint64 `json:"stream_last"` // the stream's last sequence when last asked
	// LagEvents is StreamLast - Applied: events the stream held, when last
	// asked, that the verifier has not applied yet.
	LagEvents    uint64        `json:"lag_events"`
	SinceContact time.Duration `json:"since_contact"` // since the verifier last knew it was caught up
	Keys         int           `json:"keys"`          // keys held in memory
	// ConsumerRestarts counts the stream consumers replaced because they
	// stopped delivering while the stream moved (eventstore.Tail's
	// watchdog).
	ConsumerRestarts uint64 `json:"consumer_restarts"`
	// Err is why the verifier is not ready when it is not a matter of
	// time: an event it could not apply. Nil otherwise.
	Err error `json:"-"`
}

// Status returns the verifier's current state.
func (v *Verifier) Status() Status {
	since := v.contact.since()
	s := Status{
		Ready:            v.Ready(),
		Stale:            v.booted.Load() && since > v.maxStaleness,
		Applied:          max(v.applied.Load(), v.progress.Load()),
		StreamLast:       max(v.contact.streamLast.Load(), v.applied.Load()),
		SinceContact:     since,
		Keys:             int(v.nkeys.Load()),
		ConsumerRestarts: v.consumerRestarts.Load(),
	}
	s.LagEvents = s.StreamLast - min(s.Applied, s.StreamLast)
	if f := v.failed.Load(); f != nil {
		s.Err = f.err
	}
	return s
}

// Find returns the key secret belongs to, whatever its status, without
// recording a use (leak reports). ok is false for a malformed or unknown
// secret. Errors: unavailable, as for Verify.
func (v *Verifier) Find(secret string) (key KeyInfo, ok bool, err error) {
	if err := v.unavailable(); err != nil {
		return KeyInfo{}, false, err
	}
	if !domain.ValidSecret(secret) {
		return KeyInfo{}, false, nil
	}
	d := v.cfg.Digester.Digest(secret)
	sl := v.keys.lookup(&d)
	if sl == nil {
		return KeyInfo{}, false, nil
	}
	return sl.state.Load().info(), true, nil
}
