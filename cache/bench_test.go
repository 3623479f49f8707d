package cache_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// Benchmarks run against a real redis-server started for the benchmark.
// BenchmarkBaselineHGET is the yardstick: one bare HGET per op on the same
// server and client, so ratios can be read off one run:
//
//	go test -run '^$' -bench . -benchmem ./cache/

const benchPeople = 5000 // records, each with one email and one phone

func benchStore(b *testing.B) (*cache.Store, *redis.Client) {
	b.Helper()
	ctx := context.Background()
	srv := redistest.Start(b)
	rdb := srv.Client(b)
	st := cache.New(rdb, cache.Options{HashKey: testKey})
	if err := st.Init(ctx); err != nil {
		b.Fatal(err)
	}
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
	_, rdb := benchStore(b)
	ctx := context.Background()
	key := "cg:{" + rid(b, 7) + "}:r"
	b.ReportAllocs()
	for b.Loop() {
		if err := rdb.HGet(ctx, key, "c0").Err(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLookupSingle(b *testing.B) {
	st, _ := benchStore(b)
	ctx := context.Background()
	ids := []guard.Identifier{benchEmail(b, 7)}
	b.ReportAllocs()
	for b.Loop() {
		res, err := st.Lookup(ctx, ids)
		if err != nil || len(res[0]) != 1 {
			b.Fatal(res, err)
		}
	}
}

func BenchmarkBaselineHGETParallel(b *testing.B) {
	_, rdb := benchStore(b)
	ctx := context.Background()
	key := "cg:{" + rid(b, 7) + "}:r"
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
}

func BenchmarkLookupSingleParallel(b *testing.B) {
	st, _ := benchStore(b)
	ctx := context.Background()
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
}

// BenchmarkLookupBatch10000Phones: 10,000 phone numbers, half of them known.
func BenchmarkLookupBatch10000Phones(b *testing.B) {
	st, _ := benchStore(b)
	ctx := context.Background()
	ids := make([]guard.Identifier, 10000)
	for n := range ids {
		ids[n] = benchPhone(b, n) // n >= benchPeople: unknown
	}
	b.ReportAllocs()
	for b.Loop() {
		res, err := st.Lookup(ctx, ids)
		if err != nil || len(res[0]) != 1 || len(res[9999]) != 0 {
			b.Fatal(err)
		}
	}
}

// BenchmarkApply100: one POST's worth of updates, each a newer version
// (Replaced) of an existing record.
func BenchmarkApply100(b *testing.B) {
	st, _ := benchStore(b)
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
