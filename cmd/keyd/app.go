package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/adapters/commands"
	"github.com/keyd-dev/keyd/adapters/httpapi"
	"github.com/keyd-dev/keyd/adapters/metrics"
	"github.com/keyd-dev/keyd/adapters/natscmd"
	"github.com/keyd-dev/keyd/adapters/postgres"
	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/migrations"
	"github.com/keyd-dev/keyd/projections"
	"github.com/keyd-dev/keyd/verifier"
)

// App is one running keyd process: command responders, projector (leader or
// standby), verifier and HTTP server, over two NATS connections (NC for the
// event stream and everything that reads or writes it, CommandNC for the
// command responder alone) and one Postgres pool.
type App struct {
	cfg    Config
	log    *slog.Logger
	dev    bool
	secret []byte

	// NC is the event store's connection: JetStream, the idempotency
	// bucket, the projector and the verifier. The only one that publishes
	// to keyd.events.>.
	NC *nats.Conn
	// CommandNC is the command responder's: it subscribes to keyd.cmd.>
	// and publishes only replies, so its NATS user needs no publish right
	// beyond allow_responses.
	CommandNC *nats.Conn
	JS        jetstream.JetStream
	Store     *eventstore.JetStream
	Pool      *pgxpool.Pool
	Reads     *postgres.ReadModel
	Projector *projections.Projector
	Verifier  *verifier.Verifier
	Service   *domain.Service
	Runner    *commands.Runner
	Metrics   *metrics.Metrics
	Sessions  *httpapi.Sessions

	responder *natscmd.Responder
	stopHTTP  context.CancelFunc // ends httpapi.Server.Serve, which shuts down gracefully
	httpDone  chan struct{}      // closed when Serve (and ServeInternal) have returned
	// HTTPAddr is the address the HTTP server listens on.
	HTTPAddr string
	// InternalAddr is the address of the internal listener (--internal-http),
	// empty without one.
	InternalAddr string
	// DemoURL is keyd dev's widget demo URL, with its one-time token.
	DemoURL string
	// NATSURL is the URL clients use to reach NATS.
	NATSURL string

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// start builds and starts everything on established NATS connections: nc
// for the event store, cmdNC (another connection) for the command
// responder. Close closes both, whether start succeeded or not.
func (a *App) start(ctx context.Context, nc, cmdNC *nats.Conn, httpLn net.Listener) error {
	a.NC, a.CommandNC = nc, cmdNC
	if cmdNC == nil || nc == cmdNC {
		return errors.New("keyd needs two NATS connections: one for the event store, one for the command responder")
	}
	if !domain.ValidPrefix(a.cfg.KeyPrefix) {
		return fmt.Errorf("--key-prefix %q must be 1 to %d letters, digits or underscores", a.cfg.KeyPrefix, domain.MaxPrefixLen)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	a.JS = js
	bg, cancel := context.WithCancel(context.Background())
	a.cancel = cancel

	initCtx, initCancel := context.WithTimeout(ctx, 30*time.Second)
	defer initCancel()
	stream, err := eventstore.EnsureStream(initCtx, js, a.cfg.StreamReplicas)
	if err != nil {
		return fmt.Errorf("setting up stream %s: %w", domain.StreamName, err)
	}
	var storeOpts []eventstore.Option
	if a.cfg.StreamReplicas > 1 {
		// A direct get may be answered by a follower a moment behind the
		// leader; reading from the leader keeps create-then-update working.
		storeOpts = append(storeOpts, eventstore.WithLeaderReads())
	}
	// The event writer signs every event; everything that reads the stream
	// checks with the public key (signing.go).
	signer := domain.NewEventSigner(a.secret)
	rejected := newRejections(a.log)
	storeOpts = append(storeOpts, eventstore.WithSigner(signer), eventstore.WithRejections(rejected.hook(readerCommands)))
	a.Store = eventstore.NewJetStream(js, nc, stream, storeOpts...)
	idem, err := eventstore.NewKVIdempotency(initCtx, js, a.cfg.StreamReplicas)
	if err != nil {
		return fmt.Errorf("setting up the idempotency bucket: %w", err)
	}

	a.Pool, err = postgres.Open(initCtx, a.cfg.DatabaseURL)
	if err != nil {
		return err
	}
	if _, err := migrations.Apply(initCtx, a.Pool, a.log); err != nil {
		return fmt.Errorf("applying migrations: %w", err)
	}
	a.Reads = postgres.NewReadModel(a.Pool, time.Now)
	a.Metrics = metrics.New()
	a.Metrics.Registry.MustRegister(rejected.counter)

	if a.dev {
		// keyd dev's data directory may have been removed while the database
		// kept the read models of the old stream: they are derived data, so
		// rebuild them from the stream at hand instead of stopping.
		applied, err := a.Reads.AppliedSequence(initCtx)
		if err != nil {
			return err
		}
		last, err := a.Store.LastSequence(initCtx)
		if err != nil {
			return err
		}
		if applied > last {
			a.log.Warn("the read models are ahead of the event stream (was the data directory removed?); rebuilding them from the stream",
				"read_models_sequence", applied, "stream_last", last)
			if err := projections.Rebuild(initCtx, a.Pool, js, signer.PublicKey(), io.Discard); err != nil {
				return fmt.Errorf("rebuilding the read models: %w", err)
			}
		}
	}
	a.Projector = projections.NewProjector(a.Pool, js, a.log)
	a.Projector.EventKey, a.Projector.OnRejected = signer.PublicKey(), rejected.hook(readerProjector)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.Projector.Run(bg); err != nil && !errors.Is(err, context.Canceled) {
			a.log.Error("projector stopped", "err", err)
		}
	}()

	digester := domain.NewDigester(a.secret)
	// No Now: the verifier's own clock reads the time once per verification
	// (the path the benchmarks measure). No OnLastUsed: the verifier writes
	// last_used_at to the listing itself, in batches, never per verify.
	a.Verifier = verifier.New(verifier.Config{
		Pool: a.Pool, JS: js, Conn: nc, Digester: digester,
		EventKey: signer.PublicKey(), OnRejected: rejected.hook(readerVerifier),
		MaxStaleness: a.cfg.VerifierMaxStaleness, Log: a.log,
		LastUsedResolution: a.cfg.LastUsedResolution,
	})
	if err := a.Verifier.Start(bg); err != nil {
		return fmt.Errorf("starting the verifier: %w", err)
	}

	// Creates check their grants against the catalog held in memory, not
	// a read of the stream per create (domain.Service.catalogFor).
	catalogs := eventstore.NewCatalogWatcher(a.Store)
	catalogs.OnError = func(err error) { a.log.Debug("catalog watcher", "err", err) }
	if err := catalogs.Start(bg); err != nil {
		return fmt.Errorf("watching the permission catalog: %w", err)
	}
	a.Service = &domain.Service{
		Store: a.Store, Idempotency: idem, Catalogs: catalogs, Digester: digester, Prefix: a.cfg.KeyPrefix,
		Now: time.Now, Rand: rand.Reader, OrgKeys: a.orgKeys,
		Keys: postgres.UserKeys{Reads: a.Reads, StreamLast: a.Store.LastSequence},
	}
	// Expiry notices, beside the projection leader (projections/notices.go);
	// they read keys through a.Store, which checks every event it returns.
	notices := &projections.NoticeScheduler{
		Pool: a.Pool, Service: a.Service, Log: a.log,
		IsLeader: func() bool { return a.Projector.Status().Leader },
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		_ = notices.Run(bg)
	}()
	a.Runner = &commands.Runner{
		Service: a.Service, Metrics: a.Metrics, Log: a.log, StoreConnected: nc.IsConnected,
		WaitApplied: func(ctx context.Context, seq uint64) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			return a.Verifier.WaitApplied(ctx, seq)
		},
	}
	a.registerGauges()

	a.responder = &natscmd.Responder{Conn: cmdNC, Runner: a.Runner, Log: a.log, Metrics: a.Metrics,
		ReplyPrefixes: a.cfg.NATSReplyPrefixes}
	if err := a.responder.Start(); err != nil {
		return fmt.Errorf("subscribing to commands: %w", err)
	}

	return a.startHTTP(bg, httpLn)
}

