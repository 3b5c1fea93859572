package verifier

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/eventstore"
)

// errReplay asks for a full replay: the stream does not continue what the
// verifier holds.
var errReplay = errors.New("verifier: the stream does not continue what the verifier holds")

// run boots the verifier and follows the stream until ctx ends.
func (v *Verifier) run(ctx context.Context) {
	err := v.follow(ctx)
	switch {
	case err == nil || ctx.Err() != nil:
	case !v.booted.Load():
		v.bootErrCh <- err
	default:
		v.log.Error("verifier: stopped following the event stream", "err", err)
	}
}

func (v *Verifier) follow(ctx context.Context) error {
	events, err := eventstore.OpenEvents(ctx, v.cfg.JS, v.cfg.EventKey)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("verifier: the stream %s does not exist (keyd creates it when it starts)", domain.StreamName)
	}
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	stream := events.Stream()
	v.stream.Store(&stream)

	a := newApplier(v)
	snap, err := v.loadSnapshot(ctx, a)
	if err != nil {
		return err
	}
	infoAt := v.contact.clock()
	state, err := events.State(ctx)
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	if v.afterSnapshot != nil {
		v.afterSnapshot()
	}
	// The verifier's policy when the stream does not continue the
	// snapshot: replay the whole stream.
	if err := eventstore.CheckFrom(state, snap.seq); snap.ok && err != nil {
		if errors.Is(err, eventstore.ErrCheckpointAhead) {
			snap = snapshotResult{why: fmt.Sprintf("the snapshot reflects sequence %d but the stream ends at %d (was the stream recreated?)", snap.seq, state.LastSeq)}
		} else {
			snap = snapshotResult{why: fmt.Sprintf("the stream begins at sequence %d, after the snapshot's %d", state.FirstSeq, snap.seq)}
		}
	}
	if snap.ok {
		a.applied = snap.seq
	} else {
		a.reset()
		v.log.Info("verifier: replaying the whole event stream", "reason", snap.why, "events", state.Msgs)
	}
	v.setBootInfo(bootInfo{snapshot: snap.ok, snapshotSeq: snap.seq, snapshotKeys: snap.keys, target: state.LastSeq})

	target, fromSnapshot := state.LastSeq, snap.ok
	for wait := time.Second; ; {
		err := v.consume(ctx, events, a, fromSnapshot, target, infoAt)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, errReplay):
			v.log.Warn("verifier: replaying the whole stream", "err", err)
			// Fail closed while replaying: the keys held may be wrong.
			v.booted.Store(false)
			a.reset()
			fromSnapshot = false
			select {
			case <-v.replay: // asked again while the consumer stopped
			default:
			}
		case !v.everBooted():
			return err // Start reports it
		default:
			// Once running, keep trying: Verify answers unavailable when
			// this lasts (staleness), and the verifier recovers by itself.
			v.log.Error("verifier: cannot follow the event stream; retrying", "err", err, "in", wait)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(wait):
			}
			wait = min(2*wait, 30*time.Second)
		}
		if v.booted.Load() {
			continue // resume from a.applied
		}
		// (Re)booting: read the stream's end again, the new readiness mark.
		infoAt = v.contact.clock()
		state, err := events.State(ctx)
		if err != nil {
			if !v.everBooted() {
				return fmt.Errorf("verifier: %w", err)
			}
			continue // logged and retried by the next round
		}
		target = state.LastSeq
		v.setBootInfo(bootInfo{target: target, fellBack: true})
	}
}

// everBooted reports whether the verifier caught up at least once.
func (v *Verifier) everBooted() bool {
	select {
	case <-v.readyCh:
		return true
	default:
		return false
	}
}

