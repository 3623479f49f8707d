package webhook

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

var testHashKey = []byte("webhook-test-hash-key-0123456789")

// observedStore is the real cache.Store with a record of the calls the
// handler made, so tests can tell "acked without Apply" from "applied".
type observedStore struct {
	*cache.Store
	mu         sync.Mutex
	applies    int
	applied    int // updates passed to Apply
	remembered []string
}

func (s *observedStore) Apply(ctx context.Context, ups []guard.Update) ([]guard.Outcome, error) {
	s.mu.Lock()
	s.applies++
	s.applied += len(ups)
	s.mu.Unlock()
	return s.Store.Apply(ctx, ups)
}

func (s *observedStore) Remember(ctx context.Context, keys []string, ttl time.Duration) error {
	err := s.Store.Remember(ctx, keys, ttl)
	if err == nil {
		s.mu.Lock()
		s.remembered = append(s.remembered, keys...)
		s.mu.Unlock()
	}
	return err
}

func (s *observedStore) counts() (applies, applied, remembered int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applies, s.applied, len(s.remembered)
}

// syncBuffer is a log sink safe for concurrent handlers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// env is one webhook handler over a real redis-server, served on a
// loopback listener.
type env struct {
	redis *redistest.Server
	store *observedStore
	guard *guard.Guard
	reg   *prometheus.Registry
	logs  *syncBuffer
	srv   *httptest.Server
	clock time.Time
}

var testNow = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func newEnv(tb testing.TB, opts Options) *env {
	tb.Helper()
	r := redistest.Start(tb)
	st := cache.New(r.Client(tb), cache.Options{HashKey: testHashKey, Vocabulary: opts.Vocabulary})
	if err := st.Init(context.Background()); err != nil {
		tb.Fatal(err)
	}
	e := &env{redis: r, store: &observedStore{Store: st}, reg: prometheus.NewRegistry(), logs: &syncBuffer{}, clock: testNow}
	if opts.Token == "" {
		opts.Token = testToken
	}
	if opts.OrgIDs == nil {
		opts.OrgIDs = []string{testOrg15}
	}
	if opts.Clock == nil {
		opts.Clock = func() time.Time { return e.clock }
	}
	opts.Logger = slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Registerer = e.reg
	e.srv = httptest.NewServer(New(e.store, opts))
	tb.Cleanup(e.srv.Close)
	e.guard = guard.New(st, guard.Options{Vocabulary: opts.Vocabulary, Timeout: 5 * time.Second})
	return e
}

// post sends a body to path and returns status, content type and body.
func (e *env) post(tb testing.TB, path string, body []byte, hdr ...string) (int, string, []byte) {
	tb.Helper()
	req, err := http.NewRequest(http.MethodPost, e.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/xml; charset=utf-8")
	req.Header.Set("SOAPAction", `""`)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), b
}

func (e *env) outbound(tb testing.TB, body []byte) (int, []byte) {
	tb.Helper()
	code, ct, b := e.post(tb, OutboundPath+"?token="+testToken, body)
	if ct != "text/xml; charset=utf-8" {
		tb.Errorf("Content-Type %q", ct)
	}
	return code, b
}

// mustAck posts an outbound message and fails unless it is acknowledged.
func (e *env) mustAck(tb testing.TB, body []byte) {
	tb.Helper()
	code, b := e.outbound(tb, body)
	if code != http.StatusOK || string(b) != ackEnvelope {
		tb.Fatalf("POST: %d %s", code, b)
	}
}

func (e *env) check(tb testing.TB, ch guard.Channel, kind guard.Kind, raw string) guard.Decision {
	tb.Helper()
	id, err := e.guard.Parse(kind, raw)
	if err != nil {
		tb.Fatal(err)
	}
	d, err := e.guard.Check(context.Background(), ch, id)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

func (e *env) record(tb testing.TB, id string) (guard.Record, bool) {
	tb.Helper()
	r, err := e.store.Get(context.Background(), id)
	if err == nil {
		return r, true
	}
	if !strings.Contains(err.Error(), guard.ErrNotFound.Error()) {
		tb.Fatal(err)
	}
	return r, false
}

// metric sums the values of a metric family whose labels include want.
func (e *env) metric(tb testing.TB, name string, want map[string]string) float64 {
	tb.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		tb.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			sum += value(m)
		}
	}
	return sum
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}
