package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keyd-dev/keyd/internal/testenv"
)

// rawStatus sends one raw HTTP/1.1 GET of path with an extra header of n
// bytes and returns the status code of the reply.
func rawStatus(t *testing.T, addr, path string, n int) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		// The server may answer and close before it has read everything.
		_, _ = fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: %s\r\nConnection: close\r\n\r\n", path, strings.Repeat("a", n))
	}()
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the reply to a %d-byte header: %v", n, err)
	}
	res.Body.Close()
	return res.StatusCode
}

// getBody GETs url with the header pairs and returns the status and body.
func getBody(t *testing.T, c *http.Client, url string, hdr ...string) (int, string, http.Header) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

// TestDevHTTPSurfaces runs the real keyd dev wiring and checks the HTTP
// findings of the security review against it: M3 (request headers over
// 64 KiB are 431: the binary used to build its own http.Server with Go's
// 1 MiB default), L2 (--internal-http takes /metrics and the detailed
// /readyz off the API listener), L3 (Host names other than loopback are
// 403; the demo page opens only through the printed one-time URL), L4
// (DELETE /v1/widget/sessions/{id} through the JetStream bucket), M4
// (--rate-limit per widget session) and L5 (the generated admin token).
func TestDevHTTPSurfaces(t *testing.T) {
	t.Parallel()
	data := t.TempDir()
	r := MustStart(t, nil, append(devArgs(data, testenv.PostgresURL(t)), "--internal-http", "127.0.0.1:0")...)
	a := r.App
	base := "http://" + a.HTTPAddr
	plain := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	token := strings.TrimSpace(readFile(t, filepath.Join(data, "admin-token")))

	t.Run("M3 header limit", func(t *testing.T) {
		if got := rawStatus(t, a.HTTPAddr, "/healthz", 100<<10); got != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("a 100 KiB header: status %d, want 431", got)
		}
		if got := rawStatus(t, a.HTTPAddr, "/healthz", 32<<10); got != 200 {
			t.Errorf("a 32 KiB header: status %d, want 200", got)
		}
	})

	t.Run("L5 generated admin token", func(t *testing.T) {
		if !regexp.MustCompile(`^kat_[0-9a-f]{64}$`).MatchString(token) {
			t.Errorf("generated admin token %q is not kat_ + 64 hex characters", token)
		}
		if err := checkAdminToken(token); err != nil {
			t.Errorf("keyd serve would refuse keyd dev's own token: %v", err)
		}
	})

	t.Run("L2 internal listener", func(t *testing.T) {
		if a.InternalAddr == "" {
			t.Fatal("no internal listener")
		}
		in := "http://" + a.InternalAddr
		if st, _, _ := getBody(t, plain, base+"/metrics"); st != 404 {
			t.Errorf("public /metrics: %d, want 404", st)
		}
		if st, body, _ := getBody(t, plain, base+"/readyz"); st != 200 || strings.TrimSpace(body) != `{"status":"ok"}` {
			t.Errorf("public /readyz: %d %s, want 200 {\"status\":\"ok\"} only", st, body)
		}
		if st, body, _ := getBody(t, plain, in+"/metrics"); st != 200 || !strings.Contains(body, "keyd_auth_failures_total") || !strings.Contains(body, "keyd_verifier_keys") {
			t.Errorf("internal /metrics: %d, lacks keyd_auth_failures_total or keyd_verifier_keys", st)
		}
		if st, body, _ := getBody(t, plain, in+"/readyz"); st != 200 || !strings.Contains(body, `"projection"`) {
			t.Errorf("internal /readyz: %d %s, want the detail", st, body)
		}
	})

	t.Run("L3 Host check and demo token", func(t *testing.T) {
		st, body, _ := getBody(t, plain, base+"/v1/permissions", "Host", "attacker.example:"+port(a.HTTPAddr), "Authorization", "Bearer "+token)
		if st != 403 || !strings.Contains(body, "permission_denied") {
			t.Errorf("Host attacker.example: %d %s, want 403 permission_denied", st, body)
		}
		if st, _, _ := getBody(t, plain, base+"/v1/permissions", "Host", "localhost:"+port(a.HTTPAddr), "Authorization", "Bearer "+token); st != 200 {
			t.Errorf("Host localhost: %d", st)
		}
		if !strings.Contains(r.Stdout.String(), a.DemoURL) || !strings.Contains(a.DemoURL, "/widget/demo?token=") {
			t.Fatalf("the printed output lacks the demo URL with its token %q:\n%s", a.DemoURL, r.Stdout)
		}
		for _, u := range []string{base + "/widget/demo", base + "/widget/demo?session=json", base + "/widget/demo?token=0123456789abcdef0123456789abcdef"} {
			if st, body, _ := getBody(t, plain, u); st != 403 || strings.Contains(body, "kws_") {
				t.Errorf("GET %s without the one-time token: %d, want 403 and no session", u, st)
			}
		}
		jar, _ := cookiejar.New(nil)
		browser := &http.Client{Jar: jar}
		st, body, _ = getBody(t, browser, a.DemoURL)
		if st != 200 || !strings.Contains(body, `session-token="kws_`) {
			t.Fatalf("the printed demo URL: %d, want the page with a session", st)
		}
		if st, body, _ := getBody(t, browser, base+"/widget/demo?session=json"); st != 200 || !strings.Contains(body, `"token":"kws_`) {
			t.Errorf("the page's session refresh with its cookie: %d %s", st, body)
		}
		if st, _, _ := getBody(t, plain, a.DemoURL); st != 403 {
			t.Errorf("the one-time URL a second time, in another browser: %d, want 403", st)
		}
	})

	t.Run("L4 end a session, M4 rate limit", func(t *testing.T) {
		st, sess, _ := httpDo(t, "POST", base+"/v1/widget/sessions", token, map[string]any{"org_id": "org_a", "user_id": "u", "permissions": []string{}})
		id, _ := sess["id"].(string)
		tok, _ := sess["token"].(string)
		if st != 200 || id == "" || tok == "" {
			t.Fatalf("issue: %d %v", st, sess)
		}
		limited := 0
		var retryAfter string
		for range 80 {
			st, _, h := httpDo(t, "GET", base+"/v1/widget/session", tok, nil)
			if st == http.StatusTooManyRequests {
				limited++
				retryAfter = h.Get("Retry-After")
			}
		}
		if limited == 0 || retryAfter == "" {
			t.Errorf("80 requests of one session at once: %d rate_limited (Retry-After %q); the default --rate-limit is 50 a second", limited, retryAfter)
		}
		time.Sleep(1100 * time.Millisecond) // the bucket refills
		if st, _, _ := httpDo(t, "DELETE", base+"/v1/widget/sessions/"+id, token, nil); st != 200 {
			t.Fatalf("DELETE the session: %d", st)
		}
		if st, body, _ := httpDo(t, "GET", base+"/v1/widget/session", tok, nil); st != 401 {
			t.Errorf("the ended session: %d %v, want 401", st, body)
		}
	})
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// TestServeRefusesWeakAdminTokens (finding L5: keyd serve took any admin
// token of 16 characters): shorter than 32 characters or fewer than 16
// distinct ones is refused before keyd connects anywhere; a generated one
// passes (and then fails on the unreachable NATS of this test).
func TestServeRefusesWeakAdminTokens(t *testing.T) {
	t.Parallel()
	secret := strings.Repeat("s3cr3t-", 6)
	for _, c := range []struct{ token, want string }{
		{"kat_serve_token_0123", "at least 32"},
		{strings.Repeat("ab", 20), "distinct"},
		{"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "distinct"},
		{"kat_5f0c1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7", "NATS"},
	} {
		env := map[string]string{"KEYD_ADMIN_TOKEN": c.token, "KEYD_SECRET": secret}
		m := NewMain(io.Discard, io.Discard, func(k string) string { return env[k] })
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := m.Run(ctx, []string{"serve", "--http", "127.0.0.1:0", "--nats-url", "nats://127.0.0.1:1"})
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("token %q: %v; want an error mentioning %q", c.token, err, c.want)
		}
		if err != nil && c.want != "NATS" && strings.Contains(err.Error(), c.token) {
			t.Errorf("the error prints the token: %v", err)
		}
	}
}

// TestDevNATSListensOnLoopbackOnly (findings H2, L3: keyd dev's NATS has
// no authentication): a --nats-listen that is not a loopback address is
// refused before anything starts.
func TestDevNATSListensOnLoopbackOnly(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:4222", "[::]:0", "example.com:4222"} {
		data := t.TempDir()
		m := NewMain(io.Discard, io.Discard, func(string) string { return "" })
		err := m.Run(context.Background(), []string{"dev", "--data", data, "--nats-listen", addr, "--http", "127.0.0.1:0"})
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("--nats-listen %s: %v; want an error about loopback", addr, err)
		}
		if _, err := os.Stat(filepath.Join(data, "nats")); err == nil {
			t.Errorf("--nats-listen %s: the NATS store was created before the refusal", addr)
		}
	}
	for _, addr := range []string{"127.0.0.1:4222", "localhost:4222", "[::1]:4222", "127.0.0.2:1"} {
		if err := checkLoopbackListen("nats-listen", addr); err != nil {
			t.Errorf("%s: %v", addr, err)
		}
	}
}