func (a *App) registerGauges() {
	m := a.Metrics
	m.Gauge("keyd_projection_applied_sequence", "Last stream sequence the read-model projection applied (as seen by this process).", func() float64 {
		return float64(a.Projector.Status().Applied)
	})
	m.Gauge("keyd_projection_lag_events", "Events in the stream not yet applied by the read-model projection (leader only).", func() float64 {
		return float64(a.Projector.Status().LagEvents)
	})
	m.Gauge("keyd_projection_lag_seconds", "Age of the oldest event not yet applied by the read-model projection (leader only).", func() float64 {
		return a.Projector.Status().LagSeconds
	})
	m.Gauge("keyd_projection_stopped", "1 when the projection stopped on an event it cannot apply.", func() float64 {
		if a.Projector.Status().Err != nil {
			return 1
		}
		return 0
	})
	m.Gauge("keyd_projection_leader", "1 when this process writes the read models.", func() float64 {
		if a.Projector.Status().Leader {
			return 1
		}
		return 0
	})
	m.Gauge("keyd_verifier_applied_sequence", "Last stream sequence the in-memory verifier applied.", func() float64 {
		return float64(a.Verifier.Status().Applied)
	})
	m.Gauge("keyd_verifier_stale", "1 when the verifier has been cut off from the stream longer than --verifier-max-staleness.", func() float64 {
		if a.Verifier.Status().Stale {
			return 1
		}
		return 0
	})
	m.Gauge("keyd_verifier_keys", "Keys held by the in-memory verifier.", func() float64 {
		return float64(a.Verifier.Status().Keys)
	})
	m.Gauge("keyd_verifier_lag_events", "Events the stream held when the verifier last asked that it has not applied yet.", func() float64 {
		return float64(a.Verifier.Status().LagEvents)
	})
	m.CounterFunc("keyd_verifier_consumer_restarts_total", "Stream consumers of the verifier replaced because they stopped delivering while the stream moved.", func() float64 {
		return float64(a.Verifier.Status().ConsumerRestarts)
	})
	m.CounterFunc("keyd_projection_consumer_restarts_total", "Stream consumers of the projection replaced because they stopped delivering while the stream moved.", func() float64 {
		return float64(a.Projector.Status().ConsumerRestarts)
	})
}

