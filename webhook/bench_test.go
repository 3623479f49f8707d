package webhook

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentguard/consentguard/guard"
)

// benchBodies builds n distinct 100-notification POSTs: fresh notification
// Ids, 100 distinct contacts each (out of 10,000), versions rising with the
// POST so that every notification is a real replace, not a duplicate.
func benchBodies(tb testing.TB, n int) [][]byte {
	words := []string{"Ja", "Nein", "Abfrage ausstehend"}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	bodies := make([][]byte, n)
	for i := range bodies {
		notes := make([]notification, MaxNotifications)
		version := guard.VersionString(base.Add(time.Duration(i) * time.Second))
		for j := range notes {
			notes[j] = contactNote(tb, i*MaxNotifications+j, (i*MaxNotifications+j)%10000, version, words[(i+j)%3])
		}
		bodies[i] = encodeOutbound(testOrg, notes)
	}
	return bodies
}

// BenchmarkOutbound100 posts 100-notification outbound messages through the
// real handler over loopback HTTP into a real redis-server, from
// one and from four concurrent clients. It reports notifications/s and the
// p50/p99 latency of one POST. The "apply" baseline writes the same updates
// straight into the store (no HTTP, no XML, no mapping) from four clients,
// measured in the same run: compare http/clients=4 against it.
func BenchmarkOutbound100(b *testing.B) {
	for _, clients := range []int{1, 4} {
		b.Run(fmt.Sprintf("http/clients=%d", clients), func(b *testing.B) { benchHTTP(b, clients) })
	}
	b.Run("apply/clients=4", func(b *testing.B) { benchApply(b, 4) })
}

func benchHTTP(b *testing.B, benchClients int) {
	e := newEnv(b, Options{})
	bodies := benchBodies(b, b.N)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchClients}}
	url := e.srv.URL + OutboundPath + "?token=" + testToken
	lat := make([]time.Duration, b.N)
	var failed atomic.Value
	b.ResetTimer()
	runClients(benchClients, len(bodies), func(i int) bool {
		start := time.Now()
		resp, err := client.Post(url, "text/xml; charset=utf-8", bytes.NewReader(bodies[i]))
		if err != nil {
			failed.Store(err.Error())
			return false
		}
		ack, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		lat[i] = time.Since(start)
		if resp.StatusCode != http.StatusOK || string(ack) != ackEnvelope {
			failed.Store(fmt.Sprintf("%d %s", resp.StatusCode, ack))
			return false
		}
		return true
	})
	b.StopTimer()
	if f := failed.Load(); f != nil {
		b.Fatal(f)
	}
	slices.Sort(lat)
	b.ReportMetric(float64(b.N*MaxNotifications)/b.Elapsed().Seconds(), "notifications/s")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	if applies, applied, _ := e.store.counts(); applies != b.N || applied != b.N*MaxNotifications {
		b.Fatalf("%d applies of %d updates for %d POSTs", applies, applied, b.N)
	}
}

func benchApply(b *testing.B, benchClients int) {
	e := newEnv(b, Options{})
	batches := make([][]guard.Update, b.N)
	for i, body := range benchBodies(b, b.N) {
		m, err := decodeOutbound(body)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range m.Notifications {
			id, _ := n.field("Id")
			up, _, err := DefaultMapping().Record(n.Object, id, n.field, RecordOptions{})
			if err != nil {
				b.Fatal(err)
			}
			batches[i] = append(batches[i], up)
		}
	}
	b.ResetTimer()
	runClients(benchClients, len(batches), func(i int) bool {
		if _, err := e.store.Store.Apply(context.Background(), batches[i]); err != nil {
			b.Error(err)
			return false
		}
		return true
	})
	b.StopTimer()
	b.ReportMetric(float64(b.N*MaxNotifications)/b.Elapsed().Seconds(), "notifications/s")
}

// runClients calls do(0) … do(n-1) from clients goroutines, each taking the
// next index until they run out or do returns false, and waits for them.
func runClients(clients, n int, do func(i int) bool) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || !do(i) {
					return
				}
			}
		}()
	}
	wg.Wait()
}
