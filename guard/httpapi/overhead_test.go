package httpapi_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/httpapi"
)

// fixedStore answers every lookup with one granted record, in memory. It
// is not a stand-in for Redis in any test: BenchmarkHandlerOverhead uses it
// to price this package's own work per request (routing, auth, parsing,
// metrics, rendering) without a network round trip.
type fixedStore struct{}

func (fixedStore) Lookup(_ context.Context, ids []guard.Identifier) ([][]guard.Record, error) {
	out := make([][]guard.Record, len(ids))
	for i := range ids {
		out[i] = []guard.Record{{ID: "003000000000001AAA", Object: "Contact", Version: version, Consent: [4]string{"Ja", "Ja", "Ja", "Ja"}}}
	}
	return out, nil
}

// BenchmarkHandlerOverhead is the in-process cost of one GET /v1/check
// through the handler (API key, metrics, info logging), store excluded.
func BenchmarkHandlerOverhead(b *testing.B) {
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h := httpapi.New(guard.New(fixedStore{}, guard.Options{Logger: log}), nil, httpapi.Options{
		Keys:       []httpapi.Key{{Name: "bench", SHA256: httpapi.HashKey(benchKey), Scopes: []string{"check:*"}}},
		Logger:     log,
		Registerer: reg,
	})
	for _, tt := range []struct{ name, query string }{
		{"email", "channel=email&email=bench00042%40example.de"},
		{"phone", "channel=phone&phone=030+10000042"},
		{"contact_id", "channel=email&contact_id=003000000000001"},
	} {
		b.Run(tt.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/v1/check?"+tt.query, nil)
			req.Header.Set("Authorization", "Bearer "+benchKey)
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
				if w.status != 200 {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}

type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }
