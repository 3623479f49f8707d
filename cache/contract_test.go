package cache_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// testKey is the hash key the contract suite writes under.
var testKey = []byte("contract-suite-hash-key-0123456789")

// backend is one empty Redis for a subtest.
type backend struct {
	rdb redis.UniversalClient
	// tweak adjusts a new store (e.g. forces the cluster lookup path).
	tweak func(*cache.Store)
	// embedded: miniredis, whose DUMP only handles strings.
	embedded bool
	// path is the read path the store must be on after Init (LookupPath),
	// so a suite never silently runs another path than it names.
	path string
}

// store is a new, initialised store on b (HashKey testKey unless opts
// sets one), checked to be on b's read path.
func (b backend) store(tb testing.TB, opts cache.Options) *cache.Store {
	tb.Helper()
	st := b.uninitialised(opts)
	if err := st.Init(context.Background()); err != nil {
		tb.Fatalf("Init: %v", err)
	}
	if got := cache.LookupPath(st); b.path != "" && got != b.path {
		tb.Fatalf("lookup path after Init = %q, want %q", got, b.path)
	}
	return st
}

// uninitialised is b.store without Init: the store Upgrade runs on (Init
// refuses schema 2), or one a test initialises itself.
func (b backend) uninitialised(opts cache.Options) *cache.Store {
	if opts.HashKey == nil {
		opts.HashKey = testKey
	}
	st := cache.New(b.rdb, opts)
	if b.tweak != nil {
		b.tweak(st)
	}
	return st
}

// realBackends gives a fresh (flushed) database on one real redis-server.
func realBackends(t *testing.T, tweak func(*cache.Store), path string) func(*testing.T) backend {
	srv := redistest.Start(t)
	rdb := srv.Client(t)
	return func(t *testing.T) backend {
		if err := rdb.FlushAll(context.Background()).Err(); err != nil {
			t.Fatalf("FLUSHALL: %v", err)
		}
		return backend{rdb: rdb, tweak: tweak, path: path}
	}
}

// clusterBackends gives a fresh (flushed) one-node Redis Cluster, through
// a redis.ClusterClient: the store takes the Cluster path by the client's
// type.
func clusterBackends(t *testing.T) func(*testing.T) backend {
	srv := redistest.StartCluster(t)
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{srv.Addr()}, ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = rdb.Close() })
	return func(t *testing.T) backend {
		err := rdb.ForEachMaster(context.Background(), func(ctx context.Context, c *redis.Client) error {
			return c.FlushAll(ctx).Err()
		})
		if err != nil {
			t.Fatalf("FLUSHALL: %v", err)
		}
		return backend{rdb: rdb, path: "cluster"}
	}
}

// checked wraps fresh so that every backend it gives ends its subtest with
// the index checked against the records (checkIndex), unless the subtest
// failed already.
func checked(fresh func(*testing.T) backend) func(*testing.T) backend {
	return func(t *testing.T) backend {
		b := fresh(t)
		t.Cleanup(func() {
			if !t.Failed() {
				checkIndex(t, b)
			}
		})
		return b
	}
}

func embeddedBackends(t *testing.T) func(*testing.T) backend {
	return func(t *testing.T) backend {
		e, err := cache.NewEmbedded()
		if err != nil {
			t.Fatalf("NewEmbedded: %v", err)
		}
		t.Cleanup(e.Close)
		return backend{rdb: e.Client(), embedded: true, path: "direct"}
	}
}

// TestContractRedis runs the suite on the direct read path: the write
// script keeps the index, a lookup is one HVALS.
func TestContractRedis(t *testing.T) { runContract(t, realBackends(t, nil, "direct")) }

// TestContractRedisClusterLookup runs it the way the store works on Cluster:
// the index kept after the script, lookups verified against the records.
func TestContractRedisClusterLookup(t *testing.T) {
	runContract(t, realBackends(t, cache.UseClusterLookup, "cluster"))
}

// TestContractRedisCluster runs it through a real redis.ClusterClient on a
// one-node Cluster (every slot on one server), the store's own choice of
// the Cluster path rather than a forced one.
func TestContractRedisCluster(t *testing.T) { runContract(t, clusterBackends(t)) }

func TestContractEmbedded(t *testing.T) { runContract(t, embeddedBackends(t)) }

// ---- helpers ----

