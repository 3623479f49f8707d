package cache_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/guard"
)

// TestRepairIndexRedis runs the RepairIndex suite on the direct path: one
// repair script run per index key.
func TestRepairIndexRedis(t *testing.T) { runRepairIndex(t, realBackends(t, nil, "direct")) }

// TestRepairIndexRedisClusterLookup runs it the way the store works on
// Cluster: HKEYS, the records' lines, and unindex.
func TestRepairIndexRedisClusterLookup(t *testing.T) {
	runRepairIndex(t, realBackends(t, cache.UseClusterLookup, "cluster"))
}

func TestRepairIndexEmbedded(t *testing.T) { runRepairIndex(t, embeddedBackends(t)) }

// TestRepairIndexRedisCluster runs it on a real one-node Redis Cluster
// through a redis.ClusterClient: the store takes the Cluster path by the
// client's type, and RepairIndex scans every master (ForEachMaster).
func TestRepairIndexRedisCluster(t *testing.T) { runRepairIndex(t, clusterBackends(t)) }

func mustRepair(tb testing.TB, st *cache.Store) cache.IndexReport {
	tb.Helper()
	rep, err := st.RepairIndex(context.Background())
	if err != nil {
		tb.Fatalf("RepairIndex: %v (after %+v)", err, rep)
	}
	return rep
}

func wantReport(tb testing.TB, got, want cache.IndexReport) {
	tb.Helper()
	if got != want {
		tb.Fatalf("RepairIndex = %+v, want %+v", got, want)
	}
}

