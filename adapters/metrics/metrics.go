// Package metrics holds keyd's Prometheus metrics. Everything is registered
// on one registry per process (not the global one), served at /metrics in
// the Prometheus text format.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are the instruments one keyd process updates.
type Metrics struct {
	Registry *prometheus.Registry

	// Commands counts commands by type (create, revoke, ...) and outcome
	// (ok or an error code).
	Commands *prometheus.CounterVec
	// CommandSeconds is command latency by type.
	CommandSeconds *prometheus.HistogramVec
	// HTTPRequests counts requests by route pattern, method and status.
	HTTPRequests *prometheus.CounterVec
	// HTTPSeconds is request latency by route pattern and method.
	HTTPSeconds *prometheus.HistogramVec
	// Verifications counts verifications by outcome code.
	Verifications *prometheus.CounterVec
	// CommandsRefused counts NATS commands refused before they run, by
	// reason (RefusedReplySubject, RefusedNoReply).
	CommandsRefused *prometheus.CounterVec
	// AuthFailures counts failed HTTP authentications, by reason
	// (AuthMissing, AuthMalformed, AuthInvalid, AuthExpired, AuthEnded).
	AuthFailures *prometheus.CounterVec
	// RateLimited counts HTTP requests refused with rate_limited, by the
	// limit that refused them (LimitAuthFailures, LimitToken, LimitWaits).
	RateLimited *prometheus.CounterVec
}

// Reasons of keyd_auth_failures_total.
const (
	AuthMissing   = "missing"   // no Authorization header
	AuthMalformed = "malformed" // not "Bearer <token>"
	AuthInvalid   = "invalid"   // neither the admin token nor a valid session
	AuthExpired   = "expired"   // a widget session past its expiry
	AuthEnded     = "ended"     // a widget session ended by DELETE /v1/widget/sessions/{id}
)

// Limits of keyd_http_rate_limited_total.
const (
	LimitAuthFailures = "auth_failures" // too many failed authentications from one client address
	LimitToken        = "token"         // too many requests for one widget session (--rate-limit)
	LimitWaits        = "waits"         // too many min_sequence waits at once for one token
)

// Reasons of keyd_commands_refused_total.
const (
	// RefusedReplySubject: the reply subject is not an inbox keyd may answer
	// on (finding C1: a reply into keyd.events.> would land in the stream).
	RefusedReplySubject = "reply_subject"
	// RefusedNoReply: a publish without a reply subject (nobody to answer).
	RefusedNoReply = "no_reply"
)

// New registers keyd's metrics (and the Go and process collectors) on a
// fresh registry.
func New() *Metrics {
	r := prometheus.NewRegistry()
	m := &Metrics{
		Registry: r,
		Commands: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_commands_total", Help: "Commands handled, by type and outcome (ok or an error code).",
		}, []string{"type", "outcome"}),
		CommandSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyd_command_duration_seconds", Help: "Command latency, by type.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"type"}),
		HTTPRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_http_requests_total", Help: "HTTP requests, by route, method and status.",
		}, []string{"route", "method", "status"}),
		HTTPSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "keyd_http_request_duration_seconds", Help: "HTTP request latency, by route and method.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"route", "method"}),
		Verifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_verifications_total", Help: "Key verifications, by outcome code.",
		}, []string{"code"}),
		CommandsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_commands_refused_total", Help: "NATS commands refused without being run, by reason (reply_subject: not an inbox; no_reply: no reply subject).",
		}, []string{"reason"}),
		AuthFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_auth_failures_total", Help: "Failed HTTP authentications, by reason (missing, malformed, invalid, expired, ended).",
		}, []string{"reason"}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keyd_http_rate_limited_total", Help: "HTTP requests answered rate_limited (429), by limit (auth_failures, token, waits).",
		}, []string{"limit"}),
	}
	for _, reason := range []string{AuthMissing, AuthMalformed, AuthInvalid, AuthExpired, AuthEnded} {
		m.AuthFailures.WithLabelValues(reason)
	}
	for _, limit := range []string{LimitAuthFailures, LimitToken, LimitWaits} {
		m.RateLimited.WithLabelValues(limit)
	}
	// Every reason is exported from the start, at 0, so an alert on a rise
	// has a series to compare with.
	for _, reason := range []string{RefusedReplySubject, RefusedNoReply} {
		m.CommandsRefused.WithLabelValues(reason)
	}
	r.MustRegister(m.Commands, m.CommandSeconds, m.HTTPRequests, m.HTTPSeconds, m.Verifications, m.CommandsRefused, m.AuthFailures, m.RateLimited,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// ObserveCommand records one command's outcome ("ok" or an error code) and
// latency.
func (m *Metrics) ObserveCommand(typ, outcome string, d time.Duration) {
	if m == nil {
		return
	}
	m.Commands.WithLabelValues(typ, outcome).Inc()
	m.CommandSeconds.WithLabelValues(typ).Observe(d.Seconds())
}

// RefuseCommand counts one NATS command refused for reason.
func (m *Metrics) RefuseCommand(reason string) {
	if m == nil {
		return
	}
	m.CommandsRefused.WithLabelValues(reason).Inc()
}

// FailAuth counts one failed HTTP authentication for reason.
func (m *Metrics) FailAuth(reason string) {
	if m == nil {
		return
	}
	m.AuthFailures.WithLabelValues(reason).Inc()
}

// Limit counts one HTTP request refused by limit.
func (m *Metrics) Limit(limit string) {
	if m == nil {
		return
	}
	m.RateLimited.WithLabelValues(limit).Inc()
}

// Gauge registers a gauge whose value is read from f at scrape time.
func (m *Metrics) Gauge(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