// rid makes a valid 18-character Contact Id from n.
func rid(tb testing.TB, n int) string {
	tb.Helper()
	id, err := guard.NormalizeRecordID(fmt.Sprintf("003%012d", n))
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

func email(tb testing.TB, s string) guard.Identifier {
	tb.Helper()
	id, err := guard.ParseEmail(s)
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

func phone(tb testing.TB, s string) guard.Identifier {
	tb.Helper()
	id, err := guard.ParsePhone(s, "DE")
	if err != nil {
		tb.Fatal(err)
	}
	return id
}

// v gives version n (seconds after a fixed instant).
func v(n int) time.Time {
	return time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC).Add(time.Duration(n) * time.Second)
}

func c4(e, p, po, s string) [guard.NumChannels]string { return [guard.NumChannels]string{e, p, po, s} }

func upd(id string, ver time.Time, consent [guard.NumChannels]string, ids ...guard.Identifier) guard.Update {
	return guard.Update{ID: id, Object: "Contact", Version: ver, Consent: consent, Identifiers: ids, Source: "test"}
}

func del(id string, ver time.Time) guard.Update {
	return guard.Update{ID: id, Object: "Contact", Version: ver, Deleted: true, Source: "test"}
}

func mustApply(tb testing.TB, st *cache.Store, ups ...guard.Update) []guard.Outcome {
	tb.Helper()
	out, err := st.Apply(context.Background(), ups)
	if err != nil {
		tb.Fatalf("Apply: %v", err)
	}
	if len(out) != len(ups) {
		tb.Fatalf("Apply returned %d outcomes for %d updates", len(out), len(ups))
	}
	return out
}

func wantOutcomes(tb testing.TB, got []guard.Outcome, want ...guard.Outcome) {
	tb.Helper()
	if !slices.Equal(got, want) {
		tb.Fatalf("outcomes = %v, want %v", got, want)
	}
}

func mustGet(tb testing.TB, st *cache.Store, id string) guard.Record {
	tb.Helper()
	rec, err := st.Get(context.Background(), id)
	if err != nil {
		tb.Fatalf("Get(%s): %v", id, err)
	}
	return rec
}

// lookupIDs returns the record Ids found for one identifier.
func lookupIDs(tb testing.TB, st *cache.Store, id guard.Identifier) []string {
	tb.Helper()
	res, err := st.Lookup(context.Background(), []guard.Identifier{id})
	if err != nil {
		tb.Fatalf("Lookup(%v): %v", id, err)
	}
	if len(res) != 1 {
		tb.Fatalf("Lookup returned %d results for 1 identifier", len(res))
	}
	ids := []string{}
	for _, r := range res[0] {
		ids = append(ids, r.ID)
	}
	return ids
}

func wantIDs(tb testing.TB, got []string, want ...string) {
	tb.Helper()
	if want == nil {
		want = []string{}
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		tb.Fatalf("records = %v, want %v", got, want)
	}
}

// idHash is the documented index hash: hex HMAC-SHA256(HashKey, id.Key()).
func idHash(key []byte, id guard.Identifier) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(id.Key()))
	return hex.EncodeToString(m.Sum(nil))
}