// consume applies the stream from a.applied+1 until ctx ends. target is the
// stream's last sequence when boot began (read at infoAt): the verifier is
// ready once it has applied it. The verifier's policy on a gap: with
// fromSnapshot, a first message other than a.applied+1 (the stream no
// longer holds it) is errReplay; otherwise a gap is logged.
func (v *Verifier) consume(ctx context.Context, events *eventstore.Events, a *applier, fromSnapshot bool, target uint64, infoAt time.Duration) error {
	start := a.applied + 1
	tail, err := events.Tail(ctx, start, eventstore.TailOptions{Heartbeat: v.heartbeat, OnError: v.consumeError})
	if err != nil {
		return fmt.Errorf("verifier: %w", err)
	}
	defer tail.Stop()

	if !v.booted.Load() && a.applied >= target {
		v.finishBoot(a, infoAt)
	}
	began := time.Now()
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	first := true
	batch := make([]eventstore.Delivery, 0, 512)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tail.Done():
			return fmt.Errorf("verifier: %w", tail.Err())
		case <-v.replay:
			v.booted.Store(false) // fail closed now, not after the consumer stopped
			return fmt.Errorf("%w: the stream went back", errReplay)
		case <-progress.C:
			if !v.booted.Load() {
				v.log.Info("verifier: catching up with the event stream", "applied", a.applied, "total", target,
					"keys", a.keys, "elapsed", time.Since(began).Round(time.Second))
			} else {
				progress.Stop()
			}
			continue
		case d := <-tail.C():
			batch = append(batch[:0], d)
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case d := <-tail.C():
				batch = append(batch, d)
			default:
				break more
			}
		}
		caughtUp := false
		for _, d := range batch {
			switch {
			case d.Gap == nil:
			case first && fromSnapshot:
				return fmt.Errorf("%w: it delivered sequence %d first, not %d", errReplay, d.Sequence, start)
			case first:
				v.log.Warn("verifier: the stream no longer holds its first events", "first_delivered", d.Sequence, "wanted", start)
			default:
				v.log.Warn("verifier: the stream skipped sequences (deleted messages?)", "after", a.applied, "next", d.Sequence)
			}
			first = false
			if d.Rejected != "" {
				v.reject(eventstore.Rejection{Sequence: d.Sequence, Subject: d.Subject, Reason: d.Rejected})
			} else if why, err := a.apply(d.Subject, d.Data); err != nil {
				v.fail(d.Sequence, d.Subject, err)
			} else if why != "" {
				v.reject(eventstore.Rejection{Sequence: d.Sequence, Subject: d.Subject, Reason: why})
			}
			a.applied = d.Sequence
			caughtUp = d.Pending == 0
		}
		clear(batch)
		a.commit()
		if v.booted.Load() {
			v.setApplied(a.applied)
		} else {
			v.progress.Store(a.applied)
			if a.applied >= target {
				v.finishBoot(a, infoAt)
			}
		}
		if caughtUp {
			v.contact.touch(v.contact.clock())
		}
	}
}

// finishBoot publishes the boot tables and opens the verifier for
// verifications: it has applied everything the stream held at instant at.
func (v *Verifier) finishBoot(a *applier, at time.Duration) {
	a.publishWork()
	v.contact.touch(at)
	v.booted.Store(true)
	// Then wake WaitApplied callers: once it returns, Verify answers.
	v.setApplied(a.applied)
	v.readyOnce.Do(func() { close(v.readyCh) })
	b := v.getBootInfo()
	v.log.Info("verifier: caught up with the event stream", "applied", a.applied, "keys", a.keys,
		"from_snapshot", b.snapshot, "snapshot_sequence", b.snapshotSeq)
}

// fail records an event the verifier cannot apply. It keeps applying the
// events after it (each key event carries the key's full state), but no
// longer vouches for keys: Verify answers unavailable until a restart with
// a keyd that understands the event.
func (v *Verifier) fail(seq uint64, subject string, err error) {
	err = fmt.Errorf("stream sequence %d (subject %s): %w", seq, subject, err)
	v.failed.CompareAndSwap(nil, &failure{err})
	v.log.Error("verifier: cannot apply an event; answering unavailable from now on", "sequence", seq, "subject", subject, "err", err)
}

// reject records an event set aside: not keyd's (its signature), or
// breaking its aggregate's history (invariants on apply). The verifier
// keeps vouching for keys: the event is simply not applied. Counted by
// Config.OnRejected and in Rejected; logged at most once a second.
func (v *Verifier) reject(r eventstore.Rejection) {
	v.rejected.Add(1)
	if v.cfg.OnRejected != nil {
		v.cfg.OnRejected(r)
	}
	now := time.Now().UnixNano()
	last := v.lastRejectLog.Load()
	if now-last < int64(time.Second) || !v.lastRejectLog.CompareAndSwap(last, now) {
		return
	}
	v.log.Warn("verifier: set aside an event keyd did not sign or that breaks its aggregate's history; not applied",
		"sequence", r.Sequence, "subject", r.Subject, "reason", r.Reason, "set_aside_total", v.rejected.Load())
}

// Rejected returns how many events the verifier has set aside since it
// started (see Config.OnRejected).
func (v *Verifier) Rejected() uint64 { return v.rejected.Load() }

// consumeError logs consumer problems, at most every 10 seconds. The
// ordered consumer recreates itself; staleness (staleness.go) decides
// whether the verifier may still answer.
func (v *Verifier) consumeError(err error) {
	now := time.Now().UnixNano()
	last := v.lastConsumeLog.Load()
	if now-last < int64(10*time.Second) || !v.lastConsumeLog.CompareAndSwap(last, now) {
		return
	}
	v.log.Warn("verifier: event stream consumer error (it recreates itself)", "err", err,
		"nats_connected", v.nc != nil && v.nc.IsConnected())
}

// bootInfo records how the verifier booted.
type bootInfo struct {
	snapshot     bool   // booted from the Postgres snapshot
	snapshotSeq  uint64 // the sequence the snapshot reflected
	snapshotKeys int
	target       uint64 // the stream's last sequence at boot
	fellBack     bool   // the stream did not continue the snapshot: full replay
}

func (v *Verifier) setBootInfo(b bootInfo) {
	v.bootMu.Lock()
	v.bootInfo = b
	v.bootMu.Unlock()
}

func (v *Verifier) getBootInfo() bootInfo {
	v.bootMu.Lock()
	defer v.bootMu.Unlock()
	return v.bootInfo
}
