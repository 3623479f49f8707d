package cache_test

import (
	"context"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// Benchmarks run against a real redis-server started for the benchmark.
// BenchmarkBaselineHGET is the yardstick: one bare HGET per op on the same
// server and client, so ratios can be read off one run. The single-lookup
// benchmarks also report redis-server's own time per call of the command
// (redis-µs/call, INFO commandstats), the least noisy figure here:
//
//	go test -run '^$' -bench . -benchmem ./cache/

const benchPeople = 5000 // records, each with one email and one phone

// benchStore fills a fresh redis-server. tweak (may be nil) adjusts the
// store before Init, e.g. cache.UseClusterLookup for the Cluster path.
func benchStore(b *testing.B, tweak func(*cache.Store)) (*cache.Store, *redis.Client) {
	b.Helper()
	rdb := redistest.Start(b).Client(b)
	st := backend{rdb: rdb, tweak: tweak}.store(b, cache.Options{})
	ups := make([]guard.Update, 0, 100)
	for n := range benchPeople {
		ups = append(ups, upd(rid(b, n), v(1), c4("Ja", "Nein", "", "Ja"), benchEmail(b, n), benchPhone(b, n)))
		if len(ups) == cap(ups) {
			mustApply(b, st, ups...)
			ups = ups[:0]
		}
	}
	mustApply(b, st, ups...)
	return st, rdb
}

func benchEmail(tb testing.TB, n int) guard.Identifier {
	return email(tb, fmt.Sprintf("person%d@example.de", n))
}

func benchPhone(tb testing.TB, n int) guard.Identifier {
	return phone(tb, fmt.Sprintf("+4930%07d", 1000000+n))
}

func BenchmarkBaselineHGET(b *testing.B) {
	_, rdb := benchStore(b, nil)
	ctx := context.Background()
	key := "cg:{" + rid(b, 7) + "}:r"
	cpu := redisCPU(b, rdb)
	if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := rdb.HGet(ctx, key, "c0").Err(); err != nil {
			b.Fatal(err)
		}
	}
	reportRedisCPU(b, rdb, cpu)
	reportCmdTime(b, rdb, "hget")
}

// lookupPaths are the read paths the lookup benchmarks compare: direct
// (standalone/Sentinel, one HVALS) and cluster (HKEYS, then HGET of each
// record; two round trips), both against the same standalone server.
var lookupPaths = []struct {
	name  string
	tweak func(*cache.Store)
	cmd   string // the Redis command a lookup runs, for INFO commandstats
}{
	{"direct", nil, "hvals"},
	{"cluster", cache.UseClusterLookup, "hkeys"},
}

// reportCmdTime adds redis-server's own time per call of cmd since the last
// CONFIG RESETSTAT (INFO commandstats usec_per_call) as redis-µs/call.
func reportCmdTime(b *testing.B, rdb *redis.Client, cmd string) {
	b.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^cmdstat_` + regexp.QuoteMeta(cmd) + `:.*usec_per_call=([0-9.]+)`).FindStringSubmatch(info)
	if m == nil {
		b.Fatalf("no commandstats for %s", cmd)
	}
	f, _ := strconv.ParseFloat(m[1], 64)
	b.ReportMetric(f, "redis-µs/call")
}

// redisCPU is redis-server's used CPU (user + sys) in seconds.
func redisCPU(b *testing.B, rdb *redis.Client) float64 {
	b.Helper()
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for line := range strings.Lines(info) {
		k, val, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok && (k == "used_cpu_sys" || k == "used_cpu_user") {
			f, _ := strconv.ParseFloat(val, 64)
			sum += f
		}
	}
	return sum
}

// reportRedisCPU adds redis-server's CPU per op since start as redis-cpu-µs/op.
func reportRedisCPU(b *testing.B, rdb *redis.Client, start float64) {
	b.ReportMetric((redisCPU(b, rdb)-start)*1e6/float64(b.N), "redis-cpu-µs/op")
}

func BenchmarkLookupSingle(b *testing.B) {
	for _, p := range lookupPaths {
		b.Run(p.name, func(b *testing.B) {
			st, rdb := benchStore(b, p.tweak)
			ctx := context.Background()
			ids := []guard.Identifier{benchEmail(b, 7)}
			cpu := redisCPU(b, rdb)
			if err := rdb.ConfigResetStat(ctx).Err(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				res, err := st.Lookup(ctx, ids)
				if err != nil || len(res[0]) != 1 {
					b.Fatal(res, err)
				}
			}
			reportRedisCPU(b, rdb, cpu)
			reportCmdTime(b, rdb, p.cmd)
		})
	}
}

func BenchmarkBaselineHGETParallel(b *testing.B) {
	_, rdb := benchStore(b, nil)
	ctx := context.Background()
	key := "cg:{" + rid(b, 7) + "}:r"
	cpu := redisCPU(b, rdb)
	b.ReportAllocs()
	b.SetParallelism(25) // 50 goroutines on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := rdb.HGet(ctx, key, "c0").Err(); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRedisCPU(b, rdb, cpu)
}

func BenchmarkLookupSingleParallel(b *testing.B) {
	for _, p := range lookupPaths {
		b.Run(p.name, func(b *testing.B) {
			st, rdb := benchStore(b, p.tweak)
			ctx := context.Background()
			cpu := redisCPU(b, rdb)
			b.ReportAllocs()
			b.SetParallelism(25)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				ids := []guard.Identifier{benchEmail(b, 7)}
				for pb.Next() {
					res, err := st.Lookup(ctx, ids)
					if err != nil || len(res[0]) != 1 {
						b.Error(res, err)
						return
					}
				}
			})
			reportRedisCPU(b, rdb, cpu)
		})
	}
}

// BenchmarkLookupBatch10000Phones: 10,000 phone numbers, half of them known.
func BenchmarkLookupBatch10000Phones(b *testing.B) {
	for _, p := range lookupPaths {
		b.Run(p.name, func(b *testing.B) {
			st, rdb := benchStore(b, p.tweak)
			ctx := context.Background()
			ids := make([]guard.Identifier, 10000)
			for n := range ids {
				ids[n] = benchPhone(b, n) // n >= benchPeople: unknown
			}
			cpu := redisCPU(b, rdb)
			b.ReportAllocs()
			for b.Loop() {
				res, err := st.Lookup(ctx, ids)
				if err != nil || len(res[0]) != 1 || len(res[9999]) != 0 {
					b.Fatal(err)
				}
			}
			reportRedisCPU(b, rdb, cpu)
		})
	}
}

// BenchmarkApply100: one POST's worth of updates, each a newer version
// (Replaced) of an existing record; direct: the script keeps the index,
// cluster: one more pipeline does.
func BenchmarkApply100(b *testing.B) {
	for _, p := range lookupPaths {
		b.Run(p.name, func(b *testing.B) { benchApply100(b, p.tweak) })
	}
}

func benchApply100(b *testing.B, tweak func(*cache.Store)) {
	st, _ := benchStore(b, tweak)
	ctx := context.Background()
	ups := make([]guard.Update, 100)
	for n := range ups {
		ups[n] = upd(rid(b, n), v(1), c4("Ja", "Nein", "", "Ja"), benchEmail(b, n), benchPhone(b, n))
	}
	ver := 1
	b.ReportAllocs()
	for b.Loop() {
		ver++
		for n := range ups {
			ups[n].Version = v(ver)
		}
		out, err := st.Apply(ctx, ups)
		if err != nil || out[0] != guard.Replaced {
			b.Fatal(out, err)
		}
	}
}
