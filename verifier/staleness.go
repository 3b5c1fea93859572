package verifier

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Staleness. The verifier may answer only while it can promise that it has
// every revocation: that it was caught up with the stream a short while ago.
// "Last contact" is the latest instant at which the verifier knows it held
// every event the stream had:
//
//   - a message delivered with nothing pending behind it (NumPending 0)
//     proves it for the instant of delivery;
//   - a probe (the stream's info, several times per MaxStaleness) that read
//     the stream's last sequence L at instant T proves it for T once the
//     verifier has applied L, at once or when the tail arrives.
//
// So a verifier whose connection, server or consumer is gone stops renewing
// its contact and turns stale MaxStaleness after the last proof, whatever
// the cause; and it recovers by itself as soon as a probe answers and the
// consumer (an ordered consumer, which recreates itself after reconnects and
// missed heartbeats) has delivered what the probe saw. A quiet stream with a
// broken consumer loses nothing, so it is not stale; one with new events
// the consumer does not deliver turns stale.
//
// Times are monotonic durations since epoch, so an injected Config.Now (for
// expiry) does not affect staleness.

// contact tracks the last contact with the stream.
type contact struct {
	epoch      time.Time
	last       atomic.Int64 // since epoch, ns; 0: never
	streamLast atomic.Uint64

	mu      sync.Mutex
	pending []probe // probes not yet satisfied, oldest first
	applied uint64  // as last told by advanced
	lost    bool    // contact was lost (for logging the recovery)
}

type probe struct {
	at   time.Duration
	last uint64
}

const maxPendingProbes = 64

func (c *contact) init() { c.epoch = time.Now() }

func (c *contact) clock() time.Duration { return time.Since(c.epoch) }

// at is the contact clock at t, a time.Now() reading (monotonic).
func (c *contact) at(t time.Time) time.Duration { return t.Sub(c.epoch) }

// touch records contact at instant at.
func (c *contact) touch(at time.Duration) {
	for {
		old := c.last.Load()
		if int64(at) <= old || c.last.CompareAndSwap(old, int64(at)) {
			return
		}
	}
}

// since returns how long ago the last contact was (the whole lifetime if
// there was none).
func (c *contact) since() time.Duration { return c.sinceAt(c.clock()) }

// sinceAt is how long before instant mono of the contact clock the last
// contact was.
func (c *contact) sinceAt(mono time.Duration) time.Duration {
	return mono - time.Duration(c.last.Load())
}

// observed records a probe that read the stream's last sequence at instant at.
func (c *contact) observed(at time.Duration, last uint64) {
	for {
		old := c.streamLast.Load()
		if last <= old || c.streamLast.CompareAndSwap(old, last) {
			break
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.applied >= last {
		c.touch(at)
		return
	}
	if len(c.pending) == maxPendingProbes {
		// Far behind: a later probe's proof implies the earlier ones'.
		c.pending = append(c.pending[:0], c.pending[1:]...)
	}
	c.pending = append(c.pending, probe{at, last})
}

// advanced records that the verifier has applied seq.
func (c *contact) advanced(seq uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied = seq
	n := 0
	for _, p := range c.pending {
		if p.last > seq {
			break // probes are in time order, and stream sequences only grow
		}
		c.touch(p.at)
		n++
	}
	if n > 0 {
		c.pending = append(c.pending[:0], c.pending[n:]...)
	}
}

// staleProbeEvery bounds the probe interval while the verifier is stale,
// so it answers again within a moment of the stream's return.
const staleProbeEvery = 200 * time.Millisecond

// probeLoop asks for the stream's last sequence every probeEvery (at most
// every staleProbeEvery while stale), and logs when the verifier turns
// stale and when it recovers.
func (v *Verifier) probeLoop(ctx context.Context) {
	t := time.NewTimer(v.probeEvery)
	defer t.Stop()
	var lastErr error
	for first := true; ; first = false {
		if !first {
			every := v.probeEvery
			v.contact.mu.Lock()
			if v.contact.lost {
				every = min(every, staleProbeEvery)
			}
			v.contact.mu.Unlock()
			t.Reset(every)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		stream := v.stream.Load()
		if stream == nil {
			continue // not subscribed yet
		}
		at := v.contact.clock()
		// Applied as of before the request: events appended while the
		// request is out may be applied before its reply is read, so
		// comparing with applied read afterwards would mistake a busy
		// stream for one that went back.
		applied := v.applied.Load()
		pctx, cancel := context.WithTimeout(ctx, max(v.probeEvery, 2*time.Second))
		info, err := (*stream).Info(pctx)
		cancel()
		if err == nil {
			if v.booted.Load() && info.State.LastSeq < applied {
				// The stream went back: it was deleted and created again.
				// What the verifier holds belongs to the old one.
				select {
				case v.replay <- struct{}{}:
					v.log.Error("verifier: the stream ends before what the verifier applied (was it recreated?); replaying it",
						"stream_last", info.State.LastSeq, "applied", applied)
				default:
				}
				continue
			}
			v.contact.observed(at, info.State.LastSeq)
		} else if ctx.Err() == nil {
			lastErr = err
		}
		if !v.booted.Load() {
			continue
		}
		stale := v.contact.since() > v.maxStaleness
		v.contact.mu.Lock()
		was := v.contact.lost
		v.contact.lost = stale
		v.contact.mu.Unlock()
		switch {
		case stale && !was:
			v.log.Error("verifier: cut off from the event stream; answering unavailable until contact returns",
				"since_contact", v.contact.since().Round(time.Millisecond), "max_staleness", v.maxStaleness,
				"applied", v.applied.Load(), "nats_connected", v.nc != nil && v.nc.IsConnected(), "last_error", lastErr)
		case !stale && was:
			v.log.Info("verifier: back in contact with the event stream", "applied", v.applied.Load())
			lastErr = nil
		}
	}
}
