package testenv

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestNATSNodesKillRestartCutHeal: a stream on the 3 nodes keeps its data
// through a node's kill and restart on the same port and store; a cut node
// loses its routes (its clients cannot publish to an R3 stream that needs a
// quorum) until healed.
func TestNATSNodesKillRestartCutHeal(t *testing.T) {
	c := StartNATSNodes(t, 3, 0)
	nc, err := nats.Connect(c.URL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	StreamReady(t, c.URLs(), "T", "t.x")
	publish := func(js jetstream.JetStream) error {
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := js.Publish(pctx, "t.x", []byte("x"))
		return err
	}
	if err := publish(js); err != nil {
		t.Fatal(err)
	}

	leader := c.StreamLeader("T", 10*time.Second)
	if leader < 0 {
		t.Fatal("no stream leader")
	}
	c.Kill(leader)
	if c.Server(leader) != nil {
		t.Fatal("Server of a killed node is not nil")
	}
	WaitFor(t, 30*time.Second, "a new stream leader", func() bool {
		l := c.StreamLeader("T", time.Second)
		return l >= 0 && l != leader
	})
	c.Restart(t, leader)
	c.WaitCurrent(t)
	StreamReady(t, c.URLs(), "T", "t.x")

	// Cut a node: a client connected only to it cannot publish.
	victim := (c.StreamLeader("T", 10*time.Second) + 1) % 3
	only, err := nats.Connect(c.URLs()[victim])
	if err != nil {
		t.Fatal(err)
	}
	defer only.Close()
	ojs, _ := jetstream.New(only)
	c.Cut(victim)
	if err := publish(ojs); err == nil {
		t.Fatal("a publish through a cut node was stored")
	}
	c.Heal(victim)
	WaitFor(t, 30*time.Second, "a publish through the healed node", func() bool { return publish(ojs) == nil })
	st, _ := js.Stream(ctx, "T")
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs < 2 {
		t.Fatalf("stream has %d messages, want ≥ 2", info.State.Msgs)
	}
}

// TestNATSNodesMaxStore: a publish that does not fit max_file_store is
// refused, and fits once SetMaxStore raises it.
func TestNATSNodesMaxStore(t *testing.T) {
	c := StartNATSNodes(t, 1, 64<<10)
	nc, err := nats.Connect(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 8<<10)
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		_, full = js.Publish(ctx, "t.x", big)
	}
	var apiErr *jetstream.APIError
	if !errors.As(full, &apiErr) {
		t.Fatalf("a full store answered %v, want an API error", full)
	}
	t.Logf("full: %v (code %d, err_code %d)", apiErr, apiErr.Code, apiErr.ErrorCode)
	c.SetMaxStore(t, 1<<30)
	if _, err := js.Publish(ctx, "t.x", big); err != nil {
		t.Fatalf("after SetMaxStore: %v", err)
	}
}
