package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/keyd-dev/keyd/internal/testenv"
)

const (
	testToken  = "test-admin-token-0123456789abcdef"
	testSecret = "test-deployment-secret-0123456789abcdef"
)

// TestTwoProcessesOnCluster runs the production topology without Docker:
// a three-node JetStream cluster on loopback, KEYD_EVENTS replicated three
// times, one Postgres, and two `keyd serve` OS processes. A revoke through
// one process is seen at once by that process's verifier and, as soon as
// NATS delivers it, by the other's.
func TestTwoProcessesOnCluster(t *testing.T) {
	t.Parallel()
	urls, _ := testenv.Cluster3(t)
	natsURL := strings.Join(urls, ",")
	db := testenv.PostgresURL(t)
	// Both start at the same instant, as a deployment's processes do.
	var p [2]*proc
	for i := range p {
		p[i] = launchServe(t, natsURL, db, testToken, testSecret, "--stream-replicas", "3")
	}
	for _, pr := range p {
		pr.waitReady(t)
	}
	// The R3 stream the processes just created may not have its interest on
	// every node yet; the first command must not race that.
	testenv.StreamReady(t, urls, "KEYD_EVENTS", "keyd.events.keys.ready.probe")
	a, b := p[0], p[1]

	// Each step needs the ones before it: the first that fails ends the
	// scenario.
	var secret, keyID string
	verify := func(t *testing.T, pr *proc) map[string]any {
		t.Helper()
		st, out, _ := httpDo(t, "POST", pr.HTTP+"/v1/keys/verify", testToken, map[string]any{"key": secret, "permissions": []string{"reports:read"}})
		if st != 200 {
			t.Fatalf("verify on %s: %d %v", pr.HTTP, st, out)
		}
		return out
	}
	if !t.Run("a key created through one process verifies on both", func(t *testing.T) {
		st, _, _ := httpDo(t, "PUT", b.HTTP+"/v1/permissions/reports:read", testToken, map[string]any{"description": "Read reports"})
		if st != 200 {
			t.Fatalf("define: %d", st)
		}
		st, created, _ := httpDo(t, "POST", a.HTTP+"/v1/orgs/acme/keys", testToken, map[string]any{"name": "exporter", "permissions": []string{"reports:read"}})
		if st != 201 {
			t.Fatalf("create: %d %v", st, created)
		}
		secret = created["secret"].(string)
		keyID = keyOf(created)["id"].(string)

		testenv.WaitFor(t, 10*time.Second, "the second process to verify the new key as valid", func() bool { return verify(t, b)["code"] == "valid" })
		if got := verify(t, a)["code"]; got != "valid" {
			t.Fatalf("verify on the creating process: %v", got)
		}
	}) {
		return
	}

	if !t.Run("a revoke is seen at once by the answering process, then by the other", func(t *testing.T) {
		st, rev, _ := httpDo(t, "POST", a.HTTP+"/v1/orgs/acme/keys/"+keyID+"/revoke", testToken, map[string]any{"reason": "test"})
		if st != 200 {
			t.Fatalf("revoke: %d %v", st, rev)
		}
		// Read-your-revocation on the process that answered.
		if got := verify(t, a)["code"]; got != "revoked" {
			t.Fatalf("verify right after the revoke reply on the same process: %v", got)
		}
		// The other process rejects it as soon as its consumer delivers it.
		start := time.Now()
		testenv.WaitFor(t, 10*time.Second, "the second process to see the revocation", func() bool { return verify(t, b)["code"] == "revoked" })
		t.Logf("second process saw the revocation within %s (polling)", time.Since(start))
	}) {
		return
	}

	t.Run("the stream has three replicas and one process leads the projection", func(t *testing.T) {
		nc, err := nats.Connect(natsURL)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, _ := jetstream.New(nc)
		s, err := js.Stream(context.Background(), "KEYD_EVENTS")
		if err != nil {
			t.Fatal(err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("KEYD_EVENTS replicas = %d, want 3", r)
		}
		leaders := 0
		for _, pr := range p {
			if metric(t, pr.HTTP, "keyd_projection_leader") == "1" {
				leaders++
			}
		}
		if leaders != 1 {
			t.Fatalf("%d processes lead the projection, want 1", leaders)
		}
	})
}

// metric returns the value of an unlabelled metric from /metrics.
func metric(t *testing.T, base, name string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