func runContract(t *testing.T, fresh func(*testing.T) backend) {
	ctx := context.Background()
	// Every subtest ends with the index checked against the records.
	newBackend := checked(fresh)

	t.Run("NewerVersionReplaces", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		id, a := rid(t, 1), email(t, "anna@example.de")
		wantOutcomes(t, mustApply(t, st, upd(id, v(1), c4("Ja", "Ja", "", ""), a)), guard.Created)
		wantOutcomes(t, mustApply(t, st, upd(id, v(2), c4("Nein", "Ja", "Ja", "Ja"), a)), guard.Replaced)
		rec := mustGet(t, st, id)
		if rec.Consent != c4("Nein", "Ja", "Ja", "Ja") || !rec.Version.Equal(v(2)) || rec.Object != "Contact" || rec.Deleted {
			t.Fatalf("record = %+v", rec)
		}
		// A newer version may also grant again.
		wantOutcomes(t, mustApply(t, st, upd(id, v(3), c4("Ja", "", "", ""), a)), guard.Replaced)
		if got := mustGet(t, st, id).Consent; got != c4("Ja", "", "", "") {
			t.Fatalf("consent = %q", got)
		}
		wantIDs(t, lookupIDs(t, st, a), id)
	})

	t.Run("OlderVersionIsStale", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		id, a := rid(t, 2), email(t, "bert@example.de")
		b := email(t, "bert.old@example.de")
		mustApply(t, st, upd(id, v(5), c4("Nein", "", "", ""), a))
		wantOutcomes(t, mustApply(t, st, upd(id, v(4), c4("Ja", "Ja", "Ja", "Ja"), b)), guard.Stale)
		if got := mustGet(t, st, id); got.Consent != c4("Nein", "", "", "") || !got.Version.Equal(v(5)) {
			t.Fatalf("record changed by a stale write: %+v", got)
		}
		wantIDs(t, lookupIDs(t, st, b))
		// Millisecond precision: one millisecond older is older.
		wantOutcomes(t, mustApply(t, st, upd(id, v(5).Add(-time.Millisecond), c4("Ja", "", "", ""), a)), guard.Stale)
	})

	t.Run("TieKeepsLesserPerChannelAndNeverGrants", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		id := rid(t, 3)
		a, b, c := email(t, "a@tie.de"), email(t, "b@tie.de"), phone(t, "0211 175403-22")
		mustApply(t, st, upd(id, v(1), c4("Ja", "Abfrage ausstehend", "", "Ja"), a, b))
		out := mustApply(t, st, upd(id, v(1), c4("Nein", "Ja", "Ja", "Abfrage ausstehend"), b, c))
		wantOutcomes(t, out, guard.Merged)
		rec := mustGet(t, st, id)
		if want := c4("Nein", "Abfrage ausstehend", "", "Abfrage ausstehend"); rec.Consent != want {
			t.Fatalf("merged consent = %q, want %q", rec.Consent, want)
		}
		if !rec.Version.Equal(v(1)) {
			t.Fatalf("version = %v", rec.Version)
		}
		// Identifiers: only those both carry.
		wantIDs(t, lookupIDs(t, st, a))
		wantIDs(t, lookupIDs(t, st, b), id)
		wantIDs(t, lookupIDs(t, st, c))
		// The same state again changes nothing; a grant at the same version is ignored.
		wantOutcomes(t, mustApply(t, st, upd(id, v(1), c4("Ja", "Ja", "Ja", "Ja"), b)), guard.Unchanged)
		if got := mustGet(t, st, id).Consent; got != rec.Consent {
			t.Fatalf("tie granted: %q", got)
		}
		// An unknown word counts as missing: lower than pending, higher than Nein.
		wantOutcomes(t, mustApply(t, st, upd(id, v(1), c4("Vielleicht", "Vielleicht", "Vielleicht", "Vielleicht"), b)), guard.Merged)
		if got, want := mustGet(t, st, id).Consent, c4("Nein", "Vielleicht", "", "Vielleicht"); got != want {
			t.Fatalf("consent = %q, want %q (raw words kept)", got, want)
		}
	})

	t.Run("TieWithCustomVocabulary", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{Vocabulary: guard.Vocabulary{
			Granted: []string{"yes"}, Denied: []string{"no"}, Pending: []string{"ask"},
		}})
		id := rid(t, 4)
		mustApply(t, st, upd(id, v(1), c4("yes", "ask", "yes", "Ja")))
		mustApply(t, st, upd(id, v(1), c4("ask", "yes", "no", "")))
		// "Ja" is unknown here (missing), so "" and "Ja" rank equal: the stored word stays.
		if got, want := mustGet(t, st, id).Consent, c4("ask", "ask", "no", "Ja"); got != want {
			t.Fatalf("consent = %q, want %q", got, want)
		}
	})

	t.Run("UnversionedOnlyLowers", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		id, a, b := rid(t, 5), email(t, "u@example.de"), email(t, "new@example.de")
		mustApply(t, st, upd(id, v(7), c4("Ja", "Abfrage ausstehend", "Ja", "Ja"), a))
		out := mustApply(t, st, upd(id, time.Time{}, c4("Nein", "Ja", "Abfrage ausstehend", ""), b))
		wantOutcomes(t, out, guard.Restricted)
		rec := mustGet(t, st, id)
		if want := c4("Nein", "Abfrage ausstehend", "Abfrage ausstehend", ""); rec.Consent != want {
			t.Fatalf("consent = %q, want %q", rec.Consent, want)
		}
		if !rec.Version.Equal(v(7)) {
			t.Fatalf("unversioned update changed the version to %v", rec.Version)
		}
		wantIDs(t, lookupIDs(t, st, a), id)
		wantIDs(t, lookupIDs(t, st, b)) // identifiers are not added
		wantOutcomes(t, mustApply(t, st, upd(id, time.Time{}, c4("Ja", "Ja", "Ja", "Ja"), a)), guard.Unchanged)
		if got := mustGet(t, st, id).Consent; got != rec.Consent {
			t.Fatalf("unversioned update raised consent: %q", got)
		}
		// A newer version still replaces.
		wantOutcomes(t, mustApply(t, st, upd(id, v(8), c4("Ja", "Ja", "Ja", "Ja"), a)), guard.Replaced)
	})

	t.Run("UnversionedCreatesOnlyDenials", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		id, a := rid(t, 6), email(t, "nov@example.de")
		wantOutcomes(t, mustApply(t, st, upd(id, time.Time{}, c4("Ja", "Nein", "Abfrage ausstehend", ""), a)), guard.Created)
		rec := mustGet(t, st, id)
		if want := c4("", "Nein", "", ""); rec.Consent != want || !rec.Version.IsZero() {
			t.Fatalf("record = %+v, want consent %q and no version", rec, want)
		}
		wantIDs(t, lookupIDs(t, st, a))
		wantIDs(t, lookupIDs(t, st, guard.Identifier{Kind: guard.KindRecordID, Value: id}), id)
		wantOutcomes(t, mustApply(t, st, upd(id, v(1), c4("Ja", "Ja", "", ""), a)), guard.Replaced)
		wantIDs(t, lookupIDs(t, st, a), id)
	})

	t.Run("TombstoneBlocksOlderAndNewerRecreates", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		id, a := rid(t, 7), email(t, "t@example.de")
		rid0 := guard.Identifier{Kind: guard.KindRecordID, Value: id}
		mustApply(t, st, upd(id, v(2), c4("Ja", "Ja", "Ja", "Ja"), a))
		wantOutcomes(t, mustApply(t, st, del(id, v(3))), guard.Tombstoned)
		rec := mustGet(t, st, id)
		if !rec.Deleted || !rec.Version.Equal(v(3)) || rec.Consent != c4("", "", "", "") {
			t.Fatalf("tombstone = %+v", rec)
		}
		wantIDs(t, lookupIDs(t, st, a))
		wantIDs(t, lookupIDs(t, st, rid0))
		// Late messages at or below the tombstone's version cannot bring it back.
		out := mustApply(t, st,
			upd(id, v(2), c4("Ja", "Ja", "Ja", "Ja"), a),
			upd(id, v(3), c4("Ja", "Ja", "Ja", "Ja"), a),
			upd(id, time.Time{}, c4("Ja", "Ja", "Ja", "Ja"), a),
			del(id, v(3)),
			del(id, v(1)),
		)
		wantOutcomes(t, out, guard.Stale, guard.Stale, guard.Stale, guard.Stale, guard.Stale)
		wantIDs(t, lookupIDs(t, st, a))
		if !mustGet(t, st, id).Deleted {
			t.Fatal("tombstone gone")
		}
		// A newer version recreates the record with its identifiers.
		wantOutcomes(t, mustApply(t, st, upd(id, v(4), c4("Nein", "Ja", "", ""), a)), guard.Created)
		wantIDs(t, lookupIDs(t, st, a), id)
		wantIDs(t, lookupIDs(t, st, rid0), id)
		if rec := mustGet(t, st, id); rec.Deleted || rec.Consent != c4("Nein", "Ja", "", "") {
			t.Fatalf("recreated = %+v", rec)
		}
		// An older delete is stale against a live record; an equal one tombstones.
		wantOutcomes(t, mustApply(t, st, del(id, v(3)), del(id, v(4))), guard.Stale, guard.Tombstoned)
	})

	t.Run("DeleteOfUnknownRecordLeavesTombstone", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		id := rid(t, 8)
		wantOutcomes(t, mustApply(t, st, del(id, v(5)), upd(id, v(4), c4("Ja", "", "", ""))), guard.Tombstoned, guard.Stale)
	})

	t.Run("UnversionedDeleteTombstonesAtNow", func(t *testing.T) {
		now := v(1000)
		st := newBackend(t).store(t, cache.Options{Clock: func() time.Time { return now }})
		id := rid(t, 9)
		mustApply(t, st, upd(id, v(10), c4("Ja", "", "", "")))
		wantOutcomes(t, mustApply(t, st, del(id, time.Time{})), guard.Tombstoned)
		if rec := mustGet(t, st, id); !rec.Deleted || !rec.Version.Equal(now) {
			t.Fatalf("tombstone = %+v, want version %v", rec, now)
		}
		wantOutcomes(t, mustApply(t, st, upd(id, v(999), c4("Ja", "", "", ""))), guard.Stale)
		wantOutcomes(t, mustApply(t, st, upd(id, v(1001), c4("Ja", "", "", ""))), guard.Created)
	})

	t.Run("ShuffledDuplicatedDeliveryConverges", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		words := []string{"Ja", "Nein", "Abfrage ausstehend", "", "Vielleicht"}
		pool := []guard.Identifier{
			email(t, "s1@example.de"), email(t, "s2@example.de"), email(t, "s3@example.de"),
			phone(t, "+49 30 901820"), phone(t, "+49 89 2333"),
		}
		for seed := range uint64(8) {
			r := rand.New(rand.NewPCG(seed, 42))
			id := rid(t, 100+int(seed))
			var ups []guard.Update
			for n := 1; n <= 12; n++ {
				var c [guard.NumChannels]string
				for ch := range c {
					c[ch] = words[r.IntN(len(words))]
				}
				var ids []guard.Identifier
				for _, p := range pool {
					if r.IntN(2) == 0 {
						ids = append(ids, p)
					}
				}
				u := upd(id, v(n), c, ids...)
				u.Ref = fmt.Sprint(n)
				ups = append(ups, u)
			}
			newest := ups[len(ups)-1]
			deliveries := append(slices.Clone(ups), ups...) // every message twice
			r.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })
			for len(deliveries) > 0 { // in POST-sized batches of 1..7
				n := min(len(deliveries), 1+r.IntN(7))
				mustApply(t, st, deliveries[:n]...)
				deliveries = deliveries[n:]
			}
			rec := mustGet(t, st, id)
			if rec.Consent != newest.Consent || !rec.Version.Equal(newest.Version) {
				t.Fatalf("seed %d: record = %+v, want consent %q at %v", seed, rec, newest.Consent, newest.Version)
			}
			for _, p := range pool {
				found := slices.Contains(lookupIDs(t, st, p), id)
				if want := slices.Contains(newest.Identifiers, p); found != want {
					t.Fatalf("seed %d: lookup %v found=%v, want %v", seed, p, found, want)
				}
			}
		}
	})

	t.Run("ConcurrentWritersConverge", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		id := rid(t, 200)
		pool := []guard.Identifier{email(t, "c1@example.de"), email(t, "c2@example.de"), phone(t, "+49 40 123456")}
		var ups []guard.Update
		for n := 1; n <= 30; n++ {
			// Identifiers come and go between versions, to race index adds and removals.
			ids := []guard.Identifier{pool[n%3]}
			if n%2 == 0 {
				ids = append(ids, pool[(n+1)%3])
			}
			ups = append(ups, upd(id, v(n), c4([]string{"Ja", "Nein"}[n%2], "", "", ""), ids...))
		}
		newest := ups[len(ups)-1]
		errs := make(chan error, 6)
		for w := range 6 {
			go func() {
				r := rand.New(rand.NewPCG(uint64(w), 7))
				mine := slices.Clone(ups)
				r.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
				var err error
				for _, u := range mine {
					if _, err = st.Apply(ctx, []guard.Update{u}); err != nil {
						break
					}
				}
				errs <- err
			}()
		}
		for range 6 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if rec := mustGet(t, st, id); rec.Consent != newest.Consent || !rec.Version.Equal(newest.Version) {
			t.Fatalf("record = %+v, want %q at %v", rec, newest.Consent, newest.Version)
		}
		for _, p := range pool {
			found := slices.Contains(lookupIDs(t, st, p), id)
			if want := slices.Contains(newest.Identifiers, p); found != want {
				t.Fatalf("lookup %v found=%v, want %v", p, found, want)
			}
		}
	})

	t.Run("IndexEntriesThatDoNotBackARecordAreIgnored", func(t *testing.T) {
		// Entries no writer of this path leaves behind: under old, one for a
		// record that moved to another identifier (holding its current
		// line, which does not list old), one for a record never written
		// and one for a tombstone (empty values, as a Cluster writer or a
		// crash between its record and index writes leaves them). None
		// yields a record, all are removed, the valid entry stays.
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		id, a, old := rid(t, 10), email(t, "now@example.de"), email(t, "old@example.de")
		gone, dead := rid(t, 11), rid(t, 12)
		mustApply(t, st, upd(id, v(1), c4("Ja", "Ja", "Ja", "Ja"), a))
		mustApply(t, st, upd(dead, v(1), c4("Ja", "", "", ""), old), del(dead, v(2)))
		line, err := b.rdb.HGet(ctx, "cg:{"+id+"}:r", "l").Result()
		if err != nil {
			t.Fatal(err)
		}
		oldKey := "cg:i:" + idHash(testKey, old)
		if err := b.rdb.HSet(ctx, oldKey, id, line, gone, "", dead, "").Err(); err != nil {
			t.Fatal(err)
		}
		wantIDs(t, lookupIDs(t, st, old))
		if n, err := b.rdb.HLen(ctx, oldKey).Result(); err != nil || n != 0 {
			t.Fatalf("stale index entries left: %d, %v", n, err)
		}
		wantIDs(t, lookupIDs(t, st, a), id)
		if n, _ := b.rdb.HLen(ctx, "cg:i:"+idHash(testKey, a)).Result(); n != 1 {
			t.Fatalf("valid index entry removed")
		}
		// The same in a batch, with the entries planted again.
		if err := b.rdb.HSet(ctx, oldKey, id, line, gone, "", dead, "").Err(); err != nil {
			t.Fatal(err)
		}
		res, err := st.Lookup(ctx, []guard.Identifier{a, old, a})
		if err != nil || len(res[0]) != 1 || len(res[1]) != 0 || len(res[2]) != 1 {
			t.Fatalf("batch = %+v, %v", res, err)
		}
		if n, err := b.rdb.HLen(ctx, oldKey).Result(); err != nil || n != 0 {
			t.Fatalf("stale index entries left after batch: %d, %v", n, err)
		}
	})

	t.Run("EmptyEntryOfALiveRecordIsRepaired", func(t *testing.T) {
		// An entry whose value is empty (a Cluster writer's) for a record
		// that does carry the identifier: on Cluster it is the normal
		// entry; elsewhere the lookup finds nothing this once (fail closed)
		// and rebuilds the entry from the record.
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		id, a := rid(t, 14), email(t, "empty@example.de")
		mustApply(t, st, upd(id, v(1), c4("Ja", "", "", ""), a))
		if err := b.rdb.HSet(ctx, "cg:i:"+idHash(testKey, a), id, "").Err(); err != nil {
			t.Fatal(err)
		}
		if b.path == "cluster" {
			wantIDs(t, lookupIDs(t, st, a), id)
		} else {
			wantIDs(t, lookupIDs(t, st, a))
		}
		wantIDs(t, lookupIDs(t, st, a), id)
	})

	t.Run("LostIndexEntryFailsClosedAndIsRepairedOnRewrite", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		id, a := rid(t, 13), email(t, "lost@example.de")
		u := upd(id, v(1), c4("Ja", "", "", ""), a)
		mustApply(t, st, u)
		// The entry lost (on Cluster: a crash after the record write,
		// before the index write).
		if err := b.rdb.Del(ctx, "cg:i:"+idHash(testKey, a)).Err(); err != nil {
			t.Fatal(err)
		}
		wantIDs(t, lookupIDs(t, st, a)) // unknown: the guard denies
		// Salesforce redelivers (no ack was sent): the write is Unchanged but the index is repaired.
		wantOutcomes(t, mustApply(t, st, u), guard.Unchanged)
		wantIDs(t, lookupIDs(t, st, a), id)
	})

	t.Run("SeveralRecordsPerIdentifier", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		shared := email(t, "Info@Firma.de")
		x, y, z := rid(t, 20), rid(t, 21), rid(t, 22)
		mustApply(t, st,
			upd(y, v(1), c4("Nein", "", "", ""), shared),
			upd(x, v(1), c4("Ja", "", "", ""), shared, email(t, "x@firma.de")),
			upd(z, v(1), c4("Ja", "", "", ""), email(t, "z@firma.de")),
		)
		res, err := st.Lookup(ctx, []guard.Identifier{shared})
		if err != nil {
			t.Fatal(err)
		}
		if len(res[0]) != 2 || res[0][0].ID != x || res[0][1].ID != y || res[0][0].Consent[guard.Email] != "Ja" || res[0][1].Consent[guard.Email] != "Nein" {
			t.Fatalf("records = %+v", res[0])
		}
		// The guard denies: one of them says Nein.
		d, err := guard.New(st, guard.Options{}).Check(ctx, guard.Email, shared)
		if err != nil || d.Allowed || d.Reason != guard.ReasonDenied {
			t.Fatalf("decision = %+v, %v", d, err)
		}
		mustApply(t, st, del(y, v(2)))
		wantIDs(t, lookupIDs(t, st, shared), x)
	})

	t.Run("BatchLookup", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		var ups []guard.Update
		for n := range 50 {
			ups = append(ups, upd(rid(t, 1000+n), v(1), c4("Ja", "Nein", "", ""), phone(t, fmt.Sprintf("+4930%07d", 1000000+n))))
		}
		mustApply(t, st, ups...)
		// More than one script chunk, with unknowns, duplicates, Ids and an invalid Id.
		var ids []guard.Identifier
		var want [][]string
		for n := range 700 {
			switch {
			case n%7 == 3:
				ids = append(ids, guard.Identifier{Kind: guard.KindRecordID, Value: rid(t, 1000+n%50)[:15]})
				want = append(want, []string{rid(t, 1000+n%50)})
			case n%11 == 5:
				ids = append(ids, guard.Identifier{Kind: guard.KindRecordID, Value: "not-an-id"})
				want = append(want, []string{})
			case n%2 == 0:
				ids = append(ids, phone(t, fmt.Sprintf("+4930%07d", 1000000+n%100)))
				if n%100 < 50 {
					want = append(want, []string{rid(t, 1000+n%100)})
				} else {
					want = append(want, []string{})
				}
			default:
				ids = append(ids, email(t, fmt.Sprintf("nobody%d@example.de", n)))
				want = append(want, []string{})
			}
		}
		res, err := st.Lookup(ctx, ids)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != len(ids) {
			t.Fatalf("%d results for %d identifiers", len(res), len(ids))
		}
		for i := range ids {
			got := []string{}
			for _, r := range res[i] {
				got = append(got, r.ID)
				if r.Consent != c4("Ja", "Nein", "", "") || !r.Version.Equal(v(1)) || r.Object != "Contact" || r.UpdatedAt.IsZero() {
					t.Fatalf("item %d: record %+v", i, r)
				}
			}
			if !slices.Equal(got, want[i]) {
				t.Fatalf("item %d (%v): records %v, want %v", i, ids[i], got, want[i])
			}
		}
		if res, err := st.Lookup(ctx, nil); err != nil || len(res) != 0 {
			t.Fatalf("empty lookup = %v, %v", res, err)
		}
	})

	t.Run("History", func(t *testing.T) {
		now := v(500)
		st := newBackend(t).store(t, cache.Options{HistoryLimit: 3, Clock: func() time.Time { return now }})
		id := rid(t, 30)
		for n := 1; n <= 5; n++ {
			u := upd(id, v(n), c4(fmt.Sprint("w", n), "", "", ""))
			u.Source, u.Ref = "outbound", fmt.Sprint("ref", n)
			mustApply(t, st, u)
		}
		mustApply(t, st, upd(id, v(1), c4("Ja", "", "", ""))) // stale: not recorded
		h, err := st.History(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if len(h) != 3 {
			t.Fatalf("history has %d entries, want 3 (cap): %+v", len(h), h)
		}
		for i, c := range h {
			n := i + 3
			if !c.Version.Equal(v(n)) || c.Outcome != guard.Replaced || c.Source != "outbound" || c.Ref != fmt.Sprint("ref", n) ||
				c.Consent != c4(fmt.Sprint("w", n), "", "", "") || c.Deleted || !c.At.Equal(now) {
				t.Fatalf("entry %d = %+v", i, c)
			}
		}
		o, err := st.Erase(ctx, id)
		if err != nil || o != guard.Tombstoned {
			t.Fatalf("Erase = %v, %v", o, err)
		}
		h, _ = st.History(ctx, id)
		last := h[len(h)-1]
		if len(h) != 3 || last.Source != "erase" || !last.Deleted || last.Outcome != guard.Tombstoned || !last.Version.Equal(now) {
			t.Fatalf("history after erase = %+v", h)
		}
		// Special characters survive the Lua JSON encoding.
		id2 := rid(t, 31)
		u := upd(id2, v(1), c4(`Ja "doch"`, "Abfrage ausstehend", "ä/ö\\ü", "\t"))
		u.Ref = `<04l…>`
		mustApply(t, st, u)
		h, err = st.History(ctx, id2)
		if err != nil || len(h) != 1 || h[0].Consent != u.Consent || h[0].Ref != u.Ref || h[0].Outcome != guard.Created {
			t.Fatalf("history = %+v, %v", h, err)
		}
		if h, err := st.History(ctx, rid(t, 32)); err != nil || len(h) != 0 {
			t.Fatalf("history of unknown = %v, %v", h, err)
		}
	})

	t.Run("GetAndErase", func(t *testing.T) {
		b := newBackend(t)
		now := v(100)
		st := b.store(t, cache.Options{Clock: func() time.Time { return now }})
		id, a, p := rid(t, 40), email(t, "erase@example.de"), phone(t, "0171 2345678")
		if _, err := st.Get(ctx, id); !errors.Is(err, guard.ErrNotFound) {
			t.Fatalf("Get unknown: %v", err)
		}
		if _, err := st.Erase(ctx, id); !errors.Is(err, guard.ErrNotFound) {
			t.Fatalf("Erase unknown: %v", err)
		}
		if _, err := st.Get(ctx, "bogus"); !errors.Is(err, guard.ErrInvalidIdentifier) {
			t.Fatalf("Get bogus: %v", err)
		}
		mustApply(t, st, upd(id, v(200), c4("Ja", "Ja", "", ""), a, p))
		if rec := mustGet(t, st, id[:15]); rec.ID != id || !rec.UpdatedAt.Equal(now) {
			t.Fatalf("Get by 15-char Id = %+v", rec)
		}
		o, err := st.Erase(ctx, id)
		if err != nil || o != guard.Tombstoned {
			t.Fatalf("Erase = %v, %v", o, err)
		}
		rec := mustGet(t, st, id)
		if !rec.Deleted || !rec.Version.Equal(v(200)) { // max(stored version, now)
			t.Fatalf("erased = %+v", rec)
		}
		wantIDs(t, lookupIDs(t, st, a))
		wantIDs(t, lookupIDs(t, st, p))
		keys, err := b.rdb.Keys(ctx, "cg:i:*").Result()
		if err != nil || len(keys) != 0 {
			t.Fatalf("index keys left after erase: %v, %v", keys, err)
		}
		wantOutcomes(t, mustApply(t, st, upd(id, v(200), c4("Ja", "", "", ""), a)), guard.Stale)
	})

	t.Run("SeenRemember", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		seen, err := st.Seen(ctx, []string{"04l000000000001", "04l000000000002"})
		if err != nil || !slices.Equal(seen, []bool{false, false}) {
			t.Fatalf("Seen = %v, %v", seen, err)
		}
		if err := st.Remember(ctx, []string{"04l000000000001"}, time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := st.Remember(ctx, []string{"04l000000000003"}, 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		seen, err = st.Seen(ctx, []string{"04l000000000001", "04l000000000002", "04l000000000003"})
		if err != nil || !slices.Equal(seen, []bool{true, false, true}) {
			t.Fatalf("Seen = %v, %v", seen, err)
		}
		keys, err := b.rdb.Keys(ctx, "cg:n:*").Result()
		if err != nil || len(keys) != 2 {
			t.Fatalf("dedupe keys = %v, %v", keys, err)
		}
		for _, k := range keys {
			if strings.Contains(k, "04l") {
				t.Fatalf("notification id in clear in key %q", k)
			}
			ttl, err := b.rdb.PTTL(ctx, k).Result()
			if err != nil || ttl <= 0 || ttl > time.Hour {
				t.Fatalf("TTL of %s = %v, %v", k, ttl, err)
			}
		}
		// The short one expires (poll; no timing assertion).
		deadline := time.Now().Add(15 * time.Second)
		for {
			seen, err = st.Seen(ctx, []string{"04l000000000001", "04l000000000003"})
			if err != nil {
				t.Fatal(err)
			}
			if slices.Equal(seen, []bool{true, false}) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("short-lived key did not expire: %v", seen)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := st.Remember(ctx, []string{"x"}, 0); err == nil {
			t.Fatal("Remember with zero TTL succeeded")
		}
	})

	t.Run("HashKeyMismatchRefused", func(t *testing.T) {
		b := newBackend(t)
		b.store(t, cache.Options{}) // writes the fingerprint of testKey
		other := cache.New(b.rdb, cache.Options{HashKey: []byte("another-hash-key-0123456789")})
		err := other.Init(ctx)
		if !errors.Is(err, guard.ErrHashKeyMismatch) {
			t.Fatalf("Init with another key: %v, want ErrHashKeyMismatch", err)
		}
		if strings.Contains(err.Error(), "another-hash-key") || strings.Contains(err.Error(), string(testKey)) {
			t.Fatalf("error reveals a key: %v", err)
		}
		if err := cache.New(b.rdb, cache.Options{HashKey: testKey}).Init(ctx); err != nil {
			t.Fatalf("Init with the same key: %v", err)
		}
		short := cache.New(b.rdb, cache.Options{HashKey: []byte("too-short")})
		if err := short.Init(ctx); !errors.Is(err, cache.ErrConfig) {
			t.Fatalf("Init with short key: %v", err)
		}
		if _, err := short.Lookup(ctx, []guard.Identifier{email(t, "a@b.de")}); err == nil {
			t.Fatal("Lookup on a misconfigured store succeeded")
		}
		if _, err := short.Apply(ctx, []guard.Update{upd(rid(t, 1), v(1), c4("Ja", "", "", ""))}); err == nil {
			t.Fatal("Apply on a misconfigured store succeeded")
		}
	})

	t.Run("OlderSchemaRefused", func(t *testing.T) {
		b := newBackend(t)
		b.store(t, cache.Options{}) // records the current schema
		for _, old := range []string{"1", ""} {
			setSchema(t, b.rdb, old)
			err := cache.New(b.rdb, cache.Options{HashKey: testKey}).Init(ctx)
			if !errors.Is(err, cache.ErrSchema) || errors.Is(err, guard.ErrHashKeyMismatch) {
				t.Fatalf("Init on schema %q: %v, want ErrSchema", old, err)
			}
		}
	})

	t.Run("HashOutsideTheHashFieldIsNotCarried", func(t *testing.T) {
		// The lookup line also holds raw consent words from Salesforce; a
		// word that happens to spell an identifier hash must not make the
		// record carry that identifier.
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		a, other := email(t, "a@example.de"), email(t, "other@example.de")
		h := idHash(testKey, a)
		x := rid(t, 30)
		mustApply(t, st, upd(x, v(1), c4("Ja", h, h+" x", "x "+h), other))
		line, err := b.rdb.HGet(ctx, "cg:{"+x+"}:r", "l").Result()
		if err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.HSet(ctx, "cg:i:"+h, x, line).Err(); err != nil {
			t.Fatal(err)
		}
		wantIDs(t, lookupIDs(t, st, a))
		wantIDs(t, lookupIDs(t, st, other), x)
	})

	t.Run("InvalidUpdatesRejectedBeforeWriting", func(t *testing.T) {
		st := newBackend(t).store(t, cache.Options{})
		good := upd(rid(t, 50), v(1), c4("Ja", "", "", ""))
		_, err := st.Apply(ctx, []guard.Update{good, upd("nope", v(1), c4("Ja", "", "", ""))})
		if !errors.Is(err, guard.ErrInvalidIdentifier) {
			t.Fatalf("Apply with bad Id: %v", err)
		}
		if _, err := st.Get(ctx, good.ID); !errors.Is(err, guard.ErrNotFound) {
			t.Fatalf("part of a rejected batch was written: %v", err)
		}
		if out, err := st.Apply(ctx, nil); err != nil || len(out) != 0 {
			t.Fatalf("empty Apply = %v, %v", out, err)
		}
	})

	t.Run("ScriptCacheFlushed", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		if err := b.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		id, a := rid(t, 60), email(t, "flush@example.de")
		wantOutcomes(t, mustApply(t, st, upd(id, v(1), c4("Ja", "", "", ""), a), upd(id, v(2), c4("Nein", "", "", ""), a)), guard.Created, guard.Replaced)
		if err := b.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		wantIDs(t, lookupIDs(t, st, a), id)
		// A second record of a, whose index entry is then emptied: outside
		// Cluster the lookup misses it (fails closed) and repairs the
		// index with the repair script, which the flush made Redis forget.
		id2 := rid(t, 61)
		mustApply(t, st, upd(id2, v(1), c4("Ja", "", "", ""), a))
		if err := b.rdb.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		if err := b.rdb.HSet(ctx, "cg:i:"+idHash(testKey, a), id2, "").Err(); err != nil {
			t.Fatal(err)
		}
		ids := make([]guard.Identifier, 6000) // several pipelines
		for i := range ids {
			ids[i] = a
		}
		res, err := st.Lookup(ctx, ids)
		want := 1
		if b.path == "cluster" {
			want = 2
		}
		if err != nil || len(res) != len(ids) || len(res[0]) != want || len(res[5999]) != want {
			t.Fatalf("multi-chunk lookup after flush: %d results, %v", len(res), err)
		}
		wantIDs(t, lookupIDs(t, st, a), id, id2)
	})

	t.Run("NoPlaintextIdentifiers", func(t *testing.T) {
		b := newBackend(t)
		st := b.store(t, cache.Options{})
		checkNoPlaintext(t, b.rdb, st, !b.embedded)
	})
}

// setSchema writes schema into the meta hash under "cg:", or removes the
// field for "".
func setSchema(tb testing.TB, rdb redis.UniversalClient, schema string) {
	tb.Helper()
	ctx := context.Background()
	var err error
	if schema == "" {
		err = rdb.HDel(ctx, "cg:meta", "schema").Err()
	} else {
		err = rdb.HSet(ctx, "cg:meta", "schema", schema).Err()
	}
	if err != nil {
		tb.Fatal(err)
	}
}

// checkIndex checks the identifier index against the records. Every live
// record has an entry under each hash its lookup line lists. On the direct
// path the index is exact: an entry's value is its record's line, and no
// entry exists that a live record carrying the hash does not back. On
// Cluster entries are hints (empty values; racing writers may leave stale
// ones, which lookups skip and remove).
func checkIndex(tb testing.TB, b backend) {
	tb.Helper()
	ctx := context.Background()
	lines := map[string]string{}            // record Id → lookup line
	index := map[string]map[string]string{} // hash → record Id → value
	// Every record and index key, read in one pipeline.
	recs := map[string]*redis.SliceCmd{}
	idx := map[string]*redis.MapStringStringCmd{}
	pipe := b.rdb.Pipeline()
	iter := b.rdb.Scan(ctx, 0, "cg:*", 1000).Iterator()
	for iter.Next(ctx) {
		k := iter.Val()
		switch {
		case strings.HasPrefix(k, "cg:{") && strings.HasSuffix(k, "}:r"):
			recs[k] = pipe.HMGet(ctx, k, "l", "i", "d")
		case strings.HasPrefix(k, "cg:i:"):
			idx[k] = pipe.HGetAll(ctx, k)
		}
	}
	if err := iter.Err(); err != nil {
		tb.Fatal(err)
	}
	if pipe.Len() > 0 {
		_, _ = pipe.Exec(ctx) // errors are inspected per command
	}
	for k, c := range idx {
		m, err := c.Result()
		if err != nil {
			tb.Fatalf("index key %s: %v", k, err)
		}
		index[strings.TrimPrefix(k, "cg:i:")] = m
	}
	for k, c := range recs {
		f, err := c.Result()
		if err != nil {
			tb.Fatal(err)
		}
		l, live := f[0].(string)
		hashes, _ := f[1].(string)
		tomb := f[2] == "1"
		// A record is live (has a line) exactly when it is no tombstone,
		// and its line starts with the hashes in i.
		if live == tomb {
			tb.Fatalf("record %s: lookup line present=%v, tombstone=%v", k, live, tomb)
		}
		if !live {
			continue
		}
		if first, _, _ := strings.Cut(l, "\x00"); first != hashes {
			tb.Fatalf("record %s: line lists %q, field i holds %q", k, first, hashes)
		}
		lines[strings.TrimSuffix(strings.TrimPrefix(k, "cg:{"), "}:r")] = l
	}
	carried := func(id string) []string {
		hashes, _, _ := strings.Cut(lines[id], "\x00")
		return strings.Fields(hashes)
	}
	for id, l := range lines {
		for _, h := range carried(id) {
			got, ok := index[h][id]
			switch {
			case !ok:
				tb.Fatalf("record %s carries %s… but has no index entry", id, h[:8])
			case b.path != "cluster" && got != l:
				tb.Fatalf("index entry %s…/%s holds %q, the record's line is %q", h[:8], id, got, l)
			}
		}
	}
	if b.path == "cluster" {
		return
	}
	for h, m := range index {
		for id := range m {
			if !slices.Contains(carried(id), h) {
				tb.Fatalf("index entry %s…/%s backs no live record carrying the hash", h[:8], id)
			}
		}
	}
}
