package verifier

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// applier owns the key state while it changes: it is used by one goroutine
// only (the stream follower), so writers never contend; readers see only
// what it publishes.
type applier struct {
	v       *Verifier
	in      *interner
	retired map[string]struct{} // retired catalog permissions
	applied uint64              // last stream sequence applied
	keys    int

	// While booting, keys go into private tables, published at once when
	// the verifier has caught up.
	work *[nShards]table
	// After boot, a shard that gains keys is copied once per batch and
	// published at the end of the batch.
	fresh   [nShards]table
	touched []int
}

func newApplier(v *Verifier) *applier {
	a := &applier{v: v}
	a.reset()
	return a
}

// reset forgets everything (before a full replay). Only while booting.
func (a *applier) reset() {
	a.in = newInterner()
	a.retired = map[string]struct{}{}
	a.work = new([nShards]table)
	a.applied = 0
	a.keys = 0
}

// presize makes the (booting) tables ready for n keys.
func (a *applier) presize(n int) {
	per := n / nShards
	if per < 8 {
		return
	}
	per += per / 8 // the shards' counts vary
	for s := range a.work {
		if a.work[s] == nil {
			a.work[s] = make(table, per)
		}
	}
}

// put stores st as the state of the key with digest d.
func (a *applier) put(d domain.Digest, st *keyState) {
	s := shardOf(&d)
	var t table
	if a.work != nil {
		t = a.work[s]
		if t == nil {
			t = make(table)
			a.work[s] = t
		}
	} else if t = a.fresh[s]; t == nil {
		cur := *a.v.keys.shards[s].Load()
		if sl := cur[d]; sl != nil {
			a.store(sl, st)
			return
		}
		t = maps.Clone(cur)
		if t == nil {
			t = make(table)
		}
		a.fresh[s] = t
		a.touched = append(a.touched, s)
	}
	if sl := t[d]; sl != nil {
		a.store(sl, st)
		return
	}
	t[d] = newSlot(st)
	a.keys++
}

// store replaces the state in an existing slot by a copy of st.
func (a *applier) store(sl *slot, st *keyState) {
	if old := sl.state.Load(); old.id() != st.id() {
		// Two keys with one digest: impossible short of a broken
		// digester. Keep the first key; say so.
		a.v.log.Error("verifier: two keys have the same digest; keeping the first",
			"first", old.id(), "second", st.id())
		return
	}
	n := *st
	sl.state.Store(&n)
}

// commit publishes the shards copied in this batch.
func (a *applier) commit() {
	for _, s := range a.touched {
		t := a.fresh[s]
		a.v.keys.shards[s].Store(&t)
		a.fresh[s] = nil
	}
	a.touched = a.touched[:0]
	a.v.nkeys.Store(int64(a.keys))
}

// publishWork publishes the tables built while booting.
func (a *applier) publishWork() {
	for s, t := range a.work {
		if t == nil {
			a.v.keys.shards[s].Store(&emptyTable)
		} else {
			a.v.keys.shards[s].Store(&t)
		}
	}
	a.work = nil
	a.v.nkeys.Store(int64(a.keys))
}

// apply applies one event, stored on subject. Errors describe an event that
// cannot be applied.
func (a *applier) apply(subject string, data []byte) error {
	ev, err := domain.DecodeEvent(data)
	if err != nil {
		return err
	}
	if err := ev.CheckSubject(subject); err != nil {
		return err
	}
	if ev.IsKeyEvent() {
		k, err := ev.KeyState()
		if err != nil {
			return err
		}
		var d domain.Digest
		if len(k.Digest) != 2*len(d) {
			return fmt.Errorf("event %s carries no valid digest for key %s", ev.ID, k.ID)
		}
		if _, err := hex.Decode(d[:], []byte(k.Digest)); err != nil {
			return fmt.Errorf("event %s carries no valid digest for key %s", ev.ID, k.ID)
		}
		st := a.in.stateFromKey(&k, a.retired)
		a.put(d, &st)
		return nil
	}
	c, err := ev.Catalog()
	if err != nil {
		return err
	}
	a.setCatalog(c.List())
	return nil
}

