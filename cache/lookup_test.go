package cache_test

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// commandCalls returns the calls of cmd (lower case, e.g. "hvals") since
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

// TestDirectLookup: on a standalone server a lookup is one HVALS of one
// index key (HGET l for a record Id), and nothing else while the index is
// clean. Entries that do not back a live record carrying the hash (a record
// that moved to another identifier, a tombstone, a record never written,
// empty values) yield nothing and make the lookup rebuild that index from
// the records, once. Batches are pipelines of the same commands, large ones
// several at once; results come in Id order and do not share capacity.
func TestDirectLookup(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := backend{rdb: rdb, path: "direct"}.store(t, cache.Options{})
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
	key := "cg:i:" + idHash(testKey, shared)
	// moved drops the identifier (it now carries only other), dead becomes
	// a tombstone: the script removed both entries.
	mustApply(t, st, upd(moved, v(2), c4("Ja", "Ja", "Ja", "Ja"), other), del(dead, v(2)))
	if n, _ := rdb.HLen(ctx, key).Result(); n != 2 {
		t.Fatalf("index of shared has %d entries after the writes, want 2", n)
	}
	plant := func() {
		t.Helper()
		cur, _ := rdb.HGet(ctx, "cg:{"+moved+"}:r", "l").Result()
		if err := rdb.HSet(ctx, key, moved, cur, dead, "", never, "").Err(); err != nil {
			t.Fatal(err)
		}
		// Under other, an entry for x whose line lists a near miss of
		// other's hash (its first 63 characters and one more): only whole
		// entries count.
		xl, _ := rdb.HGet(ctx, "cg:{"+x+"}:r", "l").Result()
		_, rest, _ := strings.Cut(xl, "\x00")
		near := idHash(testKey, other)[:63] + "0"
		if err := rdb.HSet(ctx, "cg:i:"+idHash(testKey, other), x, near+"\x00"+rest).Err(); err != nil {
			t.Fatal(err)
		}
	}
	plant()

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
	if n := commandCalls(t, rdb, "hvals"); n != 1 {
		t.Fatalf("HVALS calls = %d, want 1", n)
	}
	if n := commandCalls(t, rdb, "evalsha"); n != 1 {
		t.Fatalf("repair script runs = %d, want 1", n)
	}
	if n, _ := rdb.HLen(ctx, key).Result(); n != 2 {
		t.Fatalf("index after repair has %d entries, want 2", n)
	}
	wantIDs(t, lookupIDs(t, st, other), moved)

	// A clean index costs the one HVALS and nothing else.
	resetStats(t, rdb)
	wantIDs(t, lookupIDs(t, st, shared), x, y)
	info, err := rdb.Info(ctx, "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if c := regexp.MustCompile(`(?m)^cmdstat_(\w+):`).FindAllStringSubmatch(info, -1); len(c) != 1 || c[0][1] != "hvals" {
		t.Fatalf("commands for a clean lookup = %v, want only hvals", c)
	}

	// The same in a pipelined batch, with record Ids (a tombstone's Id gives
	// nothing) and the partial-hash key.
	plant()
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
	if n := commandCalls(t, rdb, "hvals"); n != 3 {
		t.Fatalf("HVALS calls = %d, want 3", n)
	}
	// HGET: the 3 record Ids, and the repair script's reads of the 5
	// records named under shared and the 2 under other (commandstats
	// counts a script's calls).
	if n := commandCalls(t, rdb, "hget"); n != 3+5+2 {
		t.Fatalf("HGET calls = %d, want 3+5+2", n)
	}
	if n := commandCalls(t, rdb, "evalsha"); n != 2 {
		t.Fatalf("repair script runs = %d, want 2 (one per index, however often it is asked)", n)
	}
	// A caller appending to one result must not overwrite another's.
	res[2] = append(res[2], guard.Record{ID: "appended"})
	if res[3][0].ID != moved {
		t.Fatalf("append to one result changed another: %+v", res[3])
	}
	if n, _ := rdb.HLen(ctx, key).Result(); n != 2 {
		t.Fatalf("stale entries left after batch: %d", n)
	}

	// A batch large enough to go out as several concurrent pipelines.
	plant()
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
	if n, _ := rdb.HLen(ctx, key).Result(); n != 2 {
		t.Fatalf("stale entries left after big batch: %d", n)
	}
}

