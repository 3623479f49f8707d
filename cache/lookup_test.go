package cache_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// commandCalls returns the calls of cmd (lower case, e.g. "sort_ro") since
// the last CONFIG RESETSTAT, from INFO commandstats.
func commandCalls(tb testing.TB, rdb redis.UniversalClient, cmd string) int {
	tb.Helper()
	info, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		tb.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^cmdstat_` + regexp.QuoteMeta(cmd) + `:calls=(\d+)`).FindStringSubmatch(info)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func resetStats(tb testing.TB, rdb redis.UniversalClient) {
	tb.Helper()
	if err := rdb.ConfigResetStat(context.Background()).Err(); err != nil {
		tb.Fatal(err)
	}
}

// TestSortLookupVerifies: on the SORT_RO path an index entry is only a hint,
// exactly as on the others. An entry naming a record that dropped the
// identifier, a tombstone, or a record that was never written yields
// nothing and is cleaned up; the valid entries are returned in Id order.
// Single lookups and pipelined batches both go through SORT_RO (and never
// through the script).
func TestSortLookupVerifies(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := cache.New(rdb, cache.Options{HashKey: testKey})
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if p := cache.LookupPath(st); p != "sort" {
		t.Fatalf("lookup path = %q, want sort", p)
	}
	shared := email(t, "info@firma.de")
	other := email(t, "other@firma.de")
	x, y := rid(t, 1), rid(t, 2)
	moved, dead, never := rid(t, 3), rid(t, 4), rid(t, 5)
	mustApply(t, st,
		upd(y, v(1), c4("Nein", "", "", ""), shared),
		upd(x, v(1), c4("Ja", "", "", ""), shared),
		upd(moved, v(1), c4("Ja", "Ja", "Ja", "Ja"), shared),
		upd(dead, v(1), c4("Ja", "Ja", "Ja", "Ja"), shared),
	)
	// moved drops the identifier (it now carries only other), dead becomes
	// a tombstone; then simulate lost SREMs and a stray SADD.
	mustApply(t, st, upd(moved, v(2), c4("Ja", "Ja", "Ja", "Ja"), other), del(dead, v(2)))
	key := "cg:i:" + idHash(testKey, shared)
	if err := rdb.SAdd(ctx, key, moved, dead, never).Err(); err != nil {
		t.Fatal(err)
	}
	// Even a tombstone that still lists the hash (not something the write
	// script leaves behind) is not live: it has no lookup line.
	if err := rdb.HSet(ctx, "cg:{"+dead+"}:r", "i", idHash(testKey, shared)).Err(); err != nil {
		t.Fatal(err)
	}
	// A hash that merely contains part of another is not carried.
	if err := rdb.SAdd(ctx, "cg:i:"+idHash(testKey, other)[:63], moved).Err(); err != nil {
		t.Fatal(err)
	}

	resetStats(t, rdb)
	res, err := st.Lookup(ctx, []guard.Identifier{shared})
	if err != nil {
		t.Fatal(err)
	}
	if len(res[0]) != 2 || res[0][0].ID != x || res[0][1].ID != y ||
		res[0][0].Consent != c4("Ja", "", "", "") || res[0][1].Consent != c4("Nein", "", "", "") ||
		!res[0][0].Version.Equal(v(1)) || res[0][0].Object != "Contact" || res[0][0].UpdatedAt.IsZero() {
		t.Fatalf("records = %+v", res[0])
	}
	if n := commandCalls(t, rdb, "sort_ro"); n != 1 {
		t.Fatalf("SORT_RO calls = %d, want 1", n)
	}
	if n := commandCalls(t, rdb, "evalsha_ro") + commandCalls(t, rdb, "eval_ro"); n != 0 {
		t.Fatalf("script calls = %d on the SORT_RO path", n)
	}
	// The tombstone and the record never written come back as nil, without
	// their Ids: one SMEMBERS finds them for the cleanup.
	if n := commandCalls(t, rdb, "smembers"); n != 1 {
		t.Fatalf("SMEMBERS calls = %d, want 1 (cleanup)", n)
	}
	// Stale entries were removed, valid ones kept.
	members, err := rdb.SMembers(ctx, key).Result()
	if err != nil || len(members) != 2 {
		t.Fatalf("index after cleanup = %v, %v", members, err)
	}
	wantIDs(t, lookupIDs(t, st, other), moved)
	// A clean index costs the one SORT_RO and nothing else.
	resetStats(t, rdb)
	wantIDs(t, lookupIDs(t, st, shared), x, y)
	for cmd, want := range map[string]int{"sort_ro": 1, "smembers": 0, "srem": 0, "hmget": 0, "hget": 0} {
		if n := commandCalls(t, rdb, cmd); n != want {
			t.Fatalf("%s calls for a clean lookup = %d, want %d", cmd, n, want)
		}
	}

	// The same in a pipelined batch, with record Ids (a tombstone's Id gives
	// nothing) and the partial-hash key.
	if err := rdb.SAdd(ctx, key, moved, dead, never).Err(); err != nil {
		t.Fatal(err)
	}
	resetStats(t, rdb)
	ids := []guard.Identifier{
		shared,
		{Kind: guard.KindRecordID, Value: dead},
		{Kind: guard.KindRecordID, Value: x[:15]},
		other,
		{Kind: guard.KindRecordID, Value: never},
		shared,
	}
	res, err = st.Lookup(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	want := [][]string{{x, y}, {}, {x}, {moved}, {}, {x, y}}
	for i := range ids {
		got := []string{}
		for _, r := range res[i] {
			got = append(got, r.ID)
		}
		wantIDs(t, got, want[i]...)
	}
	if n := commandCalls(t, rdb, "sort_ro"); n != 3 {
		t.Fatalf("SORT_RO calls = %d, want 3", n)
	}
	if n := commandCalls(t, rdb, "hget"); n != 3 {
		t.Fatalf("HGET calls = %d, want 3", n)
	}
	// A caller appending to one result must not overwrite another's.
	res[2] = append(res[2], guard.Record{ID: "appended"})
	if res[3][0].ID != moved {
		t.Fatalf("append to one result changed another: %+v", res[3])
	}
	if n, _ := rdb.SCard(ctx, key).Result(); n != 2 {
		t.Fatalf("stale entries left after batch: %d members", n)
	}

	// A batch large enough to go out as several concurrent pipelines.
	if err := rdb.SAdd(ctx, key, moved, dead, never).Err(); err != nil {
		t.Fatal(err)
	}
	big := make([]guard.Identifier, 0, 1000*len(ids))
	for range 1000 {
		big = append(big, ids...)
	}
	res, err = st.Lookup(ctx, big)
	if err != nil || len(res) != len(big) {
		t.Fatalf("big batch: %d results, %v", len(res), err)
	}
	for i := range big {
		got := []string{}
		for _, r := range res[i] {
			got = append(got, r.ID)
		}
		wantIDs(t, got, want[i%len(ids)]...)
	}
	if n, _ := rdb.SCard(ctx, key).Result(); n != 2 {
		t.Fatalf("stale entries left after big batch: %d members", n)
	}
}

// TestSortLookupWrongTypeFailsClosed: a data error (an index key holding a
// string) fails the lookup and does not switch the store to the script.
func TestSortLookupWrongTypeFailsClosed(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := cache.New(rdb, cache.Options{HashKey: testKey})
	if err := st.Init(ctx); err != nil {
		t.Fatal(err)
	}
	a := email(t, "a@example.de")
	if err := rdb.Set(ctx, "cg:i:"+idHash(testKey, a), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, ids := range [][]guard.Identifier{{a}, {email(t, "b@example.de"), a}} {
		if _, err := st.Lookup(ctx, ids); err == nil || !redis.HasErrorPrefix(errors.Unwrap(err), "WRONGTYPE") {
			t.Fatalf("Lookup(%d) on a wrong-type index key: %v, want WRONGTYPE", len(ids), err)
		}
	}
	if p := cache.LookupPath(st); p != "sort" {
		t.Fatalf("lookup path after WRONGTYPE = %q, want sort", p)
	}
}

// TestSortFallback: where Redis refuses SORT_RO with GET patterns, the store
// answers through the Lua script and stays there. Found by Init's probe,
// or by the first lookup when Init was not called.
func TestSortFallback(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	// Users: one allowed every key and one allowed to read every key (SORT
	// GET works for both), one limited to the consentguard prefix (Redis 7
	// refuses SORT GET patterns to a user without read access to all keys),
	// one without SORT_RO, one without any of the *_RO commands.
	for _, acl := range [][]any{
		{"ACL", "SETUSER", "allkeys", "on", ">pw", "~*", "+@all"},
		{"ACL", "SETUSER", "readall", "on", ">pw", "%R~*", "~cg:*", "+@all"},
		{"ACL", "SETUSER", "prefixed", "on", ">pw", "~cg:*", "+@all"},
		{"ACL", "SETUSER", "nosort", "on", ">pw", "~*", "+@all", "-sort_ro"},
		// Like Redis 6: neither SORT_RO nor EVALSHA_RO / EVAL_RO.
		{"ACL", "SETUSER", "noro", "on", ">pw", "~*", "+@all", "-sort_ro", "-evalsha_ro", "-eval_ro"},
	} {
		if err := admin.Do(ctx, acl...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	client := func(user string) *redis.Client {
		c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: user, Password: "pw"})
		t.Cleanup(func() { c.Close() })
		return c
	}
	emb, err := cache.NewEmbedded()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(emb.Close)

	a := email(t, "fallback@example.de")
	feed := func(t *testing.T, rdb redis.UniversalClient) {
		w := cache.New(rdb, cache.Options{HashKey: testKey})
		if err := w.Init(ctx); err != nil {
			t.Fatal(err)
		}
		mustApply(t, w, upd(rid(t, 1), v(1), c4("Ja", "", "", ""), a))
	}
	feed(t, admin)
	feed(t, emb.Client())

	for _, tc := range []struct {
		name string
		rdb  redis.UniversalClient
		want string
	}{
		{"AllKeysUser", client("allkeys"), "sort"},
		{"ReadAllKeysUser", client("readall"), "sort"},
		{"PrefixedUser", client("prefixed"), "script"},
		{"NoSortUser", client("nosort"), "script"},
		{"NoReadOnlyCommandsUser", client("noro"), "script"},
		{"Embedded", emb.Client(), "script"},
	} {
		for _, init := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/init=%v", tc.name, init), func(t *testing.T) {
				st := cache.New(tc.rdb, cache.Options{HashKey: testKey})
				if init {
					if err := st.Init(ctx); err != nil {
						t.Fatal(err)
					}
					if p := cache.LookupPath(st); p != tc.want {
						t.Fatalf("path after Init = %q, want %q", p, tc.want)
					}
				} else if p := cache.LookupPath(st); p != "sort" {
					t.Fatalf("path before the first lookup = %q, want sort", p)
				}
				// Single and batch lookups answer correctly either way.
				wantIDs(t, lookupIDs(t, st, a), rid(t, 1))
				if p := cache.LookupPath(st); p != tc.want {
					t.Fatalf("path after a lookup = %q, want %q", p, tc.want)
				}
				res, err := st.Lookup(ctx, []guard.Identifier{email(t, "x@example.de"), a, {Kind: guard.KindRecordID, Value: rid(t, 1)}})
				if err != nil || len(res[0]) != 0 || len(res[1]) != 1 || len(res[2]) != 1 {
					t.Fatalf("batch = %+v, %v", res, err)
				}
			})
		}
	}

	// A batch whose first lookup meets the refusal is answered in full.
	st := cache.New(client("prefixed"), cache.Options{HashKey: testKey})
	ids := make([]guard.Identifier, 6000) // several pipelines
	for i := range ids {
		ids[i] = a
	}
	res, err := st.Lookup(ctx, ids)
	if err != nil || len(res[0]) != 1 || len(res[5999]) != 1 || cache.LookupPath(st) != "script" {
		t.Fatalf("batch on refusal: %v, path %s", err, cache.LookupPath(st))
	}
}
