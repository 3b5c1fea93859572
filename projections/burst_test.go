package projections

import (
	"os"
	"sort"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// TestProjectorKeepsUpWithABurst: key.created events appended at a steady
// 2,000/s (KEYD_BURST_RATE, for KEYD_BURST_SECONDS, default 5) while a
// projector runs: the read models never fall more than a second behind the
// stream. Lag is sampled every 10 ms as the age of the oldest appended
// event not yet applied (0 when caught up).
func TestProjectorKeepsUpWithABurst(t *testing.T) {
	if testing.Short() {
		t.Skip("appends a burst for several seconds")
	}
	if raceEnabled {
		t.Skip("a timing goal: the race detector slows the projector several times over")
	}
	rate, seconds := envInt("KEYD_BURST_RATE", 2000), envInt("KEYD_BURST_SECONDS", 5)
	if n := rate * seconds; n > benchKeys {
		t.Fatalf("%d events asked, at most %d", n, benchKeys)
	}
	e := newEnv(t)
	events := benchHistory(t)[:rate*seconds]
	p := e.projector(e.pool)
	e.start(p)
	testenv.WaitFor(t, 10*time.Second, "the projector to lead", func() bool { return p.Status().Leader })

	js, err := jetstream.New(e.nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		t.Fatal(err)
	}
	// sent[i] is when event i (stream sequence i+1) was published.
	sent := make([]atomic.Int64, len(events))
	var published atomic.Int64
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		start := time.Now()
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		i := 0
		for i < len(events) {
			<-tick.C
			due := min(int(time.Since(start).Seconds()*float64(rate)), len(events))
			for ; i < due; i++ {
				ev := events[i]
				sent[i].Store(time.Now().UnixNano())
				if _, err := js.PublishMsgAsync(&nats.Msg{Subject: ev.subject, Data: ev.data, Header: nats.Header{"Keyd-Event-Type": {ev.d.ev.Type}}}); err != nil {
					t.Error(err)
					return
				}
				published.Store(int64(i + 1))
			}
		}
		<-js.PublishAsyncComplete()
	}()

	var lags []time.Duration
	var maxEvents int64
	began := time.Now()
	for done := false; !done; {
		select {
		case <-pubDone:
			done = true
		case <-time.After(10 * time.Millisecond):
		}
		applied, pub := int64(p.Status().Applied), published.Load()
		var lag time.Duration
		if applied < pub {
			lag = time.Since(time.Unix(0, sent[applied].Load()))
			maxEvents = max(maxEvents, pub-applied)
		}
		lags = append(lags, lag)
		if err := p.Status().Err; err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(began)
	testenv.WaitFor(t, 60*time.Second, "the projector to catch up", func() bool { return p.Status().Applied >= uint64(len(events)) })
	caughtUp := time.Since(began) - elapsed
	sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
	pct := func(q float64) time.Duration { return lags[int(q*float64(len(lags)-1))].Round(time.Millisecond) }
	t.Logf("%d events at %d/s over %s: projection lag p50 %s, p99 %s, max %s (at most %d events); caught up %s after the last append",
		len(events), rate, elapsed.Round(time.Millisecond), pct(0.5), pct(0.99), pct(1), maxEvents, caughtUp.Round(time.Millisecond))
	if m := lags[len(lags)-1]; m > time.Second {
		t.Errorf("the read models fell %s behind the stream, want at most 1s", m)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
