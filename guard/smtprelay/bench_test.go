package smtprelay_test

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/guard/smtprelay"
)

// benchConns is how many client connections send in parallel, as a
// newsletter tool does.
const benchConns = 4

// benchMessage is a small newsletter (about 2 KB).
var benchMessage = "From: Newsletter <news@shop.example>\r\nTo: <ja@example.de>\r\nSubject: Angebote der Woche\r\n" +
	"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" +
	strings.Repeat("Liebe Kundin, lieber Kunde, diese Woche im Angebot: alles, was Sie brauchen.\r\n", 25)

// sendMessages sends n messages, one recipient each, over conns parallel
// client connections to addr, and returns the elapsed time.
func sendMessages(tb testing.TB, addr string, n, conns int) time.Duration {
	tb.Helper()
	clients := make([]*smtp.Client, conns)
	for i := range clients {
		c, err := smtp.Dial(addr)
		if err != nil {
			tb.Fatal(err)
		}
		if err := c.Hello("bench.test"); err != nil {
			tb.Fatal(err)
		}
		clients[i] = c
	}
	defer func() {
		for _, c := range clients {
			c.Quit()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	start := time.Now()
	for i, c := range clients {
		todo := n / conns
		if i < n%conns {
			todo++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range todo {
				if err := c.SendMail("news@shop.example", []string{"ja@example.de"}, strings.NewReader(benchMessage)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		tb.Fatal(err)
	}
	return elapsed
}

func benchTargets(b *testing.B, commit time.Duration) (relay, direct string, k *sink, rdb *redis.Client) {
	g, srv := mustGuard(b)
	k = startSink(b)
	k.discard, k.commit = true, commit
	// Metrics registered as in production, so their cost is measured too.
	relay, _ = startRelay(b, g, smtprelay.Options{Upstream: k.addr, Logger: testLogger(b), Registerer: prometheus.NewRegistry()})
	return relay, k.addr, k, srv.Client(b)
}

// BenchmarkDirect: the client straight to the sink (the baseline).
func BenchmarkDirect(b *testing.B) {
	_, direct, _, _ := benchTargets(b, 0)
	b.ResetTimer()
	d := sendMessages(b, direct, b.N, benchConns)
	b.ReportMetric(float64(b.N)/d.Seconds(), "msgs/s")
}

// BenchmarkRelay: the same client through the relay to the sink.
func BenchmarkRelay(b *testing.B) {
	relay, _, _, _ := benchTargets(b, 0)
	b.ResetTimer()
	d := sendMessages(b, relay, b.N, benchConns)
	b.ReportMetric(float64(b.N)/d.Seconds(), "msgs/s")
}

// BenchmarkRelayVsDirect sends 10,000 messages (1 recipient each) straight
// to the sink and 10,000 through the relay, in alternating rounds of 1,000
// so both see the same machine load, and reports both rates and their
// ratio. Target: relay ≥ 0.7 × direct. Run it with -benchtime=1x.
//
// Both paths use the same client code and the same number of connections;
// both are warmed up first (the relay's upstream pool is then warm, as in
// production), and every round starts after a garbage collection so that
// one path's garbage is not collected on the other's clock. Besides the
// rates it reports the CPU time per message of the whole test process
// (client, sink and, on the relay path, the relay) plus redis-server:
// client, relay, sink and Redis share the machine, so when the relay needs
// as much CPU per message as client and sink together, the ratio cannot
// pass 0.5 on a CPU-bound machine whatever the code does.
//
// sink=discard is the worst case for the relay and the figure the target
// applies to: the sink does no work, so the relay's own cost (a second SMTP
// hop and a Redis round trip per recipient) is all there is. sink=commit2ms
// models a real upstream MTA, which answers the end of data only after
// writing and fsyncing its queue file (2 ms: fsync of a 2 KB file measured
// 2.2 ms on the development machine).
func BenchmarkRelayVsDirect(b *testing.B) {
	b.Run("sink=discard", func(b *testing.B) { relayVsDirect(b, 0) })
	b.Run("sink=commit2ms", func(b *testing.B) { relayVsDirect(b, 2*time.Millisecond) })
}

// phase is the wall-clock and CPU time (this process plus redis-server)
// spent on some messages.
type phase struct{ wall, cpu, redis time.Duration }

func (p *phase) add(b *testing.B, rdb *redis.Client, send func() time.Duration) {
	runtime.GC()
	cpu0, r0 := processCPU(), redisCPU(rdb)
	p.wall += send()
	r1 := redisCPU(rdb)
	p.cpu += processCPU() - cpu0 + r1 - r0
	p.redis += r1 - r0
}

func relayVsDirect(b *testing.B, commit time.Duration) {
	relay, direct, k, rdb := benchTargets(b, commit)
	const total, round, warm = 10000, 1000, 500
	sendMessages(b, direct, warm, benchConns)
	sendMessages(b, relay, warm, benchConns)
	b.ResetTimer()
	var pd, pr phase
	for range b.N {
		for sent := 0; sent < total; sent += round {
			pd.add(b, rdb, func() time.Duration { return sendMessages(b, direct, round, benchConns) })
			pr.add(b, rdb, func() time.Duration { return sendMessages(b, relay, round, benchConns) })
		}
	}
	b.StopTimer()
	if want := int64(b.N*2*total + 2*warm); k.count.Load() != want {
		b.Fatalf("sink counted %d messages, want %d", k.count.Load(), want)
	}
	n := float64(b.N * total)
	direct1, relay1 := n/pd.wall.Seconds(), n/pr.wall.Seconds()
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / n }
	b.ReportMetric(direct1, "direct-msgs/s")
	b.ReportMetric(relay1, "relay-msgs/s")
	b.ReportMetric(relay1/direct1, "relay/direct")
	b.ReportMetric(us(pd.cpu), "direct-cpu-µs/msg")
	b.ReportMetric(us(pr.cpu), "relay-cpu-µs/msg")
	b.Logf("%d messages each: direct %.0f msgs/s, relay %.0f msgs/s, ratio %.2f; CPU per message (process + redis-server): direct %.0f µs, relay %.0f µs (redis %.0f µs)",
		b.N*total, direct1, relay1, relay1/direct1, us(pd.cpu), us(pr.cpu), us(pr.redis))
}

// processCPU is the user+system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// redisCPU is the user+system CPU time redis-server has used (INFO cpu).
func redisCPU(rdb *redis.Client) time.Duration {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		return 0
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(v, 64)
			total += f
		}
	}
	return time.Duration(total * float64(time.Second))
}
