package cache_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/guard"
)

// checkNoPlaintext populates st with known people, then reads every key in
// Redis (SCAN; DUMP and the decoded value) and fails on any email address,
// local part or phone number found.
//
// miniredis implements DUMP for strings only; with fullDump false the other
// types are checked through their decoded values alone.
func checkNoPlaintext(t *testing.T, rdb redis.UniversalClient, st *cache.Store, fullDump bool) {
	ctx := context.Background()
	emails := []string{"maximilian.mustermann@beispielfirma.de", "erika.musterfrau@xn--mller-kva.de", "info@firma-kuhlmann.de"}
	phones := []string{"0211 175403-22", "+49 (0)171 9876543", "0049 30 901820"}
	var forbidden []string
	var ids []guard.Identifier
	for _, e := range emails {
		id := email(t, e)
		ids = append(ids, id)
		local, _, _ := strings.Cut(id.Value, "@")
		forbidden = append(forbidden, id.Value, local)
	}
	for _, p := range phones {
		id := phone(t, p)
		ids = append(ids, id)
		digits := strings.TrimPrefix(id.Value, "+")
		forbidden = append(forbidden, id.Value, digits, "0"+digits[2:], digits[len(digits)-8:])
	}
	var ups []guard.Update
	for n, id := range ids {
		u := upd(rid(t, 900+n), v(1), c4("Ja", "Nein", "Abfrage ausstehend", "Ja"), id, ids[(n+1)%len(ids)])
		u.Ref = fmt.Sprint("04l00000000000", n)
		ups = append(ups, u)
	}
	mustApply(t, st, ups...)
	// Exercise every write path: merge, restrict, replace with other identifiers, delete, erase.
	mustApply(t, st, upd(rid(t, 900), v(1), c4("Nein", "", "", ""), ids[0]), upd(rid(t, 901), time.Time{}, c4("Nein", "", "", ""), ids[2]))
	mustApply(t, st, upd(rid(t, 902), v(2), c4("Ja", "", "", ""), ids[4], ids[5]), del(rid(t, 903), v(3)))
	if _, err := st.Erase(ctx, rid(t, 904)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Lookup(ctx, ids); err != nil {
		t.Fatal(err)
	}
	// Even a caller that dedupes on plaintext keys leaves none behind.
	if err := st.Remember(ctx, []string{emails[0], phones[0]}, time.Hour); err != nil {
		t.Fatal(err)
	}

	var keys []string
	iter := rdb.Scan(ctx, 0, "*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		t.Fatal(err)
	}
	if len(keys) < 10 {
		t.Fatalf("only %d keys written: %v", len(keys), keys)
	}
	check := func(where, s string) {
		t.Helper()
		low := strings.ToLower(s)
		for _, f := range forbidden {
			if strings.Contains(low, strings.ToLower(f)) {
				t.Errorf("plaintext %q found in %s", guard.Mask(guard.KindEmail, f), where)
			}
		}
	}
	for _, k := range keys {
		check("key "+k, k)
		typ, err := rdb.Type(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if fullDump || typ == "string" {
			dump, err := rdb.Dump(ctx, k).Result()
			if err != nil {
				t.Fatalf("DUMP %s: %v", k, err)
			}
			check("DUMP of "+k, dump)
		}
		var vals []string
		switch typ {
		case "string":
			s, _ := rdb.Get(ctx, k).Result()
			vals = []string{s}
		case "hash":
			m, _ := rdb.HGetAll(ctx, k).Result()
			for f, x := range m {
				vals = append(vals, f, x)
			}
		case "list":
			vals, _ = rdb.LRange(ctx, k, 0, -1).Result()
		default:
			t.Fatalf("unexpected type %s of %s", typ, k)
		}
		for _, x := range vals {
			check("value of "+k, x)
		}
	}
}
