package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"gopkg.in/yaml.v3"
)

// TestDockerCompose checks what can be checked of docker-compose.yml
// without a Docker engine: it parses; every keyd service runs a real keyd
// subcommand with flags and KEYD_* variables that keyd accepts; the NATS
// configuration files it mounts are accepted by nats-server's own parser and
// form a three-node JetStream cluster; the Dockerfile it builds exists.
func TestDockerCompose(t *testing.T) {
	t.Parallel()
	root := filepath.Join("..", "..")
	raw, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       string            `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("docker-compose.yml does not parse: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root, "Dockerfile")); err != nil {
		t.Fatalf("Dockerfile: %v", err)
	}

	// ${VAR:?message} and ${VAR:-default} are filled as compose would with
	// the variables set.
	interp := regexp.MustCompile(`\$\{([A-Z_]+)(:[-?][^}]*)?\}`)
	keydServices, natsServers := 0, 0
	envNames := map[string]bool{}
	for _, v := range flagEnv {
		envNames[v] = true
	}
	for name, svc := range doc.Services {
		switch {
		case svc.Build != "":
			keydServices++
			if svc.Build != "." {
				t.Errorf("%s: build %q, want the repository's own Dockerfile (.)", name, svc.Build)
			}
			if len(svc.Command) == 0 || svc.Command[0] != "serve" {
				t.Errorf("%s: command %v, want keyd serve", name, svc.Command)
			}
			env := map[string]string{}
			for k, v := range svc.Environment {
				if !envNames[k] {
					t.Errorf("%s: environment variable %s is not one keyd reads", name, k)
				}
				env[k] = interp.ReplaceAllString(v, "x-"+strings.Repeat("0", 40))
			}
			if env["KEYD_STREAM_REPLICAS"] != "3" {
				t.Errorf("%s: KEYD_STREAM_REPLICAS=%q, want 3", name, env["KEYD_STREAM_REPLICAS"])
			}
			// The command line and environment must parse as keyd serve's.
			var c Config
			fs := newFlagSet("serve", &c, "nats-url", "http", "database-url", "admin-token", "secret",
				"key-prefix", "stream-replicas", "verifier-max-staleness", "widget-origins", "log-level")
			fs.SetOutput(&strings.Builder{})
			if err := c.parse(fs, svc.Command[1:], func(k string) string { return env[k] }); err != nil {
				t.Errorf("%s: keyd serve rejects its configuration: %v", name, err)
			}
			if c.StreamReplicas != 3 || !strings.Contains(c.NATSURL, "nats-3") {
				t.Errorf("%s: parsed replicas %d, NATS URL %q", name, c.StreamReplicas, c.NATSURL)
			}
		case strings.HasPrefix(svc.Image, "nats:"):
			// The configuration reads its passwords from the environment
			// compose gives the server. (os.Setenv, as t.Setenv refuses a
			// parallel test: only this test and the TestNATSLayout* tests, which are
			// not parallel and so never run beside it, read these.)
			for k, v := range svc.Environment {
				prev, had := os.LookupEnv(k)
				os.Setenv(k, interp.ReplaceAllString(v, "x"+strings.Repeat("0", 40)))
				t.Cleanup(func() {
					if had {
						os.Setenv(k, prev)
					} else {
						os.Unsetenv(k)
					}
				})
			}
			for _, v := range svc.Volumes {
				host, container, ok := strings.Cut(v, ":")
				// Only the file the server is started with (-c); the
				// others are its includes.
				if !ok || !strings.HasSuffix(host, ".conf") || len(svc.Command) < 2 || strings.TrimSuffix(container, ":ro") != svc.Command[1] {
					continue
				}
				natsServers++
				opts, err := server.ProcessConfigFile(filepath.Join(root, host))
				if err != nil {
					t.Errorf("%s: nats-server rejects %s: %v", name, host, err)
					continue
				}
				if !opts.JetStream || opts.Cluster.Name != "keyd" || len(opts.Routes) != 3 || opts.ServerName != name {
					t.Errorf("%s: %s: jetstream=%v cluster=%q routes=%d server_name=%q", name, host, opts.JetStream, opts.Cluster.Name, len(opts.Routes), opts.ServerName)
				}
			}
		}
	}
	if keydServices != 2 || natsServers != 3 {
		t.Fatalf("found %d keyd services and %d NATS servers, want 2 and 3", keydServices, natsServers)
	}
}
