package testenv

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestPostgresServerStopStart: data written before an immediate stop is
// there after Start, on the same URL; while stopped, connecting fails.
func TestPostgresServerStopStart(t *testing.T) {
	s := StartPostgresServer(t)
	db := s.NewDatabase(t)
	ctx := context.Background()
	exec := func(q string) error {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		conn, err := pgx.Connect(cctx, db)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(cctx, q)
		return err
	}
	if err := exec("CREATE TABLE t (x int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	s.Stop(true)
	if err := exec("SELECT 1"); err == nil {
		t.Fatal("a stopped server answered")
	}
	s.Start(t)
	if err := exec("INSERT INTO t SELECT x + 1 FROM t"); err != nil {
		t.Fatalf("after Start: %v", err)
	}
}
