package projections

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// follower is the read-and-apply pipeline of one leadership: a reader
// goroutine takes events from the stream, decodes them and cuts batches,
// while the caller's goroutine applies the previous batch.
type follower struct {
	p     *Projector
	stmts *statements
}

// batch is a run of decoded events ready to apply.
type batch struct {
	ds []decoded
	// lastTime is the stream time of the last event.
	lastTime time.Time
}

func (f *follower) run(ctx context.Context, tail *eventstore.Tail) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan batch, 1)
	readErr := make(chan error, 1)
	go func() {
		defer close(batches)
		for {
			b, err := f.readBatch(rctx, tail)
			if len(b.ds) > 0 {
				select {
				case batches <- b:
				case <-rctx.Done():
					readErr <- rctx.Err()
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	for b := range batches {
		if err := f.flush(ctx, b); err != nil {
			cancel()
			for range batches { // let the reader finish
			}
			return err
		}
	}
	return <-readErr
}

// readBatch reads the next batch: it waits for an event, then takes every
// event already delivered, up to BatchSize. The batch is applied at once
// when that leaves the projector caught up (nothing more delivered, and the
// stream held nothing after the last event when it came); otherwise it
// keeps taking events until BatchSize or until BatchWait after its first
// event. So a caught-up projector applies each event without waiting, and
// one behind applies in batches that grow with its lag. (A delivery's
// Pending alone does not say the projector is caught up: the consumer pulls
// far ahead, so every event it receives while the projector is less than a
// pull buffer behind says 0 pending.) An event that cannot be decoded ends
// the batch before it: the batch is returned with its *EventError.
func (f *follower) readBatch(ctx context.Context, tail *eventstore.Tail) (batch, error) {
	size := f.p.batchSize()
	b := batch{ds: make([]decoded, 0, min(size, 64))}
	d, err := tail.Next(ctx)
	if err != nil {
		return b, nextError(ctx, err)
	}
	if err := f.add(&b, d); err != nil {
		return b, err
	}
	pending := d.Pending
	// Everything already delivered.
	for len(b.ds) < size {
		select {
		case d := <-tail.C():
			if err := f.add(&b, d); err != nil {
				return b, err
			}
			pending = d.Pending
			continue
		default:
		}
		break
	}
	if pending == 0 || len(b.ds) >= size {
		return b, nil
	}
	// Behind: fill the batch for up to BatchWait.
	wctx, cancel := context.WithTimeout(ctx, f.p.batchWait())
	defer cancel()
	for len(b.ds) < size {
		d, err := tail.Next(wctx)
		if err != nil {
			if ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return b, nil
			}
			return b, nextError(ctx, err)
		}
		if err := f.add(&b, d); err != nil {
			return b, err
		}
	}
	return b, nil
}

func nextError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("projections: reading stream %s: %w", domain.StreamName, err)
}

// add decodes d into b. The projector's policy on a gap: a stream that no
// longer holds the events after the checkpoint stops it (ErrGap, from the
// tail's check of its first delivery); deleted messages are logged.
func (f *follower) add(b *batch, d eventstore.Delivery) error {
	if d.Gap != nil {
		if !errors.Is(d.Gap, eventstore.ErrSkipped) {
			return d.Gap
		}
		f.p.log.Warn("projector: stream sequences missing (deleted messages)", "projection", f.p.tables.Checkpoint,
			"expected", d.Expected, "got", d.Sequence)
	}
	f.p.mu.Lock()
	f.p.status.StreamLast = max(f.p.status.StreamLast, d.Sequence+d.Pending)
	if f.p.oldestPending.IsZero() {
		f.p.oldestPending = d.Time
	}
	f.p.mu.Unlock()

	dec, err := decodeDelivery(d)
	if err != nil {
		return err // Run logs it and keeps it in Status
	}
	b.ds = append(b.ds, dec)
	b.lastTime = d.Time
	return nil
}

// flush applies b in one transaction.
func (f *follower) flush(ctx context.Context, b batch) error {
	if len(b.ds) == 0 {
		return nil
	}
	var applied uint64
	var rejected []eventstore.Rejection
	err := pgx.BeginFunc(ctx, f.p.pool, func(tx pgx.Tx) error {
		var err error
		applied, rejected, err = applyChecked(ctx, tx, f.stmts, b.ds)
		return err
	})
	if err == nil {
		f.p.reject(rejected)
	}
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return err
	}
	f.p.mu.Lock()
	f.p.status.Applied, f.p.status.Err, f.p.lastApply = applied, nil, time.Now()
	if f.p.status.StreamLast > applied {
		// More is pending: its oldest event is no older than the last one
		// applied.
		f.p.oldestPending = b.lastTime
	} else {
		f.p.oldestPending = time.Time{}
	}
	f.p.mu.Unlock()
	return nil
}
