package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/projections"
)

// burstSample is how often projection_burst samples the lag.
const burstSample = 10 * time.Millisecond

// runBurst: projection_burst. Key creations are appended to a fresh
// KEYD_EVENTS stream at a sustained opts.BurstRate per second for
// opts.BurstDuration (signed key.created events as the domain writes them,
// published asynchronously on a 5 ms schedule) while keyd's projector (its
// defaults) follows into empty read models. Every 10 ms, until the read
// models hold every event, the lag is sampled: the age of the oldest
// appended event they do not hold yet (0 when they hold all), and how many
// events that is. Floor: the same burst (other keys, same rate) followed by
// a plain ordered consumer that only notes what it received: what NATS
// delivery alone costs. Goal (issue 11 point 4): the read models stay
// within 1 s of the stream, i.e. a max lag ≤ 1 s, at the rate asked.
func runBurst(ctx context.Context, r *runner) (Result, error) {
	rate, d := r.opts.BurstRate, r.opts.BurstDuration
	n := max(1, int(float64(rate)*d.Seconds()))
	w, err := r.newWorld(ctx, "burst")
	if err != nil {
		return Result{}, err
	}
	defer w.close()
	if err := r.resetDB(ctx); err != nil {
		return Result{}, err
	}
	r.phase("preparing %s events", thousands(int64(2*n)))
	signer := domain.NewEventSigner([]byte(r.secret))
	msgs, err := burstMessages(signer, 0, n)
	if err != nil {
		return Result{}, err
	}
	floorMsgs, err := burstMessages(signer, n, n)
	if err != nil {
		return Result{}, err
	}

	// keyd's projector.
	p := projections.NewProjector(r.db.pool, w.js, r.log)
	p.EventKey = signer.PublicKey()
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx) }()
	stop := func() error { cancel(); return <-done }
	for deadline := time.Now().Add(10 * time.Second); !p.Status().Leader; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return Result{}, errors.Join(errors.New("the projector did not lead within 10 s"), p.Status().Err, stop())
		}
	}
	base, err := w.streamLast(ctx)
	if err != nil {
		return Result{}, errors.Join(err, stop())
	}
	r.phase("%s key creations at %s/s, the projector following", thousands(int64(n)), thousands(int64(rate)))
	proj, err := burst(ctx, r, w, msgs, base, rate, func() (uint64, error) {
		st := p.Status()
		var ee *projections.EventError
		if errors.As(st.Err, &ee) {
			return 0, st.Err
		}
		return st.Applied, nil
	})
	if err := errors.Join(err, stop()); err != nil {
		return Result{}, err
	}
	if err := r.checkProjected(ctx, n, n); err != nil {
		return Result{}, err
	}

	// Floor: an ordered consumer on the same stream, from the next event.
	base, err = w.streamLast(ctx)
	if err != nil {
		return Result{}, err
	}
	cons, err := w.js.OrderedConsumer(ctx, domain.StreamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: base + 1,
	})
	if err != nil {
		return Result{}, err
	}
	var received atomic.Uint64
	cc, err := cons.Consume(func(m jetstream.Msg) {
		if md, err := m.Metadata(); err == nil {
			received.Store(md.Sequence.Stream)
		}
	})
	if err != nil {
		return Result{}, err
	}
	r.phase("the same burst, an ordered consumer following")
	floor, err := burst(ctx, r, w, floorMsgs, base, rate, func() (uint64, error) { return received.Load(), nil })
	cc.Stop()
	if err != nil {
		return Result{}, err
	}
	if err := r.resetDB(ctx); err != nil {
		return Result{}, err
	}

	// A figure of 0 would say nothing was ever behind at a sample; the
	// result's contract wants positive figures.
	value, floorValue := max(ms(proj.lags.max()), 0.001), max(ms(floor.lags.max()), 0.001)
	res := Result{
		Name: "projection_burst", Value: value, Unit: "ms max lag",
		Baseline: Baseline{Name: "an ordered consumer following the same burst", Value: floorValue},
		Better:   "lower",
		Goal:     "max lag ≤ 1 s at the rate asked",
		Params: map[string]any{
			"rate":                       rate,
			"seconds":                    round(d.Seconds(), 3),
			"events":                     n,
			"achieved_rate":              round(proj.rate, 0),
			"p50_ms":                     ms(proj.lags.pct(0.5)),
			"p99_ms":                     ms(proj.lags.pct(0.99)),
			"max_ms":                     ms(proj.lags.max()),
			"most_events_behind":         proj.mostBehind,
			"drained_after_last_ms":      ms(proj.drained),
			"samples":                    len(proj.lags),
			"floor_achieved_rate":        round(floor.rate, 0),
			"floor_p50_ms":               ms(floor.lags.pct(0.5)),
			"floor_p99_ms":               ms(floor.lags.pct(0.99)),
			"floor_max_ms":               ms(floor.lags.max()),
			"floor_most_events_behind":   floor.mostBehind,
			"projector_batch":            "defaults (up to 1000 events per transaction)",
			"lag":                        "sampled every 10 ms: age of the oldest appended event not yet applied (0 when caught up), until caught up",
			"what_the_projector_adds_on": "decoding, signature checks, Postgres transactions",
		},
	}
	res.Met = proj.lags.max() <= time.Second && proj.rate >= 0.95*float64(rate)
	return res, nil
}

