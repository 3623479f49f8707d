package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// mustImportThree imports three contacts through the import command: Anna
// (email and phone Ja), Bert (email Nein, phone Ja) and Carl (email Ja, no
// phone).
func mustImportThree(tb testing.TB, env map[string]string) {
	tb.Helper()
	export := filepath.Join(tb.TempDir(), "contacts.csv")
	os.WriteFile(export, []byte(`"ID","EMAIL","PHONE","DARF_ANGEMAILT_WERDEN__C","DARF_TELEFONISCH_KONTAKTIERT_WERDEN__C","SYSTEMMODSTAMP"
"0035g00000ABCDe","anna@firma.de","0211 17540322","Ja","Ja","2026-11-20T08:00:00.000Z"
"0035g00000ABCDf","bert@firma.de","0211 17540323","Nein","Ja","2026-11-20T08:00:00.000Z"
"0035g00000ABCDg","carl@firma.de","","Ja","","2026-11-20T08:00:00.000Z"
`), 0o600)
	if code, out, err := runCmd(tb, env, "import", export); code != 0 {
		tb.Fatalf("import: exit %d %v\n%s", code, err, out)
	}
}

// TestRepairIndexCommand: a record key deleted by hand still answers
// through its index entries until repair-index removes them, and a lost
// index key leaves its record unknown until repair-index adds the entry
// back; the command prints its counts and exits 0, also when it repaired
// or added something.
func TestRepairIndexCommand(t *testing.T) {
	rs := redistest.Start(t)
	env := redisEnv(rs.URL())
	mustImportThree(t, env)
	code, out, err := runCmd(t, env, "repair-index")
	if code != 0 || out != "index: 5 keys, 5 entries, 3 records, 0 repaired, 0 added\n" {
		t.Fatalf("repair-index on a healthy index: exit %d %v, printed %q", code, err, out)
	}

	anna, err := guard.NormalizeRecordID("0035g00000ABCDe")
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Client(t).Del(context.Background(), "cg:{"+anna+"}:r").Err(); err != nil {
		t.Fatal(err)
	}
	// The entries the record left behind still grant.
	if code, out, err := runCmd(t, env, "check", "-channel", "email", "-email", "anna@firma.de"); code != 0 {
		t.Fatalf("check before repair: exit %d %v %s; want the deleted record's consent (0)", code, err, out)
	}
	code, out, err = runCmd(t, env, "repair-index")
	if code != 0 || out != "index: 5 keys, 5 entries, 2 records, 2 repaired, 0 added\n" {
		t.Fatalf("repair-index: exit %d %v, printed %q", code, err, out)
	}
	code, out, _ = runCmd(t, env, "check", "-channel", "email", "-email", "anna@firma.de")
	if code != 1 || !strings.Contains(out, "unknown_contact") {
		t.Fatalf("check after repair: exit %d %s; want unknown_contact (1)", code, out)
	}
	if code, out, err := runCmd(t, env, "check", "-channel", "email", "-email", "carl@firma.de"); code != 0 {
		t.Fatalf("check of another record after repair: exit %d %v %s", code, err, out)
	}
	// The Redis from -config FILE this time.
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("redis: {url: \""+rs.URL()+"\"}\n"), 0o600)
	delete(env, "CONSENTGUARD_REDIS_URL")
	if code, out, err := runCmd(t, env, "repair-index", "-config", cfg); code != 0 || out != "index: 3 keys, 3 entries, 2 records, 0 repaired, 0 added\n" {
		t.Fatalf("second repair-index: exit %d %v, printed %q", code, err, out)
	}
	// An index key lost: carl is unknown until repair-index adds his entry
	// back from his record.
	carl, err := guard.NormalizeRecordID("0035g00000ABCDg")
	if err != nil {
		t.Fatal(err)
	}
	rdb := rs.Client(t)
	h, err := rdb.HGet(context.Background(), "cg:{"+carl+"}:r", "i").Result()
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Del(context.Background(), "cg:i:"+h).Err(); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := runCmd(t, env, "check", "-config", cfg, "-channel", "email", "-email", "carl@firma.de"); code != 1 || !strings.Contains(out, "unknown_contact") {
		t.Fatalf("check of carl with his index key lost: exit %d %s; want unknown_contact (1)", code, out)
	}
	if code, out, err := runCmd(t, env, "repair-index", "-config", cfg); code != 0 || out != "index: 2 keys, 2 entries, 2 records, 0 repaired, 1 added\n" {
		t.Fatalf("repair-index after a lost index key: exit %d %v, printed %q", code, err, out)
	}
	if code, out, err := runCmd(t, env, "check", "-config", cfg, "-channel", "email", "-email", "carl@firma.de"); code != 0 {
		t.Fatalf("check of carl after repair: exit %d %v %s", code, err, out)
	}
}

