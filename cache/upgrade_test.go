package cache_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/guard"
)

// TestUpgradeRedis runs the Upgrade suite on the direct path: one upgrade
// script run per index key, reading the records itself.
func TestUpgradeRedis(t *testing.T) { runUpgrade(t, realBackends(t, nil, "direct")) }

// TestUpgradeRedisClusterLookup runs it the way the store works on
// Cluster: sets and records read first, a script on the index key alone.
func TestUpgradeRedisClusterLookup(t *testing.T) {
	runUpgrade(t, realBackends(t, cache.UseClusterLookup, "cluster"))
}

func TestUpgradeEmbedded(t *testing.T) { runUpgrade(t, embeddedBackends(t)) }

// TestUpgradeRedisCluster runs it on a real one-node Redis Cluster through
// a redis.ClusterClient (every master scanned).
func TestUpgradeRedisCluster(t *testing.T) { runUpgrade(t, clusterBackends(t)) }

// toSchema2 rewrites the index under "cg:" as the schema 2 release left
// it: each index hash becomes a set of its field names, and the meta hash
// says schema 2. Records are laid out alike in both schemas.
func toSchema2(tb testing.TB, rdb redis.UniversalClient, idx map[string]map[string]string) {
	tb.Helper()
	ctx := context.Background()
	for k, m := range idx { // key by key: on Cluster they lie in different slots
		if err := rdb.Del(ctx, k).Err(); err != nil {
			tb.Fatal(err)
		}
		if len(m) > 0 {
			if err := rdb.SAdd(ctx, k, slices.Collect(maps.Keys(m))).Err(); err != nil {
				tb.Fatal(err)
			}
		}
	}
	setSchema(tb, rdb, "2")
}

// histories is every record's history under "cg:", raw, read in one
// pipeline.
func histories(tb testing.TB, rdb redis.UniversalClient) map[string][]string {
	tb.Helper()
	ctx := context.Background()
	cmds := map[string]*redis.StringSliceCmd{}
	pipe := rdb.Pipeline()
	iter := rdb.Scan(ctx, 0, "cg:{*}:h", 1000).Iterator()
	for iter.Next(ctx) {
		cmds[iter.Val()] = pipe.LRange(ctx, iter.Val(), 0, -1)
	}
	if err := iter.Err(); err != nil {
		tb.Fatal(err)
	}
	if len(cmds) > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			tb.Fatal(err)
		}
	}
	out := make(map[string][]string, len(cmds))
	for k, c := range cmds {
		out[k] = c.Val()
	}
	return out
}

func mustUpgrade(tb testing.TB, st *cache.Store) cache.UpgradeReport {
	tb.Helper()
	rep, err := st.Upgrade(context.Background())
	if err != nil {
		tb.Fatalf("Upgrade: %v (after %+v)", err, rep)
	}
	return rep
}

func wantSchema(tb testing.TB, rdb redis.UniversalClient, want string) {
	tb.Helper()
	got, err := rdb.HGet(context.Background(), "cg:meta", "schema").Result()
	if err != nil || got != want {
		tb.Fatalf("schema = %q, %v; want %q", got, err, want)
	}
}

// schema2Data is a store's data as the schema 2 release left it, with the
// schema 3 index and the histories it must come back with.
type schema2Data struct {
	index   map[string]map[string]string // index as schema 3 writes it
	history map[string][]string
	sets    int // index keys that are sets, stale-only ones included
	stale   int // set members that back no live record carrying the hash
	lookups map[string][]string
	ids     map[string]guard.Identifier
}

// writeSchema2 writes records with the current store, turns the index
// into schema 2's sets and adds members the schema 2 index could hold but
// no live record backs: a record that dropped the identifier, a tombstone,
// an Id with no record. shared > 0 adds that many records carrying one
// identifier they all share (a large set), the first 300 of them one more
// identifier each (many index keys).
func writeSchema2(t *testing.T, b backend, shared int) schema2Data {
	t.Helper()
	ctx := context.Background()
	st := b.store(t, cache.Options{})
	x, y, z, gone, moved, phantom := rid(t, 1), rid(t, 2), rid(t, 3), rid(t, 4), rid(t, 5), rid(t, 99)
	d := schema2Data{ids: map[string]guard.Identifier{
		"a": email(t, "a@firma.de"), "info": email(t, "info@firma.de"), "ph": phone(t, "+49 30 901820"),
		"c": email(t, "c@firma.de"), "g": email(t, "gone@firma.de"), "old": email(t, "old@firma.de"),
		"new": email(t, "new@firma.de"), "team": email(t, "team@firma.de"),
	}}
	id := d.ids
	mustApply(t, st,
		upd(x, v(1), c4("Ja", "", "", ""), id["a"], id["info"]),
		upd(y, v(1), c4("Nein", "Ja", "", ""), id["info"], id["ph"]),
		upd(z, v(1), c4("Ja", "", "", ""), id["c"]),
		upd(gone, v(1), c4("Ja", "", "", ""), id["g"], id["info"]),
		upd(moved, v(1), c4("Ja", "", "", ""), id["old"]),
	)
	mustApply(t, st, del(gone, v(2)), upd(moved, v(2), c4("Ja", "", "", ""), id["new"]))
	var ups []guard.Update
	var team []string
	for n := range shared {
		ids := []guard.Identifier{id["team"]}
		if n < 300 {
			ids = append(ids, email(t, fmt.Sprintf("k%d@firma.de", n)))
		}
		ups = append(ups, upd(rid(t, 1000+n), v(1), c4("Ja", "", "", ""), ids...))
		team = append(team, rid(t, 1000+n))
		if len(ups) == 1000 {
			mustApply(t, st, ups...)
			ups = ups[:0]
		}
	}
	if len(ups) > 0 {
		mustApply(t, st, ups...)
	}
	d.lookups = map[string][]string{
		"a": {x}, "info": {x, y}, "ph": {y}, "c": {z}, "g": nil, "old": nil, "new": {moved}, "team": team,
	}
	d.index = indexSnapshot(t, b.rdb, "cg:")
	d.history = histories(t, b.rdb)
	toSchema2(t, b.rdb, d.index)
	key := func(name string) string { return "cg:i:" + idHash(testKey, id[name]) }
	for _, p := range []struct{ key, id string }{
		{key("info"), gone},  // a tombstone, in a set that stays
		{key("g"), gone},     // a tombstone, alone in its set
		{key("old"), moved},  // a record that dropped the identifier
		{key("c"), phantom},  // an Id with no record
		{key("old"), "junk"}, // not even an Id
	} {
		if err := b.rdb.SAdd(ctx, p.key, p.id).Err(); err != nil {
			t.Fatal(err)
		}
	}
	d.sets, d.stale = len(d.index)+2, 5
	return d
}

// check verifies what an upgraded store must answer: exactly the schema 3
// index, the same histories, lookups of the live carrying records.
func (d schema2Data) check(t *testing.T, b backend, st *cache.Store) {
	t.Helper()
	got := indexSnapshot(t, b.rdb, "cg:")
	keys := append(slices.Collect(maps.Keys(got)), slices.Collect(maps.Keys(d.index))...)
	slices.Sort(keys)
	for _, k := range keys {
		if !maps.Equal(got[k], d.index[k]) {
			t.Fatalf("index key %s after upgrade = %q, schema 3 writes %q", k, got[k], d.index[k])
		}
	}
	if got := histories(t, b.rdb); !maps.EqualFunc(d.history, got, slices.Equal) {
		t.Fatal("histories changed by the upgrade")
	}
	for name, want := range d.lookups {
		got := lookupIDs(t, st, d.ids[name])
		if want == nil {
			want = []string{}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("lookup of %s after upgrade = %v, want %v", name, got, want)
		}
	}
}

