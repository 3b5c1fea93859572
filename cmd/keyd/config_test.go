package main

import (
	"testing"
	"time"

	"github.com/keyd-dev/keyd/verifier"
)

// TestLastUsedResolutionFlag: --last-used-resolution defaults to the
// verifier's default and is set by the flag or KEYD_LAST_USED_RESOLUTION,
// the flag winning.
func TestLastUsedResolutionFlag(t *testing.T) {
	t.Parallel()
	parse := func(args []string, env map[string]string) time.Duration {
		t.Helper()
		var c Config
		fs := newFlagSet("serve", &c, "last-used-resolution")
		if err := c.parse(fs, args, func(k string) string { return env[k] }); err != nil {
			t.Fatal(err)
		}
		return c.LastUsedResolution
	}
	if got := parse(nil, nil); got != verifier.DefaultLastUsedResolution {
		t.Errorf("default %s, want %s", got, verifier.DefaultLastUsedResolution)
	}
	if got := parse(nil, map[string]string{"KEYD_LAST_USED_RESOLUTION": "10s"}); got != 10*time.Second {
		t.Errorf("from the environment: %s, want 10s", got)
	}
	if got := parse([]string{"--last-used-resolution", "5m"}, map[string]string{"KEYD_LAST_USED_RESOLUTION": "10s"}); got != 5*time.Minute {
		t.Errorf("flag and environment: %s, want the flag's 5m", got)
	}
}