// TestDirectLookupWrongTypeFailsClosed: a data error (an index key holding
// a string) fails the lookup, single or batch.
func TestDirectLookupWrongTypeFailsClosed(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	st := backend{rdb: rdb}.store(t, cache.Options{})
	a := email(t, "a@example.de")
	if err := rdb.Set(ctx, "cg:i:"+idHash(testKey, a), "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, ids := range [][]guard.Identifier{{a}, {email(t, "b@example.de"), a}} {
		if _, err := st.Lookup(ctx, ids); err == nil || !redis.HasErrorPrefix(errors.Unwrap(err), "WRONGTYPE") {
			t.Fatalf("Lookup(%d) on a wrong-type index key: %v, want WRONGTYPE", len(ids), err)
		}
	}
}

// TestPrefixACLUser: a Redis user allowed only the consentguard prefix
// (~cg:*) can run the store, writes included: the write script touches
// index keys it does not declare, which ACLs check like any other key.
func TestPrefixACLUser(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", "cg", "on", ">pw", "~cg:*", "+@all").Err(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "cg", Password: "pw"})
	t.Cleanup(func() { c.Close() })
	st := backend{rdb: c}.store(t, cache.Options{})
	a := email(t, "acl@example.de")
	mustApply(t, st, upd(rid(t, 1), v(1), c4("Ja", "", "", ""), a))
	wantIDs(t, lookupIDs(t, st, a), rid(t, 1))
	res, err := st.Lookup(ctx, []guard.Identifier{email(t, "x@example.de"), a, {Kind: guard.KindRecordID, Value: rid(t, 1)}})
	if err != nil || len(res[0]) != 0 || len(res[1]) != 1 || len(res[2]) != 1 {
		t.Fatalf("batch = %+v, %v", res, err)
	}
}

// TestClusterLookupFailsClosedOnUnreadableRecord: on the Cluster path a
// record that cannot be read (a node down, a timeout; here an ACL refusal)
// fails the whole lookup, even when an earlier record in the same pipeline
// answered nil, and its index entry is kept. Deciding on the readable
// records alone could grant where the unreadable one says Nein.
func TestClusterLookupFailsClosedOnUnreadableRecord(t *testing.T) {
	ctx := context.Background()
	srv := redistest.Start(t)
	admin := srv.Client(t)
	w := backend{rdb: admin, tweak: cache.UseClusterLookup, path: "cluster"}.store(t, cache.Options{})
	shared := email(t, "shared@firma.de")
	gone, yes, no := rid(t, 1), rid(t, 2), rid(t, 3)
	key := "cg:i:" + idHash(testKey, shared)
	// An entry naming no record (read as nil), first in the index.
	if err := admin.HSet(ctx, key, gone, "").Err(); err != nil {
		t.Fatal(err)
	}
	mustApply(t, w,
		upd(yes, v(1), c4("Ja", "", "", ""), shared),
		upd(no, v(1), c4("Nein", "", "", ""), shared),
	)
	// A user who may read the index and every record but no's.
	acl := []any{"ACL", "SETUSER", "partial", "on", ">pw", "+@all", "~cg:meta", "~cg:i:*"}
	for _, id := range []string{gone, yes} {
		acl = append(acl, "~cg:{"+id+"}:*")
	}
	if err := admin.Do(ctx, acl...).Err(); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), Username: "partial", Password: "pw"})
	t.Cleanup(func() { c.Close() })
	st := backend{rdb: c, tweak: cache.UseClusterLookup}.uninitialised(cache.Options{})
	// The records are read in no fixed order: try often enough that the
	// nil answer comes before the refusal.
	for range 20 {
		for _, ids := range [][]guard.Identifier{{shared}, {email(t, "other@firma.de"), shared}} {
			res, err := st.Lookup(ctx, ids)
			if err == nil || !redis.HasErrorPrefix(errors.Unwrap(err), "NOPERM") {
				t.Fatalf("Lookup(%d) with an unreadable record = %+v, %v; want a NOPERM error", len(ids), res, err)
			}
		}
	}
	if ok, err := admin.HExists(ctx, key, no).Result(); err != nil || !ok {
		t.Fatalf("entry of the unreadable record removed: %v, %v", ok, err)
	}
	// An unreadable index key fails the lookup too, rather than reading
	// as an unknown contact.
	if err := admin.Do(ctx, "ACL", "SETUSER", "partial", "resetkeys", "~cg:meta").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Lookup(ctx, []guard.Identifier{shared, {Kind: guard.KindRecordID, Value: gone}}); err == nil {
		t.Fatal("Lookup with an unreadable index key succeeded")
	}
}
