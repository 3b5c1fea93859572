package testworld

import (
	"context"
	"testing"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

func TestMigratedPoolHasKeydsSchema(t *testing.T) {
	pool, dsn := MigratedPool(t)
	if dsn == "" {
		t.Fatal("no database URL")
	}
	var n int
	if err := pool.QueryRow(context.Background(),
		`SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'keys'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("the migrated database has %d tables named keys, want 1", n)
	}
}

func TestEventStreamIsKeydsWithAServiceOnIt(t *testing.T) {
	ev := EventStream(t)
	if ev.Server == nil || !ev.Conn.IsConnected() {
		t.Fatal("no server or no connection")
	}
	if got := ev.Stream.CachedInfo().Config.Name; got != domain.StreamName {
		t.Fatalf("stream %q, want %q", got, domain.StreamName)
	}
	if n := ev.LastSeq(t); n != 0 {
		t.Fatalf("a new stream has last sequence %d", n)
	}
	svc := ev.Service([]byte("testworld secret"))
	if svc.Store != ev.Store || svc.Digester == nil || svc.Now == nil || svc.Rand == nil {
		t.Fatalf("the service is not wired to the stream's store: %+v", svc)
	}
	if !ev.Stream.CachedInfo().Config.DenyPurge {
		t.Fatal("the stream is not keyd's (DenyPurge off)")
	}
}
