package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
	"github.com/keyd-dev/keyd/projections"
)

// runCatchUp: opts.CatchUpEvents events (half the keys created, then each
// revoked) in a fresh KEYD_EVENTS stream; a projector (keyd's, with its
// defaults) catches up from empty read models. Floor: the final rows of the
// same events upserted straight into the same tables with the projector's
// statements (projections.RawUpsert), 1000 keys per transaction.
func runCatchUp(ctx context.Context, r *runner) (Result, error) {
	nKeys := max(1, r.opts.CatchUpEvents/2)
	w, err := r.newWorld(ctx, "catchup")
	if err != nil {
		return Result{}, err
	}
	defer w.close()
	r.phase("publishing %s events", thousands(int64(2*nKeys)))
	signer := domain.NewEventSigner([]byte(r.secret))
	recs, err := publishHistory(ctx, w, signer, nKeys, func(d int) { r.tick("published %d of %d events", d, 2*nKeys) })
	if err != nil {
		return Result{}, err
	}
	last := recs[len(recs)-1].Sequence
	if err := r.resetDB(ctx); err != nil {
		return Result{}, err
	}

	r.phase("projector catching up %s events", thousands(int64(len(recs))))
	p := projections.NewProjector(r.db.pool, w.js, r.log)
	p.EventKey = signer.PublicKey()
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- p.Run(pctx) }()
	var took time.Duration
	for {
		st := p.Status()
		if st.Applied >= last {
			took = time.Since(start)
			break
		}
		var ee *projections.EventError
		if errors.As(st.Err, &ee) || ctx.Err() != nil {
			cancel()
			<-done
			return Result{}, errors.Join(st.Err, ctx.Err())
		}
		r.tick("projector: %d of %d events", st.Applied, last)
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		return Result{}, err
	}
	if err := r.checkProjected(ctx, len(recs), nKeys); err != nil {
		return Result{}, err
	}

	r.phase("raw upserts of the same rows")
	raw, err := projections.NewRawUpsert(projections.DefaultTables, recs, 1000)
	if err != nil {
		return Result{}, err
	}
	if err := r.resetDB(ctx); err != nil {
		return Result{}, err
	}
	start = time.Now()
	if err := raw.Write(ctx, r.db.pool); err != nil {
		return Result{}, err
	}
	rawTook := time.Since(start)
	if err := r.checkProjected(ctx, len(recs), nKeys); err != nil {
		return Result{}, err
	}
	if err := r.resetDB(ctx); err != nil {
		return Result{}, err
	}

	rate := float64(len(recs)) / took.Seconds()
	rawRate := float64(len(recs)) / rawTook.Seconds()
	res := Result{
		Name: "projection_catchup", Value: round(rate, 0), Unit: "events/s",
		Baseline: Baseline{Name: "raw batched upserts of the final rows", Value: round(rawRate, 0)},
		Better:   "higher",
		Goal:     "ratio ≥ 0.5",
		Params: map[string]any{
			"events":               len(recs),
			"keys":                 nKeys,
			"seconds":              round(took.Seconds(), 3),
			"floor_seconds":        round(rawTook.Seconds(), 3),
			"floor_transactions":   raw.Transactions(),
			"projector_batch":      "defaults (1000 events per transaction)",
			"what_the_floor_skips": "NATS delivery, decoding, intermediate states, checkpoint",
		},
	}
	res.Met = rate >= 0.5*rawRate
	return res, nil
}

// checkProjected checks the row counts of the read models.
func (r *runner) checkProjected(ctx context.Context, events, keys int) error {
	var audit, nkeys, verif int
	err := r.db.pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM audit_events), (SELECT count(*) FROM keys), (SELECT count(*) FROM verification_keys)`).
		Scan(&audit, &nkeys, &verif)
	if err != nil {
		return err
	}
	if audit != events || nkeys != keys || verif != keys {
		return fmt.Errorf("the read models hold %d audit events, %d keys and %d verification rows; want %d, %d and %d",
			audit, nkeys, verif, events, keys, keys)
	}
	return nil
}

// publishHistory appends nKeys key.created events, then a key.revoked event
// for each key, to KEYD_EVENTS (asynchronously, 4096 in flight), as the
// domain would write them (signed by signer), and returns them as records.
func publishHistory(ctx context.Context, w *world, signer *domain.EventSigner, nKeys int, tick func(int)) ([]domain.Record, error) {
	js, err := jetstream.New(w.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return nil, err
	}
	rng := mrand.NewChaCha8([32]byte{3})
	start := time.Now().UTC().Truncate(time.Millisecond).Add(-2 * time.Hour)
	actor := domain.Actor{Type: "user", ID: "bench"}
	recs := make([]domain.Record, 0, 2*nKeys)
	futures := make([]jetstream.PubAckFuture, 0, 2*nKeys)
	publish := func(typ string, k domain.KeyState, at time.Time, data any) error {
		id, err := domain.NewULID(at, rng)
		if err != nil {
			return err
		}
		raw, err := json.Marshal(data)
		if err != nil {
			return err
		}
		b, err := json.Marshal(domain.Event{ID: id, Type: typ, OrgID: k.OrgID, KeyID: k.ID, OccurredAt: at, Actor: actor, Data: raw})
		if err != nil {
			return err
		}
		m := &nats.Msg{Subject: domain.KeySubject(k.OrgID, k.ID), Data: b, Header: nats.Header{}}
		m.Header.Set(eventstore.HeaderEventType, typ)
		m.Header.Set(jetstream.MsgIDHeader, id)
		m.Header.Set(domain.SignatureHeader, signer.Sign(m.Subject, b))
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			return err
		}
		recs = append(recs, domain.Record{Subject: m.Subject, Data: b})
		futures = append(futures, f)
		if len(futures)%1000 == 0 {
			tick(len(futures))
		}
		return nil
	}
	states := make([]domain.KeyState, nKeys)
	for i := range states {
		at := start.Add(time.Duration(i) * time.Millisecond)
		u, err := domain.NewULID(at, rng)
		if err != nil {
			return nil, err
		}
		k := projections.SyntheticKey(i, at, domain.KeyIDPrefix+u)
		states[i] = k
		if err := publish(domain.EventKeyCreated, k, at, domain.KeyCreatedData{Key: k}); err != nil {
			return nil, err
		}
	}
	for i, k := range states {
		at := start.Add(time.Hour + time.Duration(i)*time.Millisecond)
		k.Status, k.RevokedAt, k.RevokeReason, k.Version = domain.StatusRevoked, &at, "bench", 2
		if err := publish(domain.EventKeyRevoked, k, at, domain.KeyRevokedData{Reason: "bench", Key: k}); err != nil {
			return nil, err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(5 * time.Minute):
		return nil, errors.New("publishing did not complete within 5 minutes")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			recs[i].Sequence = ack.Sequence
		case err := <-f.Err():
			return nil, err
		}
	}
	return recs, nil
}
