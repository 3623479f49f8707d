package webhook

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the webhook's Prometheus series.
type metrics struct {
	requests *prometheus.CounterVec   // endpoint, code
	duration *prometheus.HistogramVec // endpoint
	records  *prometheus.CounterVec   // endpoint, result
	warnings *prometheus.CounterVec   // endpoint, object, field, code
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "webhook", Name: "requests_total",
			Help: "Webhook POSTs by endpoint (outbound, events) and HTTP status.",
		}, []string{"endpoint", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "consentguard", Subsystem: "webhook", Name: "request_duration_seconds",
			Help:    "Time to answer a webhook POST, store writes included.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
		}, []string{"endpoint"}),
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "webhook", Name: "records_total",
			Help: "Records received, by result: a store outcome (created, replaced, merged, restricted, " +
				"tombstoned, stale, unchanged), duplicate (notification already done) or empty (no sObject).",
		}, []string{"endpoint", "result"}),
		warnings: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "webhook", Name: "warnings_total",
			Help: "Field values stored or dropped with a warning: unknown_value (counts as missing), " +
				"invalid_email, invalid_phone (identifier dropped), invalid_boolean, unversioned.",
		}, []string{"endpoint", "object", "field", "code"}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.duration = register(reg, m.duration)
		m.records = register(reg, m.records)
		m.warnings = register(reg, m.warnings)
	}
	return m
}

// register registers c, or returns the collector already registered under
// its name (a second Handler on the same registry shares the series).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err)
	}
	return c
}
