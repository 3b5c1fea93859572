package testenv

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSNodes is a set of in-process JetStream servers for fault tests: one
// server, or a cluster whose nodes can each be killed and restarted on the
// same ports and store (Kill, Restart), and cut off from the others (Cut,
// Heal). Unlike Cluster3, every route goes through a Proxy of its own
// (from node i to node j), and no node advertises a reachable route
// address, so gossip cannot open a route around the proxies: cutting the
// proxies to and from a node is a network partition of that node, while its
// clients stay connected to it.
type NATSNodes struct {
	t       testing.TB
	base    string
	id      int64
	n       int
	ports   []int // client ports
	cports  []int // cluster ports
	dead    []int // advertised route ports nothing listens on
	proxies [][]*Proxy

	mu       sync.Mutex
	servers  []*server.Server // nil while a node is down
	maxStore int64
}

// StartNATSNodes starts n (1 or 3) JetStream servers on fixed free loopback
// ports (a cluster "keyd-faults" when n > 1), storing under t.TempDir(),
// each with max_file_store maxStore bytes (0: 1 GiB), and waits until the
// cluster has a meta leader that every node is current with. Everything is
// shut down in t.Cleanup.
func StartNATSNodes(t testing.TB, n int, maxStore int64) *NATSNodes {
	t.Helper()
	if maxStore <= 0 {
		maxStore = 1 << 30
	}
	c := &NATSNodes{t: t, base: t.TempDir(), id: serverSeq.Add(1), n: n, maxStore: maxStore,
		servers: make([]*server.Server, n)}
	for range n {
		c.ports = append(c.ports, mustFreePort(t))
		c.cports = append(c.cports, mustFreePort(t))
		c.dead = append(c.dead, mustFreePort(t))
	}
	if n > 1 {
		c.proxies = make([][]*Proxy, n)
		for i := range n {
			c.proxies[i] = make([]*Proxy, n)
			for j := range n {
				if i != j {
					c.proxies[i][j] = NewProxy(t, fmt.Sprintf("127.0.0.1:%d", c.cports[j]))
				}
			}
		}
	}
	t.Cleanup(func() {
		for i := range n {
			c.Kill(i)
		}
	})
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = c.start(i) }()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	c.WaitCurrent(t)
	return c
}