func TestRepairIndexCommandRefusals(t *testing.T) {
	// No Redis: the embedded store would start empty.
	code, out, err := runCmd(t, map[string]string{}, "repair-index")
	if code != 2 || !errors.Is(err, errNothingToRepair) || out != "" {
		t.Fatalf("repair-index without Redis: exit %d %v, printed %q", code, err, out)
	}
	if !strings.Contains(err.Error(), "CONSENTGUARD_REDIS_URL") {
		t.Fatalf("error does not say how to configure Redis: %v", err)
	}
	// Redis not reachable.
	code, out, err = runCmd(t, redisEnv("redis://127.0.0.1:1/0"), "repair-index")
	if code != 2 || err == nil || out != "" {
		t.Fatalf("repair-index with Redis down: exit %d %v, printed %q", code, err, out)
	}
	// Bad use.
	var ue *usageError
	if _, _, err := runCmd(t, map[string]string{}, "repair-index", "extra"); !errors.As(err, &ue) {
		t.Fatalf("repair-index extra: %v, want a usage error", err)
	}
	if _, out, _ := runCmd(t, nil, "help"); !strings.Contains(out, "repair-index") {
		t.Fatalf("help does not list repair-index:\n%s", out)
	}
}

// TestRepairIndexCommandUpgradesSchema2: data left by the schema 2 release
// (index keys as sets of record Ids) is refused by every other command;
// repair-index upgrades it in place, keeping records and history, and
// the commands answer from the upgraded index.
func TestRepairIndexCommandUpgradesSchema2(t *testing.T) {
	ctx := context.Background()
	rs := redistest.Start(t)
	rdb := rs.Client(t)
	env := redisEnv(rs.URL())
	mustImportThree(t, env)
	anna, err := guard.NormalizeRecordID("0035g00000ABCDe")
	if err != nil {
		t.Fatal(err)
	}
	history, err := rdb.LRange(ctx, "cg:{"+anna+"}:h", 0, -1).Result()
	if err != nil || len(history) == 0 {
		t.Fatalf("history before: %v, %v", history, err)
	}
	// The index as schema 2 kept it, with one member that has no record.
	keys, err := rdb.Keys(ctx, "cg:i:*").Result()
	if err != nil || len(keys) != 5 {
		t.Fatalf("index keys: %v, %v", keys, err)
	}
	for i, k := range keys {
		ids, err := rdb.HKeys(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			ids = append(ids, "0035g00000ABCDzAAA")
		}
		if err := rdb.Del(ctx, k).Err(); err != nil {
			t.Fatal(err)
		}
		if err := rdb.SAdd(ctx, k, ids).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := rdb.HSet(ctx, "cg:meta", "schema", "2").Err(); err != nil {
		t.Fatal(err)
	}

	code, out, err := runCmd(t, env, "check", "-channel", "email", "-email", "anna@firma.de")
	if code != 2 || err == nil || !strings.Contains(err.Error(), "consentguard repair-index") {
		t.Fatalf("check on schema 2: exit %d %v %s; want 2 and an error naming repair-index", code, err, out)
	}
	code, out, err = runCmd(t, env, "repair-index")
	if code != 0 || out != "upgraded: schema 2 → 3, 5 index keys, 5 entries (1 dropped)\nindex: 5 keys, 5 entries, 3 records, 0 repaired, 0 added\n" {
		t.Fatalf("repair-index on schema 2: exit %d %v, printed %q", code, err, out)
	}
	if code, out, err := runCmd(t, env, "check", "-channel", "email", "-email", "anna@firma.de"); code != 0 {
		t.Fatalf("check of anna after the upgrade: exit %d %v %s; want allowed (0)", code, err, out)
	}
	if code, out, err := runCmd(t, env, "check", "-channel", "phone", "-phone", "0211 17540323"); code != 0 {
		t.Fatalf("check of bert's phone after the upgrade: exit %d %v %s; want allowed (0)", code, err, out)
	}
	if code, out, _ := runCmd(t, env, "check", "-channel", "email", "-email", "bert@firma.de"); code != 1 || !strings.Contains(out, "consent_denied") {
		t.Fatalf("check of bert's email after the upgrade: exit %d %s; want denied (1)", code, out)
	}
	after, err := rdb.LRange(ctx, "cg:{"+anna+"}:h", 0, -1).Result()
	if err != nil || !slices.Equal(after, history) {
		t.Fatalf("history after the upgrade = %q, %v; want %q", after, err, history)
	}
	// Upgraded once: the next run only checks the index.
	if code, out, err := runCmd(t, env, "repair-index"); code != 0 || out != "index: 5 keys, 5 entries, 3 records, 0 repaired, 0 added\n" {
		t.Fatalf("second repair-index: exit %d %v, printed %q", code, err, out)
	}
}