// setCatalog takes the catalog after a catalog event. Newly retired
// permissions are taken out of every key that holds them (retired slugs are
// never defined again, so nothing is ever put back).
func (a *applier) setCatalog(list []domain.Permission) {
	retired := make(map[string]struct{}, len(a.retired))
	added := false
	for _, p := range list {
		if p.Status == domain.PermissionRetired {
			retired[p.Slug] = struct{}{}
			if _, had := a.retired[p.Slug]; !had {
				added = true
			}
		}
	}
	for s := range a.retired {
		if _, still := retired[s]; !still {
			// Not possible through keyd's commands; keys stay without it.
			a.v.log.Warn("verifier: the catalog no longer lists a retired permission as retired; keys that held it do not get it back", "permission", s)
			retired[s] = struct{}{}
		}
	}
	a.retired = retired
	if !added {
		return
	}
	a.in.forgetPerms()
	a.commit()
	tables := a.work
	if tables == nil {
		tables = new([nShards]table)
		for s := range tables {
			tables[s] = *a.v.keys.shards[s].Load()
		}
	}
	for _, t := range tables {
		for _, sl := range t {
			st := sl.state.Load()
			if n := a.in.withoutRetired(st, retired); n != st {
				sl.state.Store(n)
			}
		}
	}
}

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
	st, err := v.cfg.JS.Stream(ctx, domain.StreamName)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("verifier: the stream %s does not exist (keyd creates it when it starts)", domain.StreamName)
	}
	if err != nil {
		return fmt.Errorf("verifier: looking up the stream %s: %w", domain.StreamName, err)
	}
	v.stream.Store(&st)

	a := newApplier(v)
	snap, err := v.loadSnapshot(ctx, a)
	if err != nil {
		return err
	}
	infoAt := v.contact.clock()
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("verifier: reading the state of the stream %s: %w", domain.StreamName, err)
	}
	if v.afterSnapshot != nil {
		v.afterSnapshot()
	}
	state := info.State
	switch {
	case !snap.ok:
	case snap.seq > state.LastSeq:
		snap = snapshotResult{why: fmt.Sprintf("the snapshot reflects sequence %d but the stream ends at %d (was the stream recreated?)", snap.seq, state.LastSeq)}
	case state.Msgs > 0 && state.FirstSeq > snap.seq+1:
		snap = snapshotResult{why: fmt.Sprintf("the stream begins at sequence %d, after the snapshot's %d", state.FirstSeq, snap.seq)}
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
		err := v.consume(ctx, a, fromSnapshot, target, infoAt)
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
		info, err := st.Info(ctx)
		if err != nil {
			if !v.everBooted() {
				return fmt.Errorf("verifier: reading the state of the stream %s: %w", domain.StreamName, err)
			}
			continue // logged and retried by the next round
		}
		target = info.State.LastSeq
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
// ready once it has applied it. With fromSnapshot, a first message other
// than a.applied+1 (the stream no longer holds it) is errReplay.
func (v *Verifier) consume(ctx context.Context, a *applier, fromSnapshot bool, target uint64, infoAt time.Duration) error {
	start := a.applied + 1
	cons, err := v.cfg.JS.OrderedConsumer(ctx, domain.StreamName, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   start,
	})
	if err != nil {
		return fmt.Errorf("verifier: subscribing to the stream %s from sequence %d: %w", domain.StreamName, start, err)
	}
	cctx, stop := context.WithCancel(ctx)
	defer stop()
	msgs := make(chan jetstream.Msg, 1024)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		select {
		case msgs <- m:
		case <-cctx.Done():
		}
	}, jetstream.PullHeartbeat(v.heartbeat), jetstream.ConsumeErrHandler(v.consumeError))
	if err != nil {
		return fmt.Errorf("verifier: consuming the stream %s from sequence %d: %w", domain.StreamName, start, err)
	}
	defer cc.Stop()

	if !v.booted.Load() && a.applied >= target {
		v.finishBoot(a, infoAt)
	}
	began := time.Now()
	progress := time.NewTicker(time.Second)
	defer progress.Stop()
	first := true
	batch := make([]jetstream.Msg, 0, 512)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
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
		case m := <-msgs:
			batch = append(batch[:0], m)
		}
	more:
		for len(batch) < cap(batch) {
			select {
			case m := <-msgs:
				batch = append(batch, m)
			default:
				break more
			}
		}
		caughtUp := false
		for _, m := range batch {
			md, err := m.Metadata()
			if err != nil {
				v.fail(a.applied+1, m.Subject(), fmt.Errorf("message without JetStream metadata: %w", err))
				continue
			}
			seq := md.Sequence.Stream
			if seq <= a.applied {
				continue // delivered again after a consumer reset
			}
			if first {
				first = false
				if seq != start {
					if fromSnapshot {
						return fmt.Errorf("%w: it delivered sequence %d first, not %d", errReplay, seq, start)
					}
					v.log.Warn("verifier: the stream no longer holds its first events", "first_delivered", seq, "wanted", start)
				}
			} else if seq != a.applied+1 {
				v.log.Warn("verifier: the stream skipped sequences (deleted messages?)", "after", a.applied, "next", seq)
			}
			if err := a.apply(m.Subject(), m.Data()); err != nil {
				v.fail(seq, m.Subject(), err)
			}
			a.applied = seq
			caughtUp = md.NumPending == 0
		}
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
	v.setApplied(a.applied)
	v.contact.touch(at)
	v.booted.Store(true)
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

// consumeError logs consumer problems, at most every 10 seconds. The
// ordered consumer recreates itself; staleness (staleness.go) decides
// whether the verifier may still answer.
func (v *Verifier) consumeError(_ jetstream.ConsumeContext, err error) {
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
