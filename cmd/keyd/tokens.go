package main

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Admin token strength (finding L5 of the security review): keyd generates
// "kat_" + 64 hex characters (256 random bits, keptSecret); keyd serve
// refuses a token that is short or drawn from few characters, which a
// person typed rather than generated.
const (
	minAdminTokenLen      = 32
	minAdminTokenDistinct = 16
)

// checkAdminToken returns an error saying how to make a good admin token
// when token is shorter than minAdminTokenLen characters or uses fewer than
// minAdminTokenDistinct distinct characters.
func checkAdminToken(token string) error {
	const how = "generate one with: echo kat_$(openssl rand -hex 32)"
	if n := len([]rune(token)); n < minAdminTokenLen {
		return fmt.Errorf("the admin token (KEYD_ADMIN_TOKEN or --admin-token) is %d characters; it must be at least %d random characters: %s", n, minAdminTokenLen, how)
	}
	distinct := map[rune]bool{}
	for _, r := range token {
		distinct[r] = true
	}
	if len(distinct) < minAdminTokenDistinct {
		return fmt.Errorf("the admin token (KEYD_ADMIN_TOKEN or --admin-token) uses only %d distinct characters; a random token uses at least %d: %s", len(distinct), minAdminTokenDistinct, how)
	}
	return nil
}

// checkLoopbackListen refuses a listen address whose host is not a
// loopback address or "localhost": keyd dev's embedded NATS server has no
// authentication, so only this machine may reach it.
func checkLoopbackListen(flagName, addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--%s %q: %v", flagName, addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return errors.New("--" + flagName + " " + addr + ": keyd dev's embedded NATS server has no authentication, so it listens on loopback only; use 127.0.0.1:<port>, [::1]:<port> or localhost:<port> (for a shared NATS, run a nats-server with accounts and keyd serve)")
}
