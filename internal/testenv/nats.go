package testenv

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// How long a server (or cluster) may take to come up. Generous, because
// `go test -race ./...` runs several test binaries at once on small machines.
const natsStartTimeout = 30 * time.Second

var serverSeq atomic.Int64

// JetStream starts an in-process NATS server with JetStream on a random
// loopback port, with its store in t.TempDir(), and returns it with a TCP
// client connection to it. Both are closed in t.Cleanup.
func JetStream(t testing.TB) (*server.Server, *nats.Conn) {
	t.Helper()
	s := StartJetStream(t, t.TempDir())
	nc, err := nats.Connect(s.ClientURL(), nats.Name(t.Name()))
	if err != nil {
		t.Fatalf("testenv: connect to %s: %v", s.ClientURL(), err)
	}
	t.Cleanup(nc.Close) // runs before the server's Cleanup (LIFO)
	return s, nc
}

// StartJetStream starts an in-process NATS server with JetStream storing in
// dir, on a random loopback port, and shuts it down in t.Cleanup. To restart
// on the same data, Shutdown the server (see ShutdownServer) and call
// StartJetStream again with the same dir; to keep the port as well, use
// RunServer with JetStreamOptions(dir) and Port set to the old port.
func StartJetStream(t testing.TB, dir string) *server.Server {
	t.Helper()
	return RunServer(t, JetStreamOptions(dir))
}

// JetStreamOptions returns the options StartJetStream uses: JetStream with
// store dir, 127.0.0.1, random port (-1), no signal handlers, no logging.
func JetStreamOptions(dir string) *server.Options {
	return &server.Options{
		ServerName:         fmt.Sprintf("keyd-test-%d", serverSeq.Add(1)),
		Host:               "127.0.0.1",
		Port:               -1,
		JetStream:          true,
		StoreDir:           dir,
		JetStreamMaxMemory: 256 << 20,
		JetStreamMaxStore:  1 << 30,
		NoSigs:             true,
		NoLog:              true,
	}
}

// RunServer starts a NATS server with opts, waits until it accepts
// connections (and, with JetStream, until JetStream is on), and shuts it down
// in t.Cleanup.
func RunServer(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := startServer(opts)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() { ShutdownServer(s) })
	return s
}

// ShutdownServer shuts s down and waits until it is down. It is safe to
// call more than once.
func ShutdownServer(s *server.Server) {
	s.Shutdown()
	s.WaitForShutdown()
}

func startServer(opts *server.Options) (*server.Server, error) {
	return startServerWithin(opts, natsStartTimeout)
}

// startServerWithin is startServer with its own bound on readiness.
func startServerWithin(opts *server.Options, ready time.Duration) (*server.Server, error) {
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("nats server %s: %v", opts.ServerName, err)
	}
	go s.Start()
	if !s.ReadyForConnections(ready) {
		ShutdownServer(s)
		return nil, fmt.Errorf("nats server %s not ready for connections after %s (port taken?)", opts.ServerName, ready)
	}
	if opts.JetStream {
		if err := poll(natsStartTimeout, s.JetStreamEnabled); err != nil {
			ShutdownServer(s)
			return nil, fmt.Errorf("nats server %s: JetStream not enabled: %v", opts.ServerName, err)
		}
	}
	return s, nil
}

// Cluster3 starts a 3-node JetStream cluster on loopback (cluster name
// "keyd-test", stores under t.TempDir()) and waits until it has a meta leader
// and every node is current with it. It returns the client URLs and the
// servers; all are shut down in t.Cleanup. Clients should connect with all
// URLs, nats.MaxReconnects(-1) and a short nats.ReconnectWait. A stream just
// created on the cluster may answer its first publishes and direct gets with
// "no response from stream" or "no responders" for a moment (its leader's
// interest is still spreading over the routes, its followers catching up):
// call StreamReady before using it, and retry those errors after losing a
// node.
func Cluster3(t testing.TB) (urls []string, servers []*server.Server) {
	t.Helper()
	base := t.TempDir()
	var lastErr error
	// Cluster ports must be known before the nodes start (each node lists
	// the others' routes), so they are picked free and may be taken by the
	// time a node listens: then start over with new ports.
	for attempt := 1; attempt <= 3; attempt++ {
		servers, lastErr = startCluster3(filepath.Join(base, fmt.Sprintf("try%d", attempt)))
		if lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("testenv: 3-node JetStream cluster: %v", lastErr)
	}
	t.Cleanup(func() {
		for _, s := range servers {
			ShutdownServer(s)
		}
	})
	for _, s := range servers {
		urls = append(urls, s.ClientURL())
	}
	return urls, servers
}

func startCluster3(base string) ([]*server.Server, error) {
	var ports [3]int
	var routes []string
	for i := range ports {
		p, err := freePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	id := serverSeq.Add(1)
	var servers []*server.Server
	shutdownAll := func() {
		for _, s := range servers {
			ShutdownServer(s)
		}
	}
	for i := range ports {
		o := JetStreamOptions(filepath.Join(base, fmt.Sprintf("n%d", i+1)))
		o.ServerName = fmt.Sprintf("keyd-test-c%d-n%d", id, i+1)
		o.Cluster = server.ClusterOpts{Name: "keyd-test", Host: "127.0.0.1", Port: ports[i]}
		o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
		s, err := server.NewServer(o)
		if err != nil {
			shutdownAll()
			return nil, err
		}
		go s.Start()
		servers = append(servers, s)
	}
	for _, s := range servers {
		if !s.ReadyForConnections(natsStartTimeout) {
			shutdownAll()
			return nil, fmt.Errorf("node %s not ready for connections after %s (port taken?)", s.Name(), natsStartTimeout)
		}
	}
	err := poll(natsStartTimeout, func() bool {
		leader := false
		for _, s := range servers {
			if s.JetStreamIsLeader() {
				leader = true
			}
		}
		if !leader {
			return false
		}
		for _, s := range servers {
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return true
	})
	if err != nil {
		shutdownAll()
		return nil, fmt.Errorf("no JetStream meta leader: %v", err)
	}
	return servers, nil
}

// poll calls cond every few milliseconds until it is true or timeout passes.
func poll(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for wait := time.Millisecond; ; {
		if cond() {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("timed out after " + timeout.String())
		}
		time.Sleep(wait)
		if wait < 25*time.Millisecond {
			wait *= 2
		}
	}
}