func mustFreePort(t testing.TB) int {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// options builds node i's options (fresh each time: a server keeps and
// changes the Options it was made with).
func (c *NATSNodes) options(i int) *server.Options {
	o := JetStreamOptions(filepath.Join(c.base, fmt.Sprintf("n%d", i+1)))
	o.ServerName = fmt.Sprintf("keyd-faults-%d-n%d", c.id, i+1)
	o.Port = c.ports[i]
	o.JetStreamMaxStore = c.maxStore
	if c.n > 1 {
		var routes []string
		for j := range c.n {
			if j != i {
				routes = append(routes, "nats://"+c.proxies[i][j].Addr())
			}
		}
		o.Cluster = server.ClusterOpts{Name: "keyd-faults", Host: "127.0.0.1", Port: c.cports[i],
			Advertise: fmt.Sprintf("127.0.0.1:%d", c.dead[i])}
		o.Routes = server.RoutesFromStr(strings.Join(routes, ","))
	}
	return o
}

// nodeReadyTimeout bounds one attempt to start a node.
const nodeReadyTimeout = 5 * time.Second

func (c *NATSNodes) start(i int) error {
	o := c.options(i)
	var s *server.Server
	var err error
	// The port was free a moment ago, or was this node's until its Kill:
	// the kernel may need a moment to release it.
	// Each attempt waits at most nodeReadyTimeout for the node (a port
	// taken meanwhile by another test's connection makes the server never
	// ready), and all attempts together at most natsStartTimeout.
	deadline := time.Now().Add(natsStartTimeout)
	for attempt := 0; ; attempt++ {
		if s, err = startServerWithin(o, nodeReadyTimeout); err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
		o = c.options(i)
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.servers[i] = s
	c.mu.Unlock()
	return nil
}

// URLs returns every node's client URL (also of nodes that are down).
func (c *NATSNodes) URLs() []string {
	var out []string
	for _, p := range c.ports {
		out = append(out, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	return out
}

// URL returns the client URLs joined with commas, as KEYD_NATS_URL takes them.
func (c *NATSNodes) URL() string { return strings.Join(c.URLs(), ",") }

// Name returns node i's server name (as stream info reports leaders).
func (c *NATSNodes) Name(i int) string { return fmt.Sprintf("keyd-faults-%d-n%d", c.id, i+1) }

// Server returns node i's running server, or nil while it is down.
func (c *NATSNodes) Server(i int) *server.Server {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.servers[i]
}

// Kill shuts node i down at once (its clients and routes see their
// connections closed; its store stays). Killing a node that is down does
// nothing.
func (c *NATSNodes) Kill(i int) {
	c.mu.Lock()
	s := c.servers[i]
	c.servers[i] = nil
	c.mu.Unlock()
	if s != nil {
		ShutdownServer(s)
	}
}

// Restart starts node i again on its ports and store, and waits until it
// accepts connections with JetStream on.
func (c *NATSNodes) Restart(t testing.TB, i int) {
	t.Helper()
	if c.Server(i) != nil {
		return
	}
	if err := c.start(i); err != nil {
		t.Fatalf("testenv: restart node %d: %v", i+1, err)
	}
}

// Cut closes every route to and from node i and keeps them closed until
// Heal. Only for a cluster.
func (c *NATSNodes) Cut(i int) {
	for j := range c.n {
		if j != i {
			c.proxies[i][j].Cut()
			c.proxies[j][i].Cut()
		}
	}
}

// Heal lets node i's routes through again.
func (c *NATSNodes) Heal(i int) {
	for j := range c.n {
		if j != i {
			c.proxies[i][j].Heal()
			c.proxies[j][i].Heal()
		}
	}
}

// SetMaxStore changes every node's max_file_store to bytes, as an operator
// who frees or adds disk space would: by restarting each running node with
// the new limit (same ports and store), and waits until they are current.
// (A configuration reload would do, but nats-server v2.15.2 reads its
// options unlocked while serving direct gets, which -race reports.)
func (c *NATSNodes) SetMaxStore(t testing.TB, bytes int64) {
	t.Helper()
	c.mu.Lock()
	c.maxStore = bytes
	c.mu.Unlock()
	for i := range c.n {
		if c.Server(i) != nil {
			c.Kill(i)
			c.Restart(t, i)
		}
	}
	c.WaitCurrent(t)
}

// WaitCurrent waits (up to 30 s) until the running nodes have a JetStream
// meta leader and every running node is current with it.
func (c *NATSNodes) WaitCurrent(t testing.TB) {
	t.Helper()
	err := poll(natsStartTimeout, func() bool {
		leader := false
		for i := range c.n {
			s := c.Server(i)
			if s == nil {
				continue
			}
			if !s.JetStreamIsCurrent() {
				return false
			}
			// The meta leader must also know every running node as a
			// usable peer (online, with JetStream and stats), or an R3
			// stream created now finds "no suitable peers for placement"
			// (err_code 10005; seen under load).
			if c.n == 1 || (s.JetStreamIsLeader() && len(s.JetStreamClusterPeers()) >= c.running()) {
				leader = true
			}
		}
		return leader
	})
	if err != nil {
		t.Fatalf("testenv: JetStream nodes not current: %v", err)
	}
}

// StreamLeader returns the index of the node that leads stream, asking
// through the running nodes, or -1 if none answers with a leader within
// timeout.
func (c *NATSNodes) StreamLeader(stream string, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for i := range c.n {
			if c.Server(i) == nil {
				continue
			}
			if l := c.askLeader(i, stream); l >= 0 {
				return l
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1
}

func (c *NATSNodes) askLeader(i int, stream string) int {
	nc, err := nats.Connect(c.URLs()[i], nats.Timeout(time.Second))
	if err != nil {
		return -1
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return -1
	}
	info := st.CachedInfo()
	if info.Cluster == nil {
		return 0
	}
	for j := range c.n {
		if info.Cluster.Leader == c.Name(j) {
			return j
		}
	}
	return -1
}

// running counts the nodes that are up.
func (c *NATSNodes) running() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, s := range c.servers {
		if s != nil {
			n++
		}
	}
	return n
}
