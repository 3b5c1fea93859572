package eventstore

import (
	"context"
	"crypto/rand"
	"fmt"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/domain"
)

// catalogService is a command side on f's store; catalogs may be nil.
func catalogService(f *fixture, catalogs domain.CatalogSource) *domain.Service {
	return &domain.Service{Store: f.store, Catalogs: catalogs, Digester: domain.NewDigester([]byte("d")), Now: time.Now, Rand: rand.Reader}
}

func permStatus(c domain.Catalog, slug string) string {
	for _, p := range c.List() {
		if p.Slug == slug {
			return p.Status
		}
	}
	return ""
}

// waitCatalog waits until w holds slug with status (at most 5 s).
func waitCatalog(t *testing.T, w *CatalogWatcher, slug, status string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, _, ok := w.Current()
		if ok && permStatus(c, slug) == status {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher holds %q as %q (current %v), want %q", slug, permStatus(c, slug), ok, status)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCatalogWatcherFollowsTheSubject: a watcher loads the catalog as it
// stands, then takes each later catalog event another process appends
// through its consumer (the poll is set to an hour, so only the consumer
// can deliver), and sets aside a forged one like every reader.
func TestCatalogWatcherFollowsTheSubject(t *testing.T) {
	t.Parallel()
	var rl rejectLog
	f := newFixture(t, WithRejections(rl.add))
	ctx := t.Context()
	other := catalogService(f, nil)
	if _, err := other.DefinePermission(ctx, domain.DefinePermission{Slug: "before", Description: "x"}); err != nil {
		t.Fatal(err)
	}
	w := NewCatalogWatcher(f.store)
	w.PollInterval, w.MaxAge = time.Hour, time.Hour
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if c, seq, ok := w.Current(); !ok || seq == 0 || permStatus(c, "before") != domain.PermissionActive {
		t.Fatalf("after Start: %v at %d (current %v), want the defined permission", c.List(), seq, ok)
	}
	if _, err := other.DefinePermission(ctx, domain.DefinePermission{Slug: "later", Description: "y"}); err != nil {
		t.Fatal(err)
	}
	waitCatalog(t, w, "later", domain.PermissionActive)
	if _, err := other.RetirePermission(ctx, domain.RetirePermission{Slug: "later"}); err != nil {
		t.Fatal(err)
	}
	waitCatalog(t, w, "later", domain.PermissionRetired)

	// A forgery on the catalog subject: unsigned, then signed by another key.
	cur, seq, _ := w.Current()
	forged := []byte(`{"id":"x","type":"permission.defined","prev_sequence":0,"data":{"permission":{"slug":"evil","status":"active"},"catalog":[{"slug":"evil","status":"active"}],"version":99}}`)
	publishRaw(t, f.js, domain.CatalogSubject, forged, "")
	publishRaw(t, f.js, domain.CatalogSubject, forged, domain.NewEventSigner([]byte("not keyd")).Sign(domain.CatalogSubject, forged))
	if _, err := other.DefinePermission(ctx, domain.DefinePermission{Slug: "after", Description: "z"}); err != nil {
		t.Fatal(err)
	}
	waitCatalog(t, w, "after", domain.PermissionActive)
	c, seq2, _ := w.Current()
	if permStatus(c, "evil") != "" || seq2 <= seq || c.Version() != cur.Version()+1 {
		t.Errorf("after forgeries: %v version %d at %d, want no forged permission, version %d", c.List(), c.Version(), seq2, cur.Version()+1)
	}
	rl.mu.Lock()
	n := len(rl.got)
	rl.mu.Unlock()
	if n < 2 {
		t.Errorf("%d rejections reported, want the 2 forgeries", n)
	}
}

// TestCatalogWatcherAnswersOwnCommandsAtOnce: a define or retire run by a
// Service with the watcher is in the watcher before the command returns,
// whatever the consumer has delivered (read-your-retire on the answering
// process); and creates through that Service check the watched copy, but
// confirm a refusal with a read of the store (a permission defined through
// another process a moment ago is grantable at once).
func TestCatalogWatcherAnswersOwnCommandsAtOnce(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	w := NewCatalogWatcher(f.store)
	w.PollInterval, w.MaxAge = time.Hour, time.Hour
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	mine, other := catalogService(f, w), catalogService(f, nil)
	for i := range 20 {
		slug := fmt.Sprintf("p%d", i)
		// Defined through another process: grantable here at once.
		if _, err := other.DefinePermission(ctx, domain.DefinePermission{Slug: slug, Description: "p"}); err != nil {
			t.Fatal(err)
		}
		if _, err := mine.CreateKey(ctx, "org_1", domain.CreateKey{Name: "k", Permissions: []string{slug}}); err != nil {
			t.Fatalf("create with a permission defined a moment ago elsewhere: %v", err)
		}
		res, err := mine.RetirePermission(ctx, domain.RetirePermission{Slug: slug})
		if err != nil {
			t.Fatal(err)
		}
		if c, seq, _ := w.Current(); seq < res.Sequence || permStatus(c, slug) != domain.PermissionRetired {
			t.Fatalf("retire answered at %d; the watcher is at %d with %q", res.Sequence, seq, permStatus(c, slug))
		}
		if _, err := mine.CreateKey(ctx, "org_1", domain.CreateKey{Name: "k", Permissions: []string{slug}}); domain.ErrorCode(err) != domain.EInvalid {
			t.Fatalf("create with the permission this process just retired: %v, want invalid_argument", err)
		}
		res, err = mine.DefinePermission(ctx, domain.DefinePermission{Slug: slug + "_mine", Description: "p"})
		if err != nil {
			t.Fatal(err)
		}
		if c, seq, _ := w.Current(); seq < res.Sequence || permStatus(c, slug+"_mine") != domain.PermissionActive {
			t.Fatalf("define answered at %d; the watcher is at %d with %q", res.Sequence, seq, permStatus(c, slug+"_mine"))
		}
	}
}

// TestCatalogWatcherStaleness: a copy not confirmed within MaxAge is not
// current (callers then read the store); the poll confirms it again and
// takes what the consumer has not delivered.
func TestCatalogWatcherStaleness(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := t.Context()
	w := NewCatalogWatcher(f.store)
	w.PollInterval, w.MaxAge = time.Hour, time.Minute
	clock := time.Now()
	w.now = func() time.Time { return clock }
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := w.Current(); !ok {
		t.Fatal("not current after Start")
	}
	clock = clock.Add(2 * time.Minute)
	if _, _, ok := w.Current(); ok {
		t.Fatal("current two minutes after its last confirmation, with MaxAge one minute")
	}
	// What a poll finds on the subject, it takes (as if the consumer were
	// stuck), and the copy is current again.
	st := catalogService(f, nil)
	res, err := st.DefinePermission(ctx, domain.DefinePermission{Slug: "q", Description: "q"})
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.poll(pctx); err != nil {
		t.Fatal(err)
	}
	if c, seq, ok := w.Current(); !ok || seq < res.Sequence || permStatus(c, "q") != domain.PermissionActive {
		t.Fatalf("after a poll: %v at %d (current %v), want q at %d", c.List(), seq, ok, res.Sequence)
	}
}
