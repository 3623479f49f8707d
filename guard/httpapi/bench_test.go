package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/httpapi"
)

// Load generator settings for BenchmarkCheckVsBaseline (see BENCHMARK.md).
var (
	benchRequests = flag.Int("cg.requests", 40000, "requests per target per round")
	benchClients  = flag.Int("cg.clients", 50, "concurrent keep-alive clients")
	benchRounds   = flag.Int("cg.rounds", 3, "rounds; each round runs baseline then API")
	benchContacts = flag.Int("cg.contacts", 10000, "contacts in the store")
	benchRate     = flag.Int("cg.rate", 5000, "offered req/s of the paced latency phase (0 skips it)")
	benchAttrib   = flag.Bool("cg.attribution", false, "also measure a bare net/http handler calling guard.Check (splits API cost into this package vs guard+cache)")
)

const benchKey = "bench-api-key"

// benchEmail is the i-th benchmark contact's address.
func benchEmail(i int) string { return fmt.Sprintf("bench%05d@example.de", i) }

// mustBenchStore starts a redis-server and fills a store with n contacts,
// each with an email and a phone number and varied consent.
func mustBenchStore(b *testing.B, n int) (*redistest.Server, *cache.Store) {
	b.Helper()
	rs := redistest.Start(b)
	st := cache.New(rs.Client(b), cache.Options{HashKey: testHashKey})
	ctx := context.Background()
	if err := st.Init(ctx); err != nil {
		b.Fatal(err)
	}
	words := []string{"Ja", "Ja", "Ja", "Nein", "Abfrage ausstehend", ""}
	var ups []guard.Update
	for i := 0; i < n; i++ {
		ups = append(ups, guard.Update{
			ID: mustID(fmt.Sprintf("003B%011d", i)), Object: "Contact", Version: version,
			Consent:     [4]string{words[i%len(words)], words[(i+1)%len(words)], "", "Ja"},
			Identifiers: []guard.Identifier{email(b, benchEmail(i)), phone(b, benchPhone(i))},
			Source:      "bench",
		})
		if len(ups) == 1000 || i == n-1 {
			if _, err := st.Apply(ctx, ups); err != nil {
				b.Fatal(err)
			}
			ups = ups[:0]
		}
	}
	return rs, st
}

// serve runs h on a real loopback listener, as cmd does.
func serve(b *testing.B, h http.Handler) string {
	return serveAs(b, "", h)
}

// serveAs is serve with the connection goroutines labelled target=name in
// CPU profiles (-cpuprofile; `go tool pprof -tagfocus target=api`), so one
// target's server work can be told from another's and from the load
// generator's.
func serveAs(b *testing.B, name string, h http.Handler) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	if name != "" {
		labels := pprof.WithLabels(context.Background(), pprof.Labels("target", name))
		srv.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateActive { // called on the connection's goroutine
				pprof.SetGoroutineLabels(labels)
			}
		}
	}
	go func() { _ = srv.Serve(l) }()
	b.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// guardHandler is the attribution target: a bare net/http handler calling
