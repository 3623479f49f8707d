package httpapi

import (
	"errors"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/consentguard/consentguard/guard"
	"github.com/prometheus/client_golang/prometheus"
)

// reasons lists the reason codes in a fixed order for the decision
// counters.
var reasons = [...]guard.Reason{
	guard.ReasonGranted, guard.ReasonDenied, guard.ReasonPending, guard.ReasonMissing,
	guard.ReasonStorageDenied, guard.ReasonUnknownContact, guard.ReasonStoreUnavailable,
	guard.ReasonInvalidIdentifier,
}

func reasonIndex(r guard.Reason) int {
	for i := range reasons {
		if reasons[i] == r {
			return i
		}
	}
	return -1
}

// metrics are the handler's Prometheus collectors. The children used per
// request are resolved once and cached, so a request costs a map lookup
// and two atomic adds, not a label hash. The map is copied on write and
// read without a lock: it only grows, by route × method × status.
type metrics struct {
	requests  *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	decisions *prometheus.CounterVec
	byReason  [guard.NumChannels][len(reasons)]prometheus.Counter

	mu       sync.Mutex // serialises writers of children
	children atomic.Pointer[map[routeKey]routeMetrics]
}

type routeKey struct {
	method, route string
	status        int
}

type routeMetrics struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests by route, method and status.",
		}, []string{"route", "method", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "consentguard", Subsystem: "http", Name: "request_duration_seconds",
			Help:    "HTTP request latency by route and method.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"route", "method"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "http", Name: "decisions_total",
			Help: "Consent decisions answered over HTTP by channel and reason.",
		}, []string{"channel", "reason"}),
	}
	m.children.Store(&map[routeKey]routeMetrics{})
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.latency = register(reg, m.latency)
		m.decisions = register(reg, m.decisions)
	}
	for _, ch := range guard.Channels {
		for i, r := range reasons {
			m.byReason[ch][i] = m.decisions.WithLabelValues(ch.String(), string(r))
		}
	}
	return m
}

// register registers c, or reuses the collector already registered under
// the same description (a second handler on the same registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
		panic("httpapi: registering metrics: " + err.Error())
	}
	return c
}

// decided counts one decision.
func (m *metrics) decided(ch guard.Channel, r guard.Reason) {
	if int(ch) >= guard.NumChannels {
		return
	}
	if i := reasonIndex(r); i >= 0 {
		m.byReason[ch][i].Inc()
	}
}

// observe counts one request. route is the matched pattern ("" for no
// route); method is bounded to the standard ones.
func (m *metrics) observe(method, route string, status int, seconds float64) {
	k := routeKey{method: boundMethod(method), route: route, status: status}
	if k.route == "" {
		k.route = "unmatched"
	}
	rm, ok := (*m.children.Load())[k]
	if !ok {
		rm = m.child(k)
	}
	rm.count.Inc()
	rm.latency.Observe(seconds)
}

// child resolves and caches the collectors of a new route key.
func (m *metrics) child(k routeKey) routeMetrics {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := *m.children.Load()
	if rm, ok := old[k]; ok {
		return rm
	}
	rm := routeMetrics{
		count:   m.requests.WithLabelValues(k.route, k.method, strconv.Itoa(k.status)),
		latency: m.latency.WithLabelValues(k.route, k.method),
	}
	next := make(map[routeKey]routeMetrics, len(old)+1)
	for kk, v := range old {
		next[kk] = v
	}
	next[k] = rm
	m.children.Store(&next)
	return rm
}

func boundMethod(m string) string {
	switch m {
	case "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS":
		return m
	}
	return "other"
}