// ready reports readiness: NATS connected, Postgres answering, projection
// not stopped, verifier caught up and not stale.
func (a *App) ready(ctx context.Context) (bool, map[string]any) {
	ok := true
	detail := map[string]any{}
	if a.NC.IsConnected() && a.CommandNC.IsConnected() {
		detail["nats"] = "ok"
	} else {
		ok = false
		detail["nats"] = "disconnected"
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if err := a.Pool.Ping(pctx); err != nil {
		ok = false
		detail["postgres"] = "unreachable"
	} else {
		detail["postgres"] = "ok"
	}
	ps := a.Projector.Status()
	proj := map[string]any{"leader": ps.Leader, "applied": ps.Applied, "lag_events": ps.LagEvents, "consumer_restarts": ps.ConsumerRestarts}
	if ps.Err != nil {
		ok = false
		proj["error"] = ps.Err.Error()
	}
	detail["projection"] = proj
	vs := a.Verifier.Status()
	ver := map[string]any{"ready": vs.Ready, "stale": vs.Stale, "applied": vs.Applied, "keys": vs.Keys,
		"lag_events": vs.LagEvents, "since_contact_ms": vs.SinceContact.Milliseconds(), "consumer_restarts": vs.ConsumerRestarts}
	if !vs.Ready || vs.Stale {
		ok = false
	}
	detail["verifier"] = ver
	return ok, detail
}

// Close stops everything in reverse order: HTTP, commands, background work,
// then the connections.
func (a *App) Close() {
	if a.stopHTTP != nil {
		a.stopHTTP() // Serve lets requests in flight finish, for up to httpapi.ShutdownTimeout
		<-a.httpDone
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if a.responder != nil {
		a.responder.Stop(ctx)
	}
	if a.CommandNC != nil {
		_ = a.CommandNC.Drain()
	}
	if a.Verifier != nil {
		_ = a.Verifier.FlushLastUsed(ctx)
	}
	if a.cancel != nil {
		a.cancel()
	}
	a.wg.Wait()
	if a.Verifier != nil {
		a.Verifier.Close()
	}
	if a.NC != nil {
		_ = a.NC.Drain()
	}
	if a.Pool != nil {
		a.Pool.Close()
	}
}

// orgKeys lists an organization's keys that are not revoked, for counting
// them when a policy turns max_active_keys on (domain.OrgKeys): from the read
// model once it has applied everything in the stream now, so a key created
// just before the set_policy is counted too.
func (a *App) orgKeys(ctx context.Context, org string) ([]string, error) {
	seq, err := a.Store.LastSequence(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := a.Reads.WaitForSequence(ctx, seq, 5*time.Second); err != nil {
		return nil, err
	}
	return a.Reads.ActiveKeyIDs(ctx, org)
}