// burstFigures is one burst's measurement.
type burstFigures struct {
	lags       latencies // sorted
	mostBehind uint64
	rate       float64       // events/s actually appended
	drained    time.Duration // from the last append to caught up
}

// burst appends msgs (the stream's next events after base, in order) at
// rate per second and samples how far the follower, whose last sequence
// applied says, is behind, until it holds them all (at most 60 s after the
// last append).
func burst(ctx context.Context, r *runner, w *world, msgs []*nats.Msg, base uint64, rate int, applied func() (uint64, error)) (burstFigures, error) {
	js, err := jetstream.New(w.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return burstFigures{}, err
	}
	sent := make([]atomic.Int64, len(msgs)) // when msgs[i] (sequence base+i+1) was published
	var published atomic.Int64
	var pubTook time.Duration
	pubErr := make(chan error, 1)
	go func() {
		futures := make([]jetstream.PubAckFuture, 0, len(msgs))
		start := time.Now()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for i := 0; i < len(msgs); {
			select {
			case <-ctx.Done():
				pubErr <- ctx.Err()
				return
			case <-tick.C:
			}
			due := min(int(time.Since(start).Seconds()*float64(rate)), len(msgs))
			for ; i < due; i++ {
				sent[i].Store(time.Now().UnixNano())
				f, err := js.PublishMsgAsync(msgs[i])
				if err != nil {
					pubErr <- err
					return
				}
				futures = append(futures, f)
				published.Store(int64(i + 1))
			}
		}
		pubTook = time.Since(start)
		select {
		case <-js.PublishAsyncComplete():
		case <-time.After(time.Minute):
			pubErr <- errors.New("publishing did not complete within a minute")
			return
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				pubErr <- err
				return
			}
		}
		pubErr <- nil
	}()

	var fig burstFigures
	var lags latencies
	var lastAppend time.Time
	total := uint64(len(msgs))
	tick := time.NewTicker(burstSample)
	defer tick.Stop()
	for pubDone := false; ; {
		select {
		case err := <-pubErr:
			if err != nil {
				return burstFigures{}, err
			}
			pubDone, lastAppend = true, time.Now()
		case <-tick.C:
		}
		a, err := applied()
		if err != nil {
			return burstFigures{}, err
		}
		now := time.Now()
		held := min(max(a, base)-base, total) // events of this burst the follower holds
		pub := uint64(published.Load())
		var lag time.Duration
		if held < pub {
			lag = now.Sub(time.Unix(0, sent[held].Load()))
			fig.mostBehind = max(fig.mostBehind, pub-held)
		}
		lags = append(lags, lag)
		r.tick("%d of %d appended, %d behind, lag %s", pub, total, pub-min(held, pub), lag.Round(time.Millisecond))
		if pubDone && held >= total {
			fig.drained = now.Sub(lastAppend)
			break
		}
		if pubDone && now.Sub(lastAppend) > time.Minute {
			return burstFigures{}, fmt.Errorf("the follower holds %d of %d events a minute after the last append", held, total)
		}
	}
	fig.lags = lags.sorted()
	fig.rate = float64(len(msgs)) / max(pubTook.Seconds(), 1e-9)
	return fig, nil
}

// burstMessages returns n signed key.created events of keys from..from+n-1
// (projections.SyntheticKey), as KEYD_EVENTS messages.
func burstMessages(signer *domain.EventSigner, from, n int) ([]*nats.Msg, error) {
	rng := mrand.NewChaCha8([32]byte{7})
	start := time.Now().UTC().Truncate(time.Millisecond)
	actor := domain.Actor{Type: "user", ID: "bench"}
	out := make([]*nats.Msg, 0, n)
	for i := from; i < from+n; i++ {
		at := start.Add(time.Duration(i) * time.Microsecond)
		u, err := domain.NewULID(at, rng)
		if err != nil {
			return nil, err
		}
		k := projections.SyntheticKey(i, at, domain.KeyIDPrefix+u)
		raw, err := json.Marshal(domain.KeyCreatedData{Key: k})
		if err != nil {
			return nil, err
		}
		id, err := domain.NewULID(at, rng)
		if err != nil {
			return nil, err
		}
		b, err := json.Marshal(domain.Event{ID: id, Type: domain.EventKeyCreated, OrgID: k.OrgID, KeyID: k.ID, OccurredAt: at, Actor: actor, Data: raw})
		if err != nil {
			return nil, err
		}
		m := &nats.Msg{Subject: domain.KeySubject(k.OrgID, k.ID), Data: b, Header: nats.Header{}}
		m.Header.Set(eventstore.HeaderEventType, domain.EventKeyCreated)
		m.Header.Set(jetstream.MsgIDHeader, id)
		m.Header.Set(domain.SignatureHeader, signer.Sign(m.Subject, b))
		out = append(out, m)
	}
	return out, nil
}

// burstDetail is projection_burst's second line in the table.
func burstDetail(p map[string]any) string {
	return fmt.Sprintf("%v creations at %v/s (appended at %v/s) over %v s: projection lag p50/p99/max %v/%v/%v ms, at most %v events behind, drained %v ms after the last append; ordered consumer p50/p99/max %v/%v/%v ms, at most %v behind",
		p["events"], p["rate"], p["achieved_rate"], p["seconds"], p["p50_ms"], p["p99_ms"], p["max_ms"], p["most_events_behind"], p["drained_after_last_ms"],
		p["floor_p50_ms"], p["floor_p99_ms"], p["floor_max_ms"], p["floor_most_events_behind"])
}