func runUpgrade(t *testing.T, fresh func(*testing.T) backend) {
	ctx := context.Background()
	newBackend := checked(fresh)

	t.Run("ConvertsKeepingRecordsAndHistory", func(t *testing.T) {
		b := newBackend(t)
		// 306 index keys (two pipelines) and a set of 300 members; on the
		// embedded store, which compiles every script run, 36 and 30. On
		// the direct path of a real server the set has 4,000 members, its
		// hash 8,000 values: more than one HSET can take from Lua's unpack
		// (the C stack holds 8,000), so this fails unless the script
		// writes them in chunks (luaHSetChunks: 20 HSETs here).
		shared := 300
		switch {
		case b.embedded:
			shared = 30
		case b.path == "direct":
			shared = 4000
		}
		d := writeSchema2(t, b, shared)
		err := b.uninitialised(cache.Options{}).Init(ctx)
		if !errors.Is(err, cache.ErrSchema) || !strings.Contains(err.Error(), "consentguard repair-index") {
			t.Fatalf("Init on schema 2: %v; want ErrSchema naming repair-index", err)
		}
		rep := mustUpgrade(t, b.uninitialised(cache.Options{}))
		want := cache.UpgradeReport{Upgraded: true, Keys: d.sets, Entries: entryCount(d.index), Dropped: d.stale}
		if rep != want {
			t.Fatalf("Upgrade = %+v, want %+v", rep, want)
		}
		wantSchema(t, b.rdb, "3")
		st := b.store(t, cache.Options{}) // Init accepts it now
		d.check(t, b, st)
		// Nothing left for RepairIndex; a second Upgrade is a no-op.
		wantReport(t, mustRepair(t, st), cache.IndexReport{Keys: len(d.index), Entries: entryCount(d.index), Records: len(d.history)})
		if rep := mustUpgrade(t, st); rep != (cache.UpgradeReport{}) {
			t.Fatalf("second Upgrade = %+v, want nothing done", rep)
		}
		// The store writes on: a record moves to another identifier.
		mustApply(t, st, upd(rid(t, 3), v(2), c4("Nein", "", "", ""), d.ids["a"]))
		wantIDs(t, lookupIDs(t, st, d.ids["a"]), rid(t, 1), rid(t, 3))
		wantIDs(t, lookupIDs(t, st, d.ids["c"]))
	})

	t.Run("InterruptedUpgradeCompletes", func(t *testing.T) {
		// A run stopped after converting some keys: those are hashes
		// already, the rest sets, and the schema still says 2.
		b := newBackend(t)
		d := writeSchema2(t, b, 0)
		keys := slices.Sorted(maps.Keys(d.index))
		done := 0
		for i, k := range keys {
			if i%2 != 0 {
				continue
			}
			if err := b.rdb.Del(ctx, k).Err(); err != nil {
				t.Fatal(err)
			}
			for id, val := range d.index[k] {
				if err := b.rdb.HSet(ctx, k, id, val).Err(); err != nil {
					t.Fatal(err)
				}
			}
			done++
		}
		wantSchema(t, b.rdb, "2")
		rep := mustUpgrade(t, b.uninitialised(cache.Options{}))
		if !rep.Upgraded || rep.Keys != d.sets-done {
			t.Fatalf("Upgrade after an interrupted run = %+v, want %d keys converted", rep, d.sets-done)
		}
		d.check(t, b, b.store(t, cache.Options{}))
	})

	t.Run("WrongHashKeyRefused", func(t *testing.T) {
		b := newBackend(t)
		d := writeSchema2(t, b, 0)
		other := b.uninitialised(cache.Options{HashKey: []byte("another-hash-key-0123456789")})
		rep, err := other.Upgrade(ctx)
		if !errors.Is(err, guard.ErrHashKeyMismatch) || rep != (cache.UpgradeReport{}) {
			t.Fatalf("Upgrade under another hash key = %+v, %v; want ErrHashKeyMismatch", rep, err)
		}
		wantSchema(t, b.rdb, "2")
		if typ, err := b.rdb.Type(ctx, "cg:i:"+idHash(testKey, d.ids["a"])).Result(); err != nil || typ != "set" {
			t.Fatalf("index key after a refused upgrade: %q, %v; want the set untouched", typ, err)
		}
		mustUpgrade(t, b.uninitialised(cache.Options{}))
		d.check(t, b, b.store(t, cache.Options{}))
	})

	t.Run("OtherSchemasRefused", func(t *testing.T) {
		b := newBackend(t)
		st := b.uninitialised(cache.Options{})
		// A Redis never written: nothing to upgrade, and nothing written.
		if rep := mustUpgrade(t, st); rep != (cache.UpgradeReport{}) {
			t.Fatalf("Upgrade of an empty Redis = %+v", rep)
		}
		if n, err := b.rdb.Exists(ctx, "cg:meta").Result(); err != nil || n != 0 {
			t.Fatalf("Upgrade of an empty Redis wrote the meta hash: %d, %v", n, err)
		}
		b.store(t, cache.Options{})
		for _, old := range []string{"1", "", "4"} {
			setSchema(t, b.rdb, old)
			rep, err := st.Upgrade(ctx)
			if !errors.Is(err, cache.ErrSchema) || errors.Is(err, guard.ErrHashKeyMismatch) || rep != (cache.UpgradeReport{}) {
				t.Fatalf("Upgrade of schema %q = %+v, %v; want ErrSchema", old, rep, err)
			}
			// Init's message for these is unchanged: no upgrade offered.
			if err := st.Init(ctx); !errors.Is(err, cache.ErrSchema) || strings.Contains(err.Error(), "repair-index") {
				t.Fatalf("Init on schema %q: %v", old, err)
			}
		}
		setSchema(t, b.rdb, "3")
	})

	t.Run("CancelledContext", func(t *testing.T) {
		b := newBackend(t)
		d := writeSchema2(t, b, 0)
		st := b.uninitialised(cache.Options{})
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if rep, err := st.Upgrade(cctx); !errors.Is(err, context.Canceled) || rep.Upgraded {
			t.Fatalf("Upgrade on a cancelled context = %+v, %v", rep, err)
		}
		wantSchema(t, b.rdb, "2")
		mustUpgrade(t, st)
		d.check(t, b, b.store(t, cache.Options{}))
	})

	t.Run("CancelledMidScan", func(t *testing.T) {
		// The context ends when Upgrade sends its second SCAN page: the
		// keys of the first page are converted and counted, the schema
		// stays 2, and the next run converts the rest.
		b := newBackend(t)
		if b.embedded {
			t.Skip("miniredis answers SCAN in one page")
		}
		// About 1,100 keys, 308 of them index keys: several pages of
		// COUNT 500.
		d := writeSchema2(t, b, 400)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		h := &scanCancel{match: "cg:i:*", page: 2, cancel: cancel}
		rep, err := withHook(t, b, h).uninitialised(cache.Options{}).Upgrade(cctx)
		first := h.before()
		t.Logf("cut at SCAN page 2, %d of %d index keys before: %+v", len(first), d.sets, rep)
		if !errors.Is(err, context.Canceled) || rep.Upgraded || rep.Keys != len(first) || len(first) == 0 || len(first) >= d.sets {
			t.Fatalf("Upgrade cancelled at SCAN page 2 = %+v, %v; want context.Canceled after the %d keys of page 1 (of %d)", rep, err, len(first), d.sets)
		}
		wantSchema(t, b.rdb, "2")
		for _, k := range first { // converted: a hash, or gone where no member was left
			if typ, err := b.rdb.Type(ctx, k).Result(); err != nil || (typ != "hash" && typ != "none") {
				t.Fatalf("index key %s of the first page after the cut: %q, %v", k, typ, err)
			}
		}
		rest := mustUpgrade(t, b.uninitialised(cache.Options{}))
		if !rest.Upgraded || rep.Keys+rest.Keys != d.sets || rep.Entries+rest.Entries != entryCount(d.index) || rep.Dropped+rest.Dropped != d.stale {
			t.Fatalf("Upgrade after the cut = %+v, with %+v before; want %d keys, %d entries, %d dropped in all", rest, rep, d.sets, entryCount(d.index), d.stale)
		}
		d.check(t, b, b.store(t, cache.Options{}))
	})

	t.Run("ScriptCacheFlushed", func(t *testing.T) {
		b := newBackend(t)
		d := writeSchema2(t, b, 0)
		if err := b.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if rep := mustUpgrade(t, b.uninitialised(cache.Options{})); rep.Keys != d.sets {
			t.Fatalf("Upgrade after SCRIPT FLUSH = %+v, want %d keys", rep, d.sets)
		}
		d.check(t, b, b.store(t, cache.Options{}))
	})

	t.Run("MisconfiguredStoreRefuses", func(t *testing.T) {
		b := fresh(t)
		st := cache.New(b.rdb, cache.Options{HashKey: []byte("short")})
		if _, err := st.Upgrade(ctx); !errors.Is(err, cache.ErrConfig) {
			t.Fatalf("Upgrade with a short key: %v", err)
		}
	})
}
