package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// noticeSeen is one notice event as the test saw it: its stream sequence,
// its envelope, and when a plain NATS subscriber received it.
type noticeSeen struct {
	Seq        uint64
	Type       string
	OccurredAt time.Time
	Version    float64
	ExpiresAt  string
	Received   time.Time
}

// TestNoticesUnderProcessKills runs three `keyd serve` OS processes on one
// JetStream server and one Postgres, gives a key an expiry a few seconds
// away (the organization's expiry_notice_seconds shorter still), and
// SIGKILLs the process that leads the projection, and so runs the notice
// scheduler, at the very moment the key expires. key.expiring and
// key.expired must each appear exactly once, within 5 s of their moments,
// with the key's version unchanged; restarting the killed process adds
// nothing. Then every process stops while a second key's moments pass, and
// the first process to start again appends both of its notices, expiring
// first, within 5 s.
func TestNoticesUnderProcessKills(t *testing.T) {
	t.Parallel()
	ns, _ := testenv.JetStream(t)
	natsURL := ns.ClientURL()
	db := testenv.PostgresURL(t)
	var procs []*proc
	for range 3 {
		procs = append(procs, launchServe(t, natsURL, db, testToken, testSecret))
	}
	for _, p := range procs {
		p.waitReady(t)
	}
	const org = "notices"
	const notice = 3 * time.Second

	// Every event of the organization's keys, as a plain subscriber gets it.
	nc := connect(t, natsURL)
	var (
		mu   sync.Mutex
		seen = map[string][]noticeSeen{} // by key id
	)
	sub, err := nc.Subscribe("keyd.events.keys."+org+".>", func(m *nats.Msg) {
		now := time.Now()
		var ev struct {
			Type       string    `json:"type"`
			KeyID      string    `json:"key_id"`
			OccurredAt time.Time `json:"occurred_at"`
			Data       struct {
				ExpiresAt string `json:"expires_at"`
				Key       struct {
					Version float64 `json:"version"`
				} `json:"key"`
			} `json:"data"`
		}
		if json.Unmarshal(m.Data, &ev) != nil || (ev.Type != "key.expiring" && ev.Type != "key.expired") {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		seen[ev.KeyID] = append(seen[ev.KeyID], noticeSeen{Type: ev.Type, OccurredAt: ev.OccurredAt, Version: ev.Data.Key.Version, ExpiresAt: ev.Data.ExpiresAt, Received: now})
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	admin := func(p *proc, method, path string, body any) map[string]any {
		t.Helper()
		st, out, _ := httpDo(t, method, p.HTTP+path, testToken, body)
		if st/100 != 2 {
			t.Fatalf("%s %s: %d %v", method, path, st, out)
		}
		return out
	}
	admin(procs[0], "PUT", "/v1/orgs/"+org+"/policy", map[string]any{"expiry_notice_seconds": int(notice / time.Second)})
	// createExpiring creates a key that expires in d (whole milliseconds,
	// as keyd keeps them) and returns its id and expiry.
	createExpiring := func(p *proc, name string, d time.Duration) (string, time.Time) {
		t.Helper()
		exp := time.Now().Add(d).UTC().Truncate(time.Millisecond)
		out := admin(p, "POST", "/v1/orgs/"+org+"/keys", map[string]any{"name": name, "expires_at": exp.Format(time.RFC3339Nano)})
		k := keyOf(out)
		if k["version"] != 1.0 {
			t.Fatalf("created key: %v", out)
		}
		return k["id"].(string), exp
	}
	leader := func() int {
		t.Helper()
		for i, p := range procs {
			select {
			case <-p.done:
				continue
			default:
			}
			if metric(t, p.HTTP, "keyd_projection_leader") == "1" {
				return i
			}
		}
		return -1
	}
	// stream returns the key's notice events as the stream holds them.
	stream := func(keyID string) []noticeSeen {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		js, _ := jetstream.New(nc)
		c, err := js.OrderedConsumer(ctx, "KEYD_EVENTS", jetstream.OrderedConsumerConfig{FilterSubjects: []string{"keyd.events.keys." + org + "." + keyID}})
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []noticeSeen
		for n := info.NumPending; n > 0; n-- {
			m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatal(err)
			}
			md, _ := m.Metadata()
			var ev struct {
				Type       string    `json:"type"`
				OccurredAt time.Time `json:"occurred_at"`
			}
			_ = json.Unmarshal(m.Data(), &ev)
			out = append(out, noticeSeen{Seq: md.Sequence.Stream, Type: ev.Type, OccurredAt: ev.OccurredAt})
		}
		return out
	}
	// check asserts key.expiring then key.expired, once each, within 5 s
	// of their moments (expiring: exp - notice; expired: exp), with the
	// key's version unchanged (1). A moment that passed while no keyd ran
	// counts from started (when a keyd launched: no notice before it) and
	// from serving (when it answered /readyz: within 5 s of that).
	check := func(t *testing.T, keyID string, exp time.Time, started, serving time.Time) {
		t.Helper()
		var types []string
		for _, e := range stream(keyID) {
			types = append(types, e.Type)
		}
		if got := strings.Join(types, " "); got != "key.created key.expiring key.expired" {
			t.Fatalf("the key's events in the stream: %s; want key.created key.expiring key.expired", got)
		}
		mu.Lock()
		got := append([]noticeSeen(nil), seen[keyID]...)
		mu.Unlock()
		if len(got) != 2 || got[0].Type != "key.expiring" || got[1].Type != "key.expired" {
			t.Fatalf("notices delivered: %+v", got)
		}
		for _, n := range got {
			moment := exp
			if n.Type == "key.expiring" {
				moment = exp.Add(-notice)
			}
			if lag := n.Received.Sub(later(moment, serving)); lag > 5*time.Second || n.OccurredAt.Before(later(moment, started)) {
				t.Errorf("%s occurred at %s, received %s after its moment %s; want within 5 s, not before",
					n.Type, n.OccurredAt.Format(time.StampMilli), lag, moment.Format(time.StampMilli))
			} else {
				t.Logf("%s received %s after its moment", n.Type, lag.Round(time.Millisecond))
			}
			if n.Version != 1 || n.ExpiresAt != exp.Format(time.RFC3339Nano) {
				t.Errorf("%s carries version %v and expires_at %s; want 1 and %s", n.Type, n.Version, n.ExpiresAt, exp.Format(time.RFC3339Nano))
			}
		}
	}

	if !t.Run("the leader is killed at the moment of expiry", func(t *testing.T) {
		keyID, exp := createExpiring(procs[1], "expiring soon", 6*time.Second)
		time.Sleep(time.Until(exp)) // the moment
		l := leader()
		if l < 0 {
			t.Fatal("no process leads the projection")
		}
		procs[l].Kill(syscall.SIGKILL)
		t.Logf("killed the leader (process %d) at the moment of expiry, %s late", l, time.Since(exp).Round(time.Millisecond))

		testenv.WaitFor(t, 6*time.Second, "both notices of the key", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(seen[keyID]) >= 2
		})
		if nl := leader(); nl < 0 || nl == l {
			t.Errorf("after the kill the leader is process %d", nl)
		}
		// The killed process comes back; it finds both notices sent.
		procs[l] = startServe(t, natsURL, db, testToken, testSecret)
		time.Sleep(3 * time.Second) // three scan intervals of every process: a double would show
		check(t, keyID, exp, time.Time{}, time.Time{})
		k := admin(procs[l], "GET", "/v1/orgs/"+org+"/keys/"+keyID, nil)
		if k["version"] != 1.0 || k["status"] != "expired" {
			t.Errorf("the key after its notices: %v", k)
		}
		h := admin(procs[l], "GET", "/v1/orgs/"+org+"/keys/"+keyID+"/history", nil)
		var types []string
		for _, e := range h["data"].([]any) {
			types = append(types, fmt.Sprint(e.(map[string]any)["type"]))
		}
		if got := strings.Join(types, " "); got != "key.created key.expiring key.expired" {
			t.Errorf("the key's history: %s", got)
		}
	}) {
		return
	}

	t.Run("moments pass while no keyd runs", func(t *testing.T) {
		var alive *proc
		for _, p := range procs {
			select {
			case <-p.done:
			default:
				alive = p
			}
		}
		keyID, exp := createExpiring(alive, "expires while keyd is down", notice+2*time.Second)
		for _, p := range procs {
			p.Kill(syscall.SIGKILL)
		}
		mu.Lock()
		early := len(seen[keyID])
		mu.Unlock()
		if early != 0 {
			t.Fatalf("a notice of the second key before its moment: %+v", seen[keyID])
		}
		time.Sleep(time.Until(exp) + time.Second) // both moments pass with no keyd running
		start := time.Now()
		procs[0] = startServe(t, natsURL, db, testToken, testSecret)
		serving := time.Now()
		testenv.WaitFor(t, 10*time.Second, "both notices of the second key", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(seen[keyID]) >= 2
		})
		t.Logf("both notices %s after the first keyd started again", time.Since(start).Round(time.Millisecond))
		time.Sleep(2 * time.Second)
		check(t, keyID, exp, start, serving)
	})
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
