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
}

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
	}
	r.MustRegister(m.Commands, m.CommandSeconds, m.HTTPRequests, m.HTTPSeconds, m.Verifications,
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

// Gauge registers a gauge whose value is read from f at scrape time.
func (m *Metrics) Gauge(name, help string, f func() float64) {
	m.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Handler serves the registry in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.Registry, promhttp.HandlerOpts{})
}
