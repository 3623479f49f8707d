package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
)

// TestRepairIndexCommand: a record key deleted by hand still answers
// through its index entries until repair-index removes them; the command
// prints its counts and exits 0, also when it repaired something.
func TestRepairIndexCommand(t *testing.T) {
	rs := redistest.Start(t)
	env := redisEnv(rs.URL())
	export := filepath.Join(t.TempDir(), "contacts.csv")
	os.WriteFile(export, []byte(`"ID","EMAIL","PHONE","DARF_ANGEMAILT_WERDEN__C","DARF_TELEFONISCH_KONTAKTIERT_WERDEN__C","SYSTEMMODSTAMP"
"0035g00000ABCDe","anna@firma.de","0211 17540322","Ja","Ja","2026-11-20T08:00:00.000Z"
"0035g00000ABCDf","bert@firma.de","0211 17540323","Nein","Ja","2026-11-20T08:00:00.000Z"
"0035g00000ABCDg","carl@firma.de","","Ja","","2026-11-20T08:00:00.000Z"
`), 0o600)
	if code, out, err := runCmd(t, env, "import", export); code != 0 {
		t.Fatalf("import: exit %d %v\n%s", code, err, out)
	}
	code, out, err := runCmd(t, env, "repair-index")
	if code != 0 || out != "index: 5 keys, 5 entries, 0 repaired\n" {
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
	if code != 0 || out != "index: 5 keys, 5 entries, 2 repaired\n" {
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
	if code, out, err := runCmd(t, env, "repair-index", "-config", cfg); code != 0 || out != "index: 3 keys, 3 entries, 0 repaired\n" {
		t.Fatalf("second repair-index: exit %d %v, printed %q", code, err, out)
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