// guard.Check on the same store, with none of this package's work (no gin,
// auth, metrics, rendering beyond a fixed body).
func guardHandler(g *guard.Guard) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := guard.ParseEmail(r.URL.Query().Get("email"))
		if err != nil {
			http.Error(w, `{"allowed":false}`, http.StatusBadRequest)
			return
		}
		d, err := g.Check(r.Context(), guard.Email, id)
		if err != nil {
			http.Error(w, `{"allowed":false}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if d.Allowed {
			_, _ = io.WriteString(w, `{"allowed":true}`+"\n")
		} else {
			_, _ = io.WriteString(w, `{"allowed":false}`+"\n")
		}
	})
}

// baselineHandler is the yardstick: a bare net/http handler doing one
// go-redis HGET per request.
func baselineHandler(rdb *redis.Client) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := rdb.HGet(r.Context(), "bench:consent", r.URL.Query().Get("email")).Result()
		if err != nil && err != redis.Nil {
			http.Error(w, `{"allowed":false}`, http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		if v == "Ja" {
			_, _ = io.WriteString(w, `{"allowed":true}`+"\n")
		} else {
			_, _ = io.WriteString(w, `{"allowed":false}`+"\n")
		}
	})
}

type loadResult struct {
	requests int
	elapsed  time.Duration
	lat      []time.Duration // sorted
	failures int
	goCPU    time.Duration // this process (server, load generator, client libraries)
	redisCPU time.Duration // redis-server
}

func (r loadResult) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

func (r loadResult) pct(p float64) time.Duration {
	if len(r.lat) == 0 {
		return 0
	}
	return r.lat[min(len(r.lat)-1, int(float64(len(r.lat))*p))]
}

// perReq is a CPU time per request in microseconds.
func (r loadResult) perReq(d time.Duration) float64 {
	return float64(d) / float64(time.Microsecond) / float64(r.requests)
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
func redisCPU(ctx context.Context, rdb *redis.Client) time.Duration {
	info, err := rdb.Info(ctx, "cpu").Result()
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

// load sends total GET requests from clients concurrent keep-alive
// connections, cycling through paths, and times each one (request written
// to body read). Any status but 200 counts as a failure. It also measures
// the CPU time this process and redis-server spent.
//
// With rate > 0 requests are paced: request i is due at start + i/rate,
// and its latency counts from when it was due, so a stalled server is not
// hidden by clients that stop sending (coordinated omission).
func load(b *testing.B, rdb *redis.Client, base string, paths []string, total, clients, rate int, header http.Header) loadResult {
	b.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	reqs := make([]*http.Request, len(paths))
	for i, p := range paths {
		req, err := http.NewRequest("GET", base+p, nil)
		if err != nil {
			b.Fatal(err)
		}
		req.Header = header.Clone()
		reqs[i] = req
	}
	ctx := context.Background()
	run := func(total int, record bool) loadResult {
		var next atomic.Int64
		var failures atomic.Int64
		lats := make([][]time.Duration, clients)
		var wg sync.WaitGroup
		cpu0, rcpu0 := processCPU(), redisCPU(ctx, rdb)
		start := time.Now()
		for w := 0; w < clients; w++ {
			wg.Go(func() {
				var mine []time.Duration
				if record {
					mine = make([]time.Duration, 0, total/clients+1)
				}
				buf := make([]byte, 4096)
				for {
					i := int(next.Add(1)) - 1
					if i >= total {
						break
					}
					t0 := time.Now()
					if rate > 0 {
						due := start.Add(time.Duration(i) * time.Second / time.Duration(rate))
						if d := due.Sub(t0); d > 0 {
							time.Sleep(d)
						}
						t0 = due
					}
					resp, err := client.Do(reqs[i%len(reqs)])
					if err != nil {
						failures.Add(1)
						continue
					}
					for {
						if _, err := resp.Body.Read(buf); err != nil {
							break
						}
					}
					resp.Body.Close()
					if record {
						mine = append(mine, time.Since(t0))
					}
					if resp.StatusCode != 200 {
						failures.Add(1)
					}
				}
				lats[w] = mine
			})
		}
		wg.Wait()
		res := loadResult{requests: total, elapsed: time.Since(start), failures: int(failures.Load())}
		res.goCPU, res.redisCPU = processCPU()-cpu0, redisCPU(ctx, rdb)-rcpu0
		for _, l := range lats {
			res.lat = append(res.lat, l...)
		}
		slices.Sort(res.lat)
		return res
	}
	run(max(2000, total/10), false) // warm up: connections, pools, caches
	if rate > 0 {
		r := run(total, true)
		r.elapsed = time.Duration(total) * time.Second / time.Duration(rate) // offered, not achieved
		return r
	}
	return run(total, true)
}

// BenchmarkCheckVsBaseline measures, in one run and with the same load
// generator, GET /v1/check (this handler, guard, cache.Store, real
// redis-server) against a bare net/http handler doing one go-redis HGET,
// on the same redis-server. Rounds alternate baseline and API so that
// drift on a noisy machine hits both. Besides req/s and latency it reports
// CPU time per request (this process, redis-server), which other load on
// the machine disturbs far less than throughput.
func BenchmarkCheckVsBaseline(b *testing.B) {
	n := *benchContacts
	rs, st := mustBenchStore(b, n)
	ctx := context.Background()

	// The baseline's data: one hash field per address.
	rdbBase := rs.Client(b)
	fields := make([]any, 0, 2*n)
	for i := 0; i < n; i++ {
		fields = append(fields, benchEmail(i), []string{"Ja", "Nein"}[i%2])
	}
	if err := rdbBase.HSet(ctx, "bench:consent", fields...).Err(); err != nil {
		b.Fatal(err)
	}

	// The API as cmd wires it: API key, metrics registered, info logging.
	reg := prometheus.NewRegistry()
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	g := guard.New(st, guard.Options{Logger: log})
	api := httpapi.New(g, st, httpapi.Options{
		Keys:       []httpapi.Key{{Name: "bench", SHA256: httpapi.HashKey(benchKey), Scopes: []string{"check:*"}}},
		Logger:     log,
		Registerer: reg,
		Gatherer:   reg,
	})
	type target struct {
		name  string
		url   string
		runs  []loadResult // closed loop: as fast as the clients can
		paced []loadResult // open loop at -cg.rate
	}
	targets := []*target{
		{name: "baseline", url: serveAs(b, "baseline", baselineHandler(rdbBase))},
		{name: "api", url: serveAs(b, "api", api)},
	}
	if *benchAttrib {
		g2 := guard.New(cache.New(rs.Client(b), cache.Options{HashKey: testHashKey}), guard.Options{Logger: log})
		targets = append(targets, &target{name: "guard", url: serveAs(b, "guard", guardHandler(g2))})
	}

	// 90% known contacts, 10% unknown addresses.
	paths := make([]string, 0, 2*n)
	for i := 0; i < 2*n; i++ {
		j := (i * 7919) % (n + n/9)
		paths = append(paths, "/v1/check?channel=email&email="+benchEmail(j))
	}
	header := http.Header{"Authorization": {"Bearer " + benchKey}}

	// Sanity: every target answers 200 before anything is timed.
	for _, t := range targets {
		if r := load(b, rdbBase, t.url, paths[:1], 1, 1, 0, header); r.failures != 0 {
			b.Fatalf("%s does not answer 200", t.name)
		}
	}

	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for r := 0; r < *benchRounds; r++ {
			for _, t := range targets {
				t.runs = append(t.runs, load(b, rdbBase, t.url, paths, *benchRequests, *benchClients, 0, header))
			}
		}
		if *benchRate > 0 {
			for _, t := range targets {
				t.paced = append(t.paced, load(b, rdbBase, t.url, paths, 3**benchRate, *benchClients, *benchRate, header))
			}
		}
	}
	b.StopTimer()
	if os.Getenv("CG_BENCH_REDIS_STATS") != "" {
		fmt.Printf("redis:\n%s\n", rdbBase.Info(ctx, "commandstats").Val())
	}

	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Printf("GET /v1/check: %d contacts, %d keep-alive clients, %d requests per target per round, GOMAXPROCS=%d\n",
		n, *benchClients, *benchRequests, runtime.GOMAXPROCS(0))
	fmt.Fprintln(w, "target\tround\treq/s\tp50\tp99\tmax\tgo µs/req\tredis µs/req\tfailed\t")
	for r := range targets[0].runs {
		for _, t := range targets {
			x := t.runs[r]
			fmt.Fprintf(w, "%s\t%d\t%.0f\t%s\t%s\t%s\t%.1f\t%.1f\t%d\t\n", t.name, r+1, x.rps(),
				x.pct(.5).Round(time.Microsecond), x.pct(.99).Round(time.Microsecond), x.pct(1).Round(time.Microsecond),
				x.perReq(x.goCPU), x.perReq(x.redisCPU), x.failures)
		}
	}
	sums := make([]summary, len(targets))
	for i, t := range targets {
		sums[i] = summarize(t.runs)
		x := sums[i]
		fmt.Fprintf(w, "%s\tmedian\t%.0f\t%s\t%s\t\t%.1f\t%.1f\t\t\n", t.name, x.rps,
			x.p50.Round(time.Microsecond), x.p99.Round(time.Microsecond), x.goCPU, x.redisCPU)
	}
	_ = w.Flush()
	var pacedP99 []time.Duration
	if *benchRate > 0 {
		fmt.Printf("paced at %d req/s offered (latency counted from when each request was due):\n", *benchRate)
		fmt.Fprintln(w, "target\tround\tp50\tp99\tmax\tgo µs/req\tredis µs/req\tfailed\t")
		for r := range targets[0].paced {
			for _, t := range targets {
				x := t.paced[r]
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%.1f\t%.1f\t%d\t\n", t.name, r+1,
					x.pct(.5).Round(time.Microsecond), x.pct(.99).Round(time.Microsecond), x.pct(1).Round(time.Microsecond),
					x.perReq(x.goCPU), x.perReq(x.redisCPU), x.failures)
			}
		}
		_ = w.Flush()
		for _, t := range targets[:2] {
			pacedP99 = append(pacedP99, summarize(t.paced).p99)
		}
	}
	bs, fs := sums[0], sums[1]
	fmt.Printf("ratio api/baseline: throughput %.3f (target >= 0.9); CPU per request api %.1f µs vs baseline %.1f µs\n",
		fs.rps/bs.rps, fs.goCPU+fs.redisCPU, bs.goCPU+bs.redisCPU)
	if *benchAttrib {
		gs := sums[2]
		fmt.Printf("attribution: guard/baseline %.3f, api/guard %.3f (this package's share)\n", gs.rps/bs.rps, fs.rps/gs.rps)
		b.ReportMetric(gs.rps, "guard-req/s")
	}
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(bs.rps, "base-req/s")
	b.ReportMetric(fs.rps, "api-req/s")
	b.ReportMetric(fs.rps/bs.rps, "ratio")
	b.ReportMetric(ms(bs.p50), "base-p50-ms")
	b.ReportMetric(ms(bs.p99), "base-p99-ms")
	b.ReportMetric(ms(fs.p50), "api-p50-ms")
	b.ReportMetric(ms(fs.p99), "api-p99-ms")
	if pacedP99 != nil {
		b.ReportMetric(ms(pacedP99[0]), "base-paced-p99-ms")
		b.ReportMetric(ms(pacedP99[1]), "api-paced-p99-ms")
	}
	b.ReportMetric(bs.goCPU+bs.redisCPU, "base-cpu-µs/req")
	b.ReportMetric(fs.goCPU+fs.redisCPU, "api-cpu-µs/req")
	// A check slower than the guard's timeout (250 ms) is a 503 by design;
	// on an overloaded machine a few happen. More than 1% is a fault.
	for _, t := range targets {
		for _, r := range slices.Concat(t.runs, t.paced) {
			if r.failures*100 > r.requests {
				b.Errorf("%s: %d of %d requests failed", t.name, r.failures, r.requests)
			}
		}
	}
}

type summary struct {
	rps             float64
	p50, p99        time.Duration
	goCPU, redisCPU float64 // µs per request
}

// summarize takes the median of the rounds' figures, each on its own.
func summarize(rs []loadResult) summary {
	med := func(f func(loadResult) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		return v[len(v)/2]
	}
	return summary{
		rps:      med(loadResult.rps),
		p50:      time.Duration(med(func(r loadResult) float64 { return float64(r.pct(.5)) })),
		p99:      time.Duration(med(func(r loadResult) float64 { return float64(r.pct(.99)) })),
		goCPU:    med(func(r loadResult) float64 { return r.perReq(r.goCPU) }),
		redisCPU: med(func(r loadResult) float64 { return r.perReq(r.redisCPU) }),
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// BenchmarkBatch10000Phones posts 10,000 national-format phone numbers to
// /v1/check/batch (one guard.CheckBatch, one pipelined lookup) and
// reports milliseconds per batch. The sub-benchmarks split the time:
// "http" is the whole request, "guard" is guard.CheckBatch on numbers
// already normalised (store lookup and decisions), "parse" is normalising
// the 10,000 numbers with libphonenumber on one core.
func BenchmarkBatch10000Phones(b *testing.B) {
	const n = 10000
	_, st := mustBenchStore(b, n)
	g := guard.New(st, guard.Options{Timeout: 5 * time.Second})
	url := serve(b, httpapi.New(g, st, httpapi.Options{}))

	items := make([]map[string]string, n)
	ids := make([]guard.Identifier, n)
	for i := range items {
		items[i] = map[string]string{"phone": benchPhoneNational(i)}
		ids[i] = phone(b, benchPhone(i))
	}
	body, _ := json.Marshal(map[string]any{"channel": "phone", "items": items})

	b.Run("http", func(b *testing.B) {
		client := &http.Client{}
		for b.Loop() {
			resp, err := client.Post(url+"/v1/check/batch", "application/json", bytes.NewReader(body))
			if err != nil {
				b.Fatal(err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || bytes.Count(out, []byte(`"allowed"`)) != n {
				b.Fatalf("status %d: %.200s", resp.StatusCode, out)
			}
		}
		b.ReportMetric(ms(b.Elapsed())/float64(b.N), "ms/batch")
	})
	b.Run("guard", func(b *testing.B) {
		for b.Loop() {
			ds, err := g.CheckBatch(context.Background(), guard.Phone, ids)
			if err != nil || len(ds) != n {
				b.Fatal(err)
			}
		}
		b.ReportMetric(ms(b.Elapsed())/float64(b.N), "ms/batch")
	})
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			for i := range n {
				if _, err := g.Parse(guard.KindPhone, items[i]["phone"]); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(ms(b.Elapsed())/float64(b.N), "ms/batch")
	})
}

// BenchmarkCheckParts prices the layers under the check API without HTTP,
// from 50 goroutines on the same redis-server: a bare HGET (the baseline's
// store work), cache.Store.Lookup of one email (HMAC + one HVALS), the
// same under a context timeout of its own (what the guard did before it
// shared deadlines between checks), guard.Check (parse excluded:
// identifier pre-parsed) and guard.Parse of an email. Reported per
// operation: wall time, CPU of this process and CPU of redis-server. The API's cost over the baseline is mostly the
// difference between the hget and guard.Check rows.
func BenchmarkCheckParts(b *testing.B) {
	n := *benchContacts
	rs, st := mustBenchStore(b, n)
	ctx := context.Background()
	rdb := rs.Client(b)
	fields := make([]any, 0, 2*n)
	ids := make([]guard.Identifier, n)
	for i := 0; i < n; i++ {
		fields = append(fields, benchEmail(i), "Ja")
		ids[i] = email(b, benchEmail(i))
	}
	if err := rdb.HSet(ctx, "bench:consent", fields...).Err(); err != nil {
		b.Fatal(err)
	}
	g := guard.New(st, guard.Options{Timeout: 5 * time.Second}) // no timeouts from a busy machine
	parts := []struct {
		name string
		op   func(i int) error
	}{
		{"hget", func(i int) error { return rdb.HGet(ctx, "bench:consent", benchEmail(i%n)).Err() }},
		{"cache.Lookup", func(i int) error { _, err := st.Lookup(ctx, ids[i%n:i%n+1]); return err }},
		{"cache.Lookup+timeout", func(i int) error {
			tctx, cancel := context.WithTimeout(ctx, 5*time.Second) // a timer, as the guard sets one
			defer cancel()
			_, err := st.Lookup(tctx, ids[i%n:i%n+1])
			return err
		}},
		{"guard.Check", func(i int) error { _, err := g.Check(ctx, guard.Email, ids[i%n]); return err }},
		{"guard.Parse", func(i int) error { _, err := g.Parse(guard.KindEmail, benchEmail(i%n)); return err }},
	}
	for _, p := range parts {
		b.Run(p.name, func(b *testing.B) {
			var next atomic.Int64
			b.SetParallelism((*benchClients + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
			cpu0, rcpu0 := processCPU(), redisCPU(ctx, rdb)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := p.op(int(next.Add(1))); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "go-cpu-µs/op")
			b.ReportMetric(float64(redisCPU(ctx, rdb)-rcpu0)/float64(time.Microsecond)/float64(b.N), "redis-cpu-µs/op")
		})
	}
}
