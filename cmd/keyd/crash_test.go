package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/domain"
	"github.com/keyd-dev/keyd/internal/testenv"
	"github.com/keyd-dev/keyd/projections"
)

// TestProjectorCrash kills the process that writes the read models with
// SIGKILL in the middle of a burst of commands, restarts it, and checks that
// every acknowledged key is listed exactly once and that the tables equal a
// fresh rebuild from the stream.
func TestProjectorCrash(t *testing.T) {
	t.Parallel()
	ns, _ := testenv.JetStream(t)
	natsURL := ns.ClientURL()
	db := testenv.PostgresURL(t)
	p1 := startServe(t, natsURL, db, testToken, testSecret)

	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	mustOK(t, request(t, nc, "keyd.cmd.permissions.define", `{"slug":"a:b","description":"x"}`))

	// A burst of creates from 8 clients; SIGKILL after the first 150 acks.
	var (
		mu     sync.Mutex
		acked  = map[string]uint64{}
		maxSeq uint64
		wg     sync.WaitGroup
		killed = make(chan struct{})
		once   sync.Once
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				body := fmt.Sprintf(`{"name":"burst %d-%d","permissions":["a:b"]}`, w, i)
				msg, err := nc.Request("keyd.cmd.keys.crash.create", []byte(body), 2*time.Second)
				if err != nil {
					select {
					case <-killed:
						return // the process is gone: unacknowledged
					default:
						continue
					}
				}
				var r map[string]any
				if json.Unmarshal(msg.Data, &r) != nil || errCode(r) != "" {
					continue
				}
				mu.Lock()
				seq := uint64(r["sequence"].(float64))
				acked[keyOf(r)["id"].(string)] = seq
				maxSeq = max(maxSeq, seq)
				n := len(acked)
				mu.Unlock()
				if n == 150 {
					once.Do(func() { p1.Kill(syscall.SIGKILL); close(killed) })
				}
			}
		}()
	}
	wg.Wait()
	once.Do(func() { p1.Kill(syscall.SIGKILL); close(killed) })
	if len(acked) < 150 {
		t.Fatalf("only %d creates acknowledged before the kill", len(acked))
	}

	p2 := startServe(t, natsURL, db, testToken, testSecret)
	listed := map[string]int{}
	cursor := ""
	for page := 0; ; page++ {
		q := url.Values{"limit": {"100"}, "min_sequence": {fmt.Sprint(maxSeq)}}
		if cursor != "" {
			q.Set("cursor", cursor)
		}
		st, out, _ := httpDo(t, "GET", p2.HTTP+"/v1/orgs/crash/keys?"+q.Encode(), testToken, nil)
		if st != 200 {
			t.Fatalf("list: %d %v", st, out)
		}
		for _, k := range out["data"].([]any) {
			listed[k.(map[string]any)["id"].(string)]++
		}
		next, _ := out["next_cursor"].(string)
		if next == "" {
			break
		}
		cursor = next
	}
	for id := range acked {
		if listed[id] != 1 {
			t.Errorf("acknowledged key %s listed %d times", id, listed[id])
		}
	}
	for id, n := range listed {
		if n != 1 {
			t.Errorf("key %s listed %d times", id, n)
		}
	}
	t.Logf("%d keys acknowledged before the kill, %d listed after restart", len(acked), len(listed))

	// The tables equal a fresh rebuild from the stream.
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	js, _ := jetstream.New(nc)
	st, _ := js.Stream(ctx, "KEYD_EVENTS")
	info, _ := st.Info(ctx)
	testenv.WaitFor(t, 20*time.Second, "the restarted projector to reach the stream's last sequence", func() bool {
		var seq uint64
		_ = conn.QueryRow(ctx, `SELECT last_seq FROM projection_checkpoints WHERE name = 'read_models'`).Scan(&seq)
		return seq >= info.State.LastSeq
	})
	p2.Kill(syscall.SIGTERM)
	before := dumpTables(t, conn)
	if err := projections.Rebuild(ctx, mustPool(t, db), js, domain.NewEventSigner([]byte(testSecret)).PublicKey(), io.Discard); err != nil {
		t.Fatal(err)
	}
	after := dumpTables(t, conn)
	for table, rows := range before {
		if strings.Join(rows, "\n") != strings.Join(after[table], "\n") {
			t.Errorf("table %s differs from a fresh rebuild (%d rows live, %d rebuilt)", table, len(rows), len(after[table]))
		}
	}
}

// dumpTables returns every read-model row as JSON, by table, in key order.
func dumpTables(t *testing.T, conn *pgx.Conn) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for table, order := range map[string]string{
		"keys": "key_id", "audit_events": "seq", "permissions": "slug", "verification_keys": "key_id",
	} {
		rows, err := conn.Query(context.Background(), "SELECT row_to_json(t)::text FROM "+table+" t ORDER BY "+order)
		if err != nil {
			t.Fatal(err)
		}
		list, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(list)
		out[table] = list
	}
	return out
}

func mustPool(t *testing.T, url string) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}