// indexSnapshot is every index key under prefix with its fields and values.
func indexSnapshot(tb testing.TB, rdb redis.UniversalClient, prefix string) map[string]map[string]string {
	tb.Helper()
	ctx := context.Background()
	out := map[string]map[string]string{}
	keys, err := rdb.Keys(ctx, strings.NewReplacer("*", `\*`, "?", `\?`, "[", `\[`, "]", `\]`, `\`, `\\`).Replace(prefix)+"i:*").Result()
	if err != nil {
		tb.Fatal(err)
	}
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	pipe := rdb.Pipeline()
	for i, k := range keys {
		if !strings.HasPrefix(k, prefix+"i:") {
			tb.Fatalf("KEYS returned %q for prefix %q", k, prefix)
		}
		cmds[i] = pipe.HGetAll(ctx, k)
	}
	if len(keys) > 0 {
		_, _ = pipe.Exec(ctx) // errors are inspected per command
	}
	for i, k := range keys {
		m, err := cmds[i].Result()
		if err != nil {
			tb.Fatalf("HGETALL %s: %v", k, err)
		}
		out[k] = m
	}
	return out
}

func entryCount(idx map[string]map[string]string) int {
	n := 0
	for _, m := range idx {
		n += len(m)
	}
	return n
}

func runRepairIndex(t *testing.T, fresh func(*testing.T) backend) {
	ctx := context.Background()
	// As in the contract suite, each subtest ends with the index checked
	// against the records.
	newBackend := checked(fresh)

	t.Run("DeletedRecordKeyIsUnindexed", func(t *testing.T) {
		// An operator's DEL of a record key leaves its index entries. On the
		// direct path they still answer with its last consent, and no
		// lookup notices; RepairIndex removes them.
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		x, y, z := rid(t, 1), rid(t, 2), rid(t, 3)
		a, shared, bb, c := email(t, "a@firma.de"), email(t, "info@firma.de"), phone(t, "+49 30 901820"), email(t, "c@firma.de")
		mustApply(t, st,
			upd(x, v(1), c4("Ja", "", "", ""), a, shared),
			upd(y, v(1), c4("Nein", "", "", ""), shared, bb),
			upd(z, v(1), c4("Ja", "", "", ""), c),
		)
		if err := b.rdb.Del(ctx, "cg:{"+x+"}:r").Err(); err != nil {
			t.Fatal(err)
		}
		if b.path == "cluster" {
			// Entries are hints there; a lookup would already skip and
			// remove them, so look at the index itself.
			if ok, err := b.rdb.HExists(ctx, "cg:i:"+idHash(testKey, a), x).Result(); err != nil || !ok {
				t.Fatalf("entry of the deleted record before repair: %v, %v", ok, err)
			}
		} else {
			// Pinned down: the copied line still answers, with its consent.
			res, err := st.Lookup(ctx, []guard.Identifier{a})
			if err != nil || len(res[0]) != 1 || res[0][0].ID != x || res[0][0].Consent[guard.Email] != "Ja" {
				t.Fatalf("lookup of a deleted record's identifier before repair = %+v, %v; want its last consent (direct path)", res, err)
			}
			wantIDs(t, lookupIDs(t, st, shared), x, y)
		}
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 4, Entries: 5, Repaired: 2, Records: 2})
		wantIDs(t, lookupIDs(t, st, a))
		wantIDs(t, lookupIDs(t, st, shared), y)
		wantIDs(t, lookupIDs(t, st, bb), y)
		wantIDs(t, lookupIDs(t, st, c), z)
		if n, err := b.rdb.Exists(ctx, "cg:i:"+idHash(testKey, a)).Result(); err != nil || n != 0 {
			t.Fatalf("index key of the deleted record's own identifier left: %d, %v", n, err)
		}
		// Once repaired, a second run finds nothing to do.
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 3, Entries: 3, Records: 2})
	})

	t.Run("TombstoneAndMovedEntriesAreRemoved", func(t *testing.T) {
		// A restored index key names a record that has since been erased,
		// and one that moved to another identifier.
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		gone, moved := rid(t, 10), rid(t, 11)
		old, now := email(t, "old@firma.de"), email(t, "now@firma.de")
		mustApply(t, st, upd(gone, v(1), c4("Ja", "", "", ""), old), upd(moved, v(1), c4("Ja", "", "", ""), old))
		before := indexSnapshot(t, b.rdb, "cg:")
		mustApply(t, st, del(gone, v(2)), upd(moved, v(2), c4("Ja", "", "", ""), now))
		oldKey := "cg:i:" + idHash(testKey, old)
		for id, val := range before[oldKey] { // the index key restored from a backup
			if err := b.rdb.HSet(ctx, oldKey, id, val).Err(); err != nil {
				t.Fatal(err)
			}
		}
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 2, Entries: 3, Repaired: 2, Records: 2})
		wantIDs(t, lookupIDs(t, st, old))
		wantIDs(t, lookupIDs(t, st, now), moved)
	})

	t.Run("StaleLineIsReplaced", func(t *testing.T) {
		// An index key restored from an older backup holds a record's old
		// line: on the direct path the lookup answers with the old consent
		// until RepairIndex puts the record's current line in.
		b := newBackend(t)
		if b.path == "cluster" {
			t.Skip("Cluster lookups read the record, never the entry's value")
		}
		st := b.store(t, cache.Options{})
		id, a := rid(t, 20), email(t, "restored@firma.de")
		key := "cg:i:" + idHash(testKey, a)
		mustApply(t, st, upd(id, v(1), c4("Ja", "", "", ""), a))
		oldLine, err := b.rdb.HGet(ctx, key, id).Result()
		if err != nil {
			t.Fatal(err)
		}
		mustApply(t, st, upd(id, v(2), c4("Nein", "", "", ""), a))
		if err := b.rdb.HSet(ctx, key, id, oldLine).Err(); err != nil {
			t.Fatal(err)
		}
		if res, err := st.Lookup(ctx, []guard.Identifier{a}); err != nil || len(res[0]) != 1 || res[0][0].Consent[guard.Email] != "Ja" {
			t.Fatalf("lookup before repair = %+v, %v; want the restored line's Ja (direct path)", res, err)
		}
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 1, Entries: 1, Repaired: 1, Records: 1})
		if res, err := st.Lookup(ctx, []guard.Identifier{a}); err != nil || len(res[0]) != 1 || res[0][0].Consent[guard.Email] != "Nein" {
			t.Fatalf("lookup after repair = %+v, %v; want Nein", res, err)
		}
	})

	t.Run("EmptyEntryOfALiveRecordIsFilledIn", func(t *testing.T) {
		// An index moved from a Cluster (empty values) to a standalone
		// Redis. On the Cluster path the empty value is the normal entry.
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		id, a := rid(t, 30), email(t, "moved@firma.de")
		mustApply(t, st, upd(id, v(1), c4("Ja", "", "", ""), a))
		key := "cg:i:" + idHash(testKey, a)
		if err := b.rdb.HSet(ctx, key, id, "").Err(); err != nil {
			t.Fatal(err)
		}
		rep := mustRepair(t, st)
		val, err := b.rdb.HGet(ctx, key, id).Result()
		if err != nil {
			t.Fatal(err)
		}
		if b.path == "cluster" {
			wantReport(t, rep, cache.IndexReport{Keys: 1, Entries: 1, Records: 1})
			if val != "" {
				t.Fatalf("Cluster repair wrote value %q", val)
			}
		} else {
			wantReport(t, rep, cache.IndexReport{Keys: 1, Entries: 1, Repaired: 1, Records: 1})
			line, err := b.rdb.HGet(ctx, "cg:{"+id+"}:r", "l").Result()
			if err != nil || val != line {
				t.Fatalf("entry after repair = %q, record line %q (%v)", val, line, err)
			}
		}
		wantIDs(t, lookupIDs(t, st, a), id)
	})

	t.Run("MissingEntriesAreAdded", func(t *testing.T) {
		// X (Ja) and Y (Nein) share info@. Y's entry there is lost: the
		// index key restored from a backup taken before Y carried the
		// address, or an entry lost under schema 2 that Upgrade carried
		// over. No index key names Y for info@, so the key pass cannot see
		// it, and a lookup answers with X alone: the address is allowed
		// although Y refused. Y's own phone lost its index key entirely.
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		g := guard.New(st, guard.Options{})
		x, y := rid(t, 60), rid(t, 61)
		a, info, ph := email(t, "x@firma.de"), email(t, "info@firma.de"), phone(t, "+49 30 901820")
		mustApply(t, st, upd(x, v(1), c4("Ja", "", "", ""), a, info), upd(y, v(1), c4("Nein", "", "", ""), info, ph))
		if err := b.rdb.HDel(ctx, "cg:i:"+idHash(testKey, info), y).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.Del(ctx, "cg:i:"+idHash(testKey, ph)).Err(); err != nil {
			t.Fatal(err)
		}
		wantIDs(t, lookupIDs(t, st, info), x)
		if d, err := g.Check(ctx, guard.Email, info); err != nil || !d.Allowed {
			t.Fatalf("decision before repair = %+v, %v; want X's Ja alone to allow (the fault repaired here)", d, err)
		}
		wantIDs(t, lookupIDs(t, st, ph))
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 2, Entries: 2, Records: 2, Added: 2})
		wantIDs(t, lookupIDs(t, st, info), x, y)
		if d, err := g.Check(ctx, guard.Email, info); err != nil || d.Allowed || d.Reason != guard.ReasonDenied {
			t.Fatalf("decision after repair = %+v, %v; want Y's Nein to deny", d, err)
		}
		wantIDs(t, lookupIDs(t, st, ph), y)
		// Repaired once: a second run finds nothing to do.
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 3, Entries: 4, Records: 2})
	})

	t.Run("HealthyIndexIsLeftAlone", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		var ups []guard.Update
		for n := range 40 {
			ids := []guard.Identifier{email(t, fmt.Sprintf("p%d@firma.de", n)), email(t, fmt.Sprintf("team%d@firma.de", n%5))}
			if n%3 == 0 {
				ids = append(ids, phone(t, fmt.Sprintf("+4930%07d", n)))
			}
			ups = append(ups, upd(rid(t, 100+n), v(1), c4("Ja", "Nein", "", ""), ids...))
		}
		mustApply(t, st, ups...)
		mustApply(t, st, del(rid(t, 100), v(2)))
		before := indexSnapshot(t, b.rdb, "cg:")
		// Keys under the index prefix that are no index keys of this
		// store: skipped, not read (a string would fail the script).
		junk := []string{"cg:i:notahash", "cg:i:" + strings.Repeat("A", 64), "cg:i:" + strings.Repeat("0", 63)}
		for _, k := range junk {
			if err := b.rdb.Set(ctx, k, "x", 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		changes := -1
		if !b.embedded {
			changes = dataChanges(t, b.rdb)
		}
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: len(before), Entries: entryCount(before), Records: 40})
		if !b.embedded {
			// Neither pass wrote anything, not even an equal value.
			if n := dataChanges(t, b.rdb); n != changes {
				t.Fatalf("RepairIndex of a healthy index made %d changes", n-changes)
			}
		}
		for _, k := range junk { // one by one: on Cluster they lie in different slots
			if err := b.rdb.Del(ctx, k).Err(); err != nil {
				t.Fatal(err)
			}
		}
		if after := indexSnapshot(t, b.rdb, "cg:"); !maps.EqualFunc(before, after, maps.Equal) {
			t.Fatal("RepairIndex changed a healthy index")
		}
	})

	t.Run("ThousandsOfKeysAcrossScanPages", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		// Index keys: twice the records. 20,000 on the direct path (the
		// timing in README.md), 5,000 (10 SCAN pages) on the Cluster paths.
		records := 2500
		switch {
		case b.embedded:
			records = 260 // one SCAN page (miniredis ignores COUNT), pipelines of 250: three of index keys, two of records
		case b.path == "direct":
			records = 10000
		}
		ups := make([]guard.Update, 0, 500)
		for n := range records {
			ups = append(ups, upd(rid(t, 10000+n), v(1), c4("Ja", "", "", ""),
				email(t, fmt.Sprintf("k%d@firma.de", n)), phone(t, fmt.Sprintf("+4930%07d", n))))
			if len(ups) == cap(ups) || n == records-1 {
				mustApply(t, st, ups...)
				ups = ups[:0]
			}
		}
		// Every 500th record deleted by hand (2 entries each), and on the
		// direct path every 700th record's email entry emptied.
		want := 0
		for n := 0; n < records; n += 500 {
			if err := b.rdb.Del(ctx, "cg:{"+rid(t, 10000+n)+"}:r").Err(); err != nil {
				t.Fatal(err)
			}
			want += 2
		}
		if b.path != "cluster" {
			for n := 1; n < records; n += 700 {
				if err := b.rdb.HSet(ctx, "cg:i:"+idHash(testKey, email(t, fmt.Sprintf("k%d@firma.de", n))), rid(t, 10000+n), "").Err(); err != nil {
					t.Fatal(err)
				}
				want++
			}
		}
		// Every 600th record's phone index key lost (the record pass adds
		// the entry back).
		lost := 0
		for n := 3; n < records; n += 600 {
			if err := b.rdb.Del(ctx, "cg:i:"+idHash(testKey, phone(t, fmt.Sprintf("+4930%07d", n)))).Err(); err != nil {
				t.Fatal(err)
			}
			lost++
		}
		live := records - (records+499)/500
		if !b.embedded {
			resetStats(t, b.rdb)
		}
		start := time.Now()
		rep := mustRepair(t, st)
		took := time.Since(start)
		t.Logf("RepairIndex (%s) over %d index keys, %d entries, %d records: %v (%d repaired, %d added)", b.path, rep.Keys, rep.Entries, rep.Records, took, rep.Repaired, rep.Added)
		// SCAN may return a key twice while Redis resizes its table.
		if rep.Keys < 2*records-lost || rep.Entries < 2*records-lost || rep.Repaired != want || rep.Records < live || rep.Added != lost {
			t.Fatalf("RepairIndex = %+v, want %d keys and entries, %d repaired, %d records, %d added", rep, 2*records-lost, want, live, lost)
		}
		if !b.embedded {
			// Each pass SCANs the whole keyspace: index, record and
			// history keys, twice the index keys.
			if n := commandCalls(t, b.rdb, "scan"); n < 2*(4*records)/2000 {
				t.Fatalf("%d SCAN calls for two passes over %d keys", n, 4*records)
			}
		}
		wantIDs(t, lookupIDs(t, st, email(t, "k0@firma.de")))
		wantIDs(t, lookupIDs(t, st, phone(t, fmt.Sprintf("+4930%07d", 0))))
		wantIDs(t, lookupIDs(t, st, email(t, "k1@firma.de")), rid(t, 10001))
		wantIDs(t, lookupIDs(t, st, email(t, "k2@firma.de")), rid(t, 10002))
		wantIDs(t, lookupIDs(t, st, phone(t, fmt.Sprintf("+4930%07d", 3))), rid(t, 10003))
	})

	t.Run("PrefixWithGlobCharactersTouchesOnlyItsOwnKeys", func(t *testing.T) {
		// Each prefix, taken as a glob pattern, would also match its
		// neighbour's keys. The neighbour has an orphaned entry that the
		// glob store's repair must leave alone.
		for _, tc := range []struct{ prefix, neighbour string }{
			{"c*g:", "cXg:"},
			{"c?g:", "cAg:"},
			{"c[x]g:", "cxg:"},
			{`c\g:`, "cg:"},
		} {
			t.Run(tc.prefix, func(t *testing.T) {
				b := fresh(t)
				st := b.store(t, cache.Options{Prefix: tc.prefix})
				nb := b.store(t, cache.Options{Prefix: tc.neighbour})
				a, o := email(t, "a@firma.de"), email(t, "o@firma.de")
				mustApply(t, st, upd(rid(t, 1), v(1), c4("Ja", "", "", ""), a))
				mustApply(t, nb, upd(rid(t, 1), v(1), c4("Ja", "", "", ""), a), upd(rid(t, 2), v(1), c4("Ja", "", "", ""), o))
				if err := b.rdb.Del(ctx, tc.neighbour+"{"+rid(t, 2)+"}:r").Err(); err != nil {
					t.Fatal(err)
				}
				neighbourIndex := indexSnapshot(t, b.rdb, tc.neighbour)
				if len(neighbourIndex) != 2 {
					t.Fatalf("neighbour index = %v", neighbourIndex)
				}
				wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 1, Entries: 1, Records: 1})
				if got := indexSnapshot(t, b.rdb, tc.neighbour); !maps.EqualFunc(neighbourIndex, got, maps.Equal) {
					t.Fatalf("repair under %q changed the index under %q", tc.prefix, tc.neighbour)
				}
				wantReport(t, mustRepair(t, nb), cache.IndexReport{Keys: 2, Entries: 2, Repaired: 1, Records: 1})
				wantIDs(t, lookupIDs(t, st, a), rid(t, 1))
				wantIDs(t, lookupIDs(t, nb, a), rid(t, 1))
				wantIDs(t, lookupIDs(t, nb, o))
			})
		}
	})

	t.Run("ScriptCacheFlushed", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		id, a := rid(t, 40), email(t, "flush@firma.de")
		mustApply(t, st, upd(id, v(1), c4("Ja", "", "", ""), a), upd(rid(t, 41), v(1), c4("Ja", "", "", ""), a))
		if err := b.rdb.Del(ctx, "cg:{"+rid(t, 41)+"}:r").Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: 1, Entries: 2, Repaired: 1, Records: 1})
		wantIDs(t, lookupIDs(t, st, a), id)
	})

	t.Run("CancelledContext", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		mustApply(t, st, upd(rid(t, 50), v(1), c4("Ja", "", "", ""), email(t, "c@firma.de")))
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		rep, err := st.RepairIndex(cctx)
		if !errors.Is(err, context.Canceled) || rep != (cache.IndexReport{}) {
			t.Fatalf("RepairIndex on a cancelled context = %+v, %v", rep, err)
		}
	})

	t.Run("CancelledMidScan", func(t *testing.T) {
		// The context ends when RepairIndex sends the page-th SCAN with
		// MATCH match: it returns what the pages before did, with the
		// context's error. The embedded store returns every key in one
		// page, so there only the cut between the passes exists.
		for _, tc := range []struct {
			name, match string
			page        int
		}{
			{"InTheKeyPass", "cg:i:*", 2},
			{"BetweenThePasses", "cg:{*}:r", 1},
			{"InTheRecordPass", "cg:{*}:r", 2},
		} {
			t.Run(tc.name, func(t *testing.T) {
				b := newBackend(t)
				if b.embedded && tc.page > 1 {
					t.Skip("miniredis answers SCAN in one page")
				}
				// 1,201 keys: several pages of COUNT 500 on a real server;
				// the embedded store, one page anyway, compiles every
				// script run.
				records := 400
				if b.embedded {
					records = 40
				}
				var ups []guard.Update
				for n := range records {
					ups = append(ups, upd(rid(t, 70000+n), v(1), c4("Ja", "", "", ""), email(t, fmt.Sprintf("m%d@firma.de", n))))
				}
				mustApply(t, b.store(t, cache.Options{}), ups...)
				cctx, cancel := context.WithCancel(ctx)
				defer cancel()
				h := &scanCancel{match: tc.match, page: tc.page, cancel: cancel}
				st := withHook(t, b, h).store(t, cache.Options{})
				rep, err := st.RepairIndex(cctx)
				if !errors.Is(err, context.Canceled) {
					t.Fatalf("RepairIndex cancelled at SCAN page %d of %s = %+v, %v; want context.Canceled", tc.page, tc.match, rep, err)
				}
				before := len(h.before())
				t.Logf("cut at SCAN page %d of %s, %d keys before: %+v", tc.page, tc.match, before, rep)
				want := cache.IndexReport{Keys: records, Entries: records}
				if tc.match == "cg:i:*" {
					want = cache.IndexReport{Keys: before, Entries: before}
					if before == 0 || before >= records {
						t.Fatalf("%d of %d index keys before the cut: not mid-scan", before, records)
					}
				} else {
					want.Records = before
					if tc.page > 1 && (before == 0 || before >= records) {
						t.Fatalf("%d of %d records before the cut: not mid-scan", before, records)
					}
				}
				wantReport(t, rep, want)
			})
		}
	})

	t.Run("MisconfiguredStoreRefuses", func(t *testing.T) {
		b := fresh(t)
		st := cache.New(b.rdb, cache.Options{HashKey: []byte("short")})
		if _, err := st.RepairIndex(ctx); !errors.Is(err, cache.ErrConfig) {
			t.Fatalf("RepairIndex with a short key: %v", err)
		}
	})
}

// dataChanges is the number of changes Redis made to its data since the
// last save (INFO persistence, rdb_changes_since_last_save). A command
// that changes nothing (an HSETNX of an existing field) adds none.
func dataChanges(tb testing.TB, rdb redis.UniversalClient) int {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "persistence").Result()
	if err != nil {
		tb.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^rdb_changes_since_last_save:(\d+)`).FindStringSubmatch(info)
	if m == nil {
		tb.Fatalf("INFO persistence without rdb_changes_since_last_save:\n%s", info)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// scanCancel is a go-redis hook that cancels a context when the page-th
// SCAN with MATCH match is sent, before it goes out, and keeps the keys
// the pages before it returned.
type scanCancel struct {
	match  string
	page   int
	cancel context.CancelFunc

	mu    sync.Mutex
	sent  int
	pages []string
}

func (h *scanCancel) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scanCancel) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *scanCancel) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		sc, ok := cmd.(*redis.ScanCmd)
		if args := cmd.Args(); !ok || len(args) < 4 || args[2] != "match" || args[3] != h.match {
			return next(ctx, cmd)
		}
		h.mu.Lock()
		h.sent++
		n := h.sent
		h.mu.Unlock()
		if n >= h.page {
			h.cancel()
			return next(ctx, cmd)
		}
		err := next(ctx, cmd)
		if err == nil {
			keys, _ := sc.Val()
			h.mu.Lock()
			h.pages = append(h.pages, keys...)
			h.mu.Unlock()
		}
		return err
	}
}

// before returns the keys of the SCAN pages before the cut.
func (h *scanCancel) before() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.pages)
}

// withHook returns b with a client of its own to the same Redis whose
// commands pass through hook; on Cluster the hook sits on every node's
// client, which is where RepairIndex and Upgrade send SCAN.
func withHook(tb testing.TB, b backend, hook redis.Hook) backend {
	tb.Helper()
	switch c := b.rdb.(type) {
	case *redis.ClusterClient:
		o := c.Options()
		cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: o.Addrs, ContextTimeoutEnabled: true})
		cc.OnNewNode(func(n *redis.Client) { n.AddHook(hook) })
		tb.Cleanup(func() { _ = cc.Close() })
		b.rdb = cc
	case *redis.Client:
		o := c.Options()
		nc := redis.NewClient(&redis.Options{Addr: o.Addr, MaxRetries: -1, ContextTimeoutEnabled: true})
		nc.AddHook(hook)
		tb.Cleanup(func() { _ = nc.Close() })
		b.rdb = nc
	default:
		tb.Fatalf("no hook for a %T", b.rdb)
	}
	return b
}
