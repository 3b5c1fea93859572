package eventstore

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
)

// CatalogWatcher is domain.CatalogSource on a JetStream store: the
// permission catalog held in memory, so that a create checks its grants
// without a read of the stream. It loads the catalog with the store's Last
// (the checks every reader makes: signature, chaining), then follows the
// catalog subject with an ordered consumer filtered to it, and takes each
// event that the store's checks vouch for and whose catalog version is the
// next (CatalogInvariant); what it sets aside goes to the store's
// rejection hook, like any reader's.
//
// Staleness is bounded: every PollInterval it also reads the subject's last
// event with Last (one direct get) and takes it if the consumer has not
// delivered it (a consumer stuck on a dead peer cannot hold a stale catalog
// for longer); Current reports ok=false when neither that read nor a
// delivery that left nothing pending has confirmed the copy within MaxAge,
// so that callers read the store instead.
type CatalogWatcher struct {
	store *JetStream
	// PollInterval is how often the copy is checked against the stream's
	// last catalog event (default 1 s); MaxAge how long a copy stays usable
	// since it was last confirmed current (default 3 PollIntervals).
	PollInterval time.Duration
	MaxAge       time.Duration
	// OnError receives the consumer's and the poll's errors (nil: none).
	OnError func(error)

	mu        sync.Mutex
	cat       domain.Catalog
	seq       uint64    // the sequence of the catalog event held (0: none)
	head      uint64    // the last sequence of the subject looked at, set-aside messages included
	confirmed time.Time // when the copy was last known current
	now       func() time.Time
}

// NewCatalogWatcher returns a watcher of store's catalog subject; Start it.
func NewCatalogWatcher(store *JetStream) *CatalogWatcher {
	return &CatalogWatcher{store: store, now: time.Now}
}

func (w *CatalogWatcher) interval() time.Duration {
	if w.PollInterval > 0 {
		return w.PollInterval
	}
	return time.Second
}

func (w *CatalogWatcher) maxAge() time.Duration {
	if w.MaxAge > 0 {
		return w.MaxAge
	}
	return 3 * w.interval()
}

// Start loads the catalog and follows its subject until ctx ends. It
// returns once the copy is loaded and the consumer exists.
func (w *CatalogWatcher) Start(ctx context.Context) error {
	if err := w.poll(ctx); err != nil {
		return err
	}
	w.mu.Lock()
	from := w.head + 1
	w.mu.Unlock()
	cons, err := w.store.js.OrderedConsumer(ctx, w.store.name, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{domain.CatalogSubject},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    from,
	})
	if err != nil {
		return fmt.Errorf("eventstore: watching the catalog from sequence %d: %w", from, err)
	}
	cc, err := cons.Consume(w.receive, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) { w.report(err) }))
	if err != nil {
		return fmt.Errorf("eventstore: watching the catalog from sequence %d: %w", from, err)
	}
	go func() {
		defer cc.Stop()
		t := time.NewTicker(w.interval())
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				pctx, cancel := context.WithTimeout(ctx, w.interval())
				if err := w.poll(pctx); err != nil && ctx.Err() == nil {
					w.report(err)
				}
				cancel()
			}
		}
	}()
	return nil
}

func (w *CatalogWatcher) report(err error) {
	if w.OnError != nil {
		w.OnError(err)
	}
}

// poll reads the subject's last event the store vouches for and takes it if
// it is newer than the copy; either way the copy is then confirmed current.
func (w *CatalogWatcher) poll(ctx context.Context) error {
	at := w.now()
	rec, ok, err := w.store.Last(ctx, domain.CatalogSubject)
	if err != nil {
		return err
	}
	cat := domain.NewCatalog(nil)
	if ok {
		ev, err := domain.DecodeEvent(rec.Data)
		if err != nil {
			return fmt.Errorf("eventstore: the catalog event at sequence %d: %w", rec.Sequence, err)
		}
		if cat, err = ev.Catalog(); err != nil {
			return fmt.Errorf("eventstore: the catalog event at sequence %d: %w", rec.Sequence, err)
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if ok && rec.Sequence > w.seq {
		w.cat, w.seq = cat, rec.Sequence
	} else if !ok && w.seq == 0 {
		w.cat = cat
	}
	w.head = max(w.head, rec.Head, rec.Sequence)
	if at.After(w.confirmed) {
		w.confirmed = at
	}
	return nil
}

// receive is the consumer's callback: one message on the catalog subject.
func (w *CatalogWatcher) receive(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		w.report(fmt.Errorf("eventstore: a catalog message without metadata: %w", err))
		return
	}
	seq := md.Sequence.Stream
	at := w.now()
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq <= w.head {
		if md.NumPending == 0 && at.After(w.confirmed) {
			w.confirmed = at
		}
		return // taken already (a poll, Observe, or a consumer reset)
	}
	w.head = seq
	if md.NumPending == 0 {
		w.confirmed = at
	}
	if w.store.rejected(seq, m.Subject(), m.Data(), m.Headers()) {
		return
	}
	ev, err := domain.DecodeEvent(m.Data())
	var cat domain.Catalog
	if err == nil {
		cat, err = ev.Catalog()
	}
	if err != nil {
		w.report(fmt.Errorf("eventstore: the catalog event at sequence %d: %w", seq, err))
		return
	}
	if reason := CatalogInvariant(w.cat.Version(), cat.Version()); reason != "" {
		if w.store.onReject != nil {
			w.store.onReject(Rejection{Sequence: seq, Subject: m.Subject(), Reason: reason})
		}
		return
	}
	w.cat, w.seq = cat, seq
}

// Current returns the catalog held, the sequence of its event, and whether
// it was confirmed current within MaxAge.
func (w *CatalogWatcher) Current() (domain.Catalog, uint64, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ok := !w.confirmed.IsZero() && w.now().Sub(w.confirmed) <= w.maxAge()
	return w.cat, w.seq, ok
}

// Observe takes c, the catalog as of sequence seq (read from the store or
// appended by this process), if it is newer than the copy.
func (w *CatalogWatcher) Observe(c domain.Catalog, seq uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if seq > w.seq {
		w.cat, w.seq = c, seq
		w.head = max(w.head, seq)
	}
}

var _ domain.CatalogSource = (*CatalogWatcher)(nil)
