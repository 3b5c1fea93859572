package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/keyd-dev/keyd/adapters/httpapi"
	"github.com/keyd-dev/keyd/adapters/widget"
	"github.com/keyd-dev/keyd/domain"
)

// demoOrg is the organization of the widget demo page in keyd dev.
const demoOrg = "demo-org"

// startHTTP builds the HTTP API and serves it on httpLn, and the internal
// surfaces on --internal-http when given. Widget sessions ended by
// DELETE /v1/widget/sessions/{id} are shared through a JetStream bucket
// watched until bg ends. keyd dev also answers only loopback Host names and
// serves the demo page behind a one-time token (App.DemoURL).
func (a *App) startHTTP(bg context.Context, httpLn net.Listener) error {
	var internalLn net.Listener
	if a.cfg.InternalHTTP != "" {
		ln, err := listenWithFallback(a.cfg.InternalHTTP, true)
		if err != nil {
			return fmt.Errorf("--internal-http: %w", err)
		}
		internalLn = ln
		a.InternalAddr = ln.Addr().String()
	}
	closeListeners := func() {
		if internalLn != nil {
			internalLn.Close()
		}
	}
	ended, err := httpapi.StartEndedSessions(bg, a.JS, a.cfg.StreamReplicas, a.log)
	if err != nil {
		closeListeners()
		return err
	}
	a.Sessions = httpapi.NewSessions(domain.DeriveKey(a.secret, httpapi.SessionKeyLabel), time.Now)
	rate := a.cfg.RateLimit
	if rate == 0 {
		rate = -1 // --rate-limit 0: no limit
	}
	var demo *widget.DemoAccess
	if a.dev {
		if demo, err = widget.NewDemoAccess(); err != nil {
			closeListeners()
			return err
		}
		a.DemoURL = "http://" + httpLn.Addr().String() + "/widget/demo?token=" + demo.Token()
	}
	api := &httpapi.Server{
		Runner: a.Runner, Reads: a.Reads, AdminToken: a.cfg.AdminToken, Sessions: a.Sessions,
		Metrics: a.Metrics, Ready: a.ready, WidgetOrigins: a.cfg.widgetOrigins(),
		AllowLocalhostOrigins: a.dev, LoopbackHostsOnly: a.dev, Log: a.log, Verifier: a.Verifier,
		SessionRate: rate, EndedSessions: ended, InternalSurfaces: internalLn != nil,
		Extra: func(mux *http.ServeMux) {
			mux.Handle("GET /widget/keyd-api-keys.js", widget.ScriptHandler())
			if demo != nil {
				mux.Handle("GET /widget/demo", demo.Wrap(widget.DemoHandler(func(ctx context.Context) (string, string, error) {
					tok, _, err := a.Sessions.Issue(demoOrg, "demo-admin", time.Hour)
					return tok, demoOrg, err
				})))
			}
		},
	}
	a.HTTPAddr = httpLn.Addr().String()
	// Serve: the header limit (64 KiB), timeouts, error log and graceful
	// shutdown the httpapi tests and the HTTP benchmark run with. Its own
	// context, so Close stops HTTP first.
	httpCtx, stopHTTP := context.WithCancel(context.Background())
	a.stopHTTP, a.httpDone = stopHTTP, make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := api.Serve(httpCtx, httpLn); err != nil {
			a.log.Error("http server stopped", "err", err)
		}
	})
	if internalLn != nil {
		wg.Go(func() {
			if err := api.ServeInternal(httpCtx, internalLn); err != nil {
				a.log.Error("internal http server stopped", "err", err)
			}
		})
		a.log.Info("internal HTTP listener (/metrics, /readyz)", "addr", "http://"+a.InternalAddr)
	}
	go func() { wg.Wait(); close(a.httpDone) }()
	return nil
}
