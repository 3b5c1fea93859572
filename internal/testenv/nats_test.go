package testenv

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func createStream(t *testing.T, js jetstream.JetStream, replicas int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: "T", Subjects: []string{"t.>"}, Replicas: replicas,
	}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
}

func publish(t *testing.T, js jetstream.JetStream, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range n {
		if _, err := js.Publish(ctx, "t.x", []byte("x")); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, "T")
	if err != nil {
		t.Fatalf("stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State.Msgs
}

func TestJetStream(t *testing.T) {
	s, nc := JetStream(t)
	if !nc.IsConnected() || nc.ConnectedUrl() != s.ClientURL() {
		t.Fatalf("conn to %q, server at %q", nc.ConnectedUrl(), s.ClientURL())
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	createStream(t, js, 1)
	StreamReady(t, []string{s.ClientURL()}, "T", "t.x") // stores nothing
	publish(t, js, 3)
	if n := streamMsgs(t, js); n != 3 {
		t.Fatalf("stream has %d messages, want 3", n)
	}
}

// A server restarted on the same store dir still has the stream.
func TestStartJetStreamRestart(t *testing.T) {
	dir := t.TempDir()
	s1 := StartJetStream(t, dir)
	nc1, err := nats.Connect(s1.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js1, _ := jetstream.New(nc1)
	createStream(t, js1, 1)
	publish(t, js1, 5)
	nc1.Close()
	ShutdownServer(s1)

	s2 := StartJetStream(t, dir)
	nc2, err := nats.Connect(s2.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	js2, _ := jetstream.New(nc2)
	if n := streamMsgs(t, js2); n != 5 {
		t.Fatalf("after restart the stream has %d messages, want 5", n)
	}
}

func TestCluster3(t *testing.T) {
	start := time.Now()
	urls, servers := Cluster3(t)
	t.Logf("cluster up in %s: %v", time.Since(start).Round(time.Millisecond), urls)
	if len(urls) != 3 || len(servers) != 3 {
		t.Fatalf("got %d urls, %d servers", len(urls), len(servers))
	}
	leaders := 0
	for _, s := range servers {
		if s.JetStreamIsLeader() {
			leaders++
		}
	}
	if leaders != 1 {
		t.Fatalf("%d meta leaders, want 1", leaders)
	}
	nc, err := nats.Connect(urls[0]+","+urls[1]+","+urls[2],
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	createStream(t, js, 3)
	// A new replicated stream may answer "no response from stream" until its
	// interest has spread over the routes: wait until every node routes to it.
	StreamReady(t, urls, "T", "t.x")
	publish(t, js, 3)

	// Losing one node keeps the stream writable.
	ShutdownServer(servers[0])
	publishRetry(t, js)
	if n := streamMsgs(t, js); n < 4 {
		t.Fatalf("stream has %d messages, want at least 4", n)
	}
}

// publishRetry publishes one message, retrying while the stream is
// unreachable (no responders, timeouts) for up to 30 s.
func publishRetry(t *testing.T, js jetstream.JetStream) {
	t.Helper()
	var last error
	err := poll(30*time.Second, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, last = js.Publish(ctx, "t.x", []byte("x"))
		return last == nil || !(errors.Is(last, context.DeadlineExceeded) || errors.Is(last, nats.ErrNoResponders) || errors.Is(last, jetstream.ErrNoStreamResponse))
	})
	if err != nil || last != nil {
		t.Fatalf("publish: %v (%v)", last, err)
	}
}
