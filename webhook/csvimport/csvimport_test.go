package csvimport_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/webhook"
	"github.com/consentguard/consentguard/webhook/csvimport"
)

func mustStore(tb testing.TB) (*redistest.Server, *cache.Store) {
	tb.Helper()
	srv := redistest.Start(tb)
	st := cache.New(srv.Client(tb), cache.Options{HashKey: []byte("import-test-hash-key-0123456789abcdef")})
	if err := st.Init(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return srv, st
}

func check(tb testing.TB, g *guard.Guard, ch guard.Channel, kind guard.Kind, raw string) guard.Decision {
	tb.Helper()
	id, err := g.Parse(kind, raw)
	if err != nil {
		tb.Fatal(err)
	}
	d, err := g.Check(context.Background(), ch, id)
	if err != nil {
		tb.Fatal(err)
	}
	return d
}

// A Data Loader export: upper-case API names, quoted values, empty = null.
const dataLoader = `"ID","FIRSTNAME","EMAIL","PHONE","MOBILEPHONE","DARF_ANGEMAILT_WERDEN__C","DARF_TELEFONISCH_KONTAKTIERT_WERDEN__C","INFORMATIONEN_DUERFEN_GESPEICHERT_WERDEN__C","SYSTEMMODSTAMP"
"0035g00000ABCDe","Max","max@firma.de","0211 17540322","","Ja","Nein","Ja","2026-11-20T08:00:00.000Z"
"0035g00000ABCDf","Erika","erika@firma.de","","0171 1234567","Abfrage ausstehend","Ja","","2026-11-20T08:00:00.000Z"
"0035g00000ABCDg","Otto","otto@firma.de","","","Vielleicht","","","2026-11-20T08:00:00.000Z"
"kaputt","X","x@firma.de","","","Ja","","","2026-11-20T08:00:00.000Z"
"0035g00000ABCDh","Y","y@firma.de","","","Ja","","","yesterday"
`

func TestImportDataLoaderExport(t *testing.T) {
	_, st := mustStore(t)
	sum, err := csvimport.Run(context.Background(), st, strings.NewReader(dataLoader), csvimport.Options{Batch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 5 || sum.Skipped != 2 || sum.Outcomes["created"] != 3 || sum.Warnings[webhook.WarnUnknownValue] != 1 || len(sum.Problems) != 2 {
		t.Fatalf("summary %+v", sum)
	}
	if strings.Contains(strings.Join(sum.Problems, " "), "yesterday") {
		t.Fatalf("problems echo field values: %q", sum.Problems)
	}
	g := guard.New(st, guard.Options{})
	if d := check(t, g, guard.Email, guard.KindEmail, "MAX@firma.de"); !d.Allowed {
		t.Fatalf("max email: %+v", d)
	}
	if d := check(t, g, guard.Phone, guard.KindPhone, "+49 211 17540322"); d.Reason != guard.ReasonDenied {
		t.Fatalf("max phone: %+v", d)
	}
	if d := check(t, g, guard.Phone, guard.KindPhone, "01711234567"); !d.Allowed {
		t.Fatalf("erika mobile: %+v", d)
	}
	if d := check(t, g, guard.Email, guard.KindEmail, "erika@firma.de"); d.Reason != guard.ReasonPending {
		t.Fatalf("erika email: %+v", d)
	}
	if d := check(t, g, guard.Email, guard.KindEmail, "otto@firma.de"); d.Reason != guard.ReasonMissing || d.Records[0].Consent != "Vielleicht" {
		t.Fatalf("otto: %+v", d)
	}

	// Re-running is idempotent; an older export cannot undo a newer state.
	sum, err = csvimport.Run(context.Background(), st, strings.NewReader(dataLoader), csvimport.Options{})
	if err != nil || sum.Outcomes["created"] != 0 {
		t.Fatalf("second run: %+v %v", sum, err)
	}
	newer := "Id,Email,Darf_angemailt_werden__c,SystemModstamp\n0035g00000ABCDeAAP,max@firma.de,Nein,2026-11-25T08:00:00.000Z\n"
	if _, err := csvimport.Run(context.Background(), st, strings.NewReader(newer), csvimport.Options{}); err != nil {
		t.Fatal(err)
	}
	older := strings.ReplaceAll(strings.ReplaceAll(newer, "Nein", "Ja"), "11-25", "11-21")
	sum, err = csvimport.Run(context.Background(), st, strings.NewReader(older), csvimport.Options{})
	if err != nil || sum.Outcomes["stale"] != 1 {
		t.Fatalf("older import: %+v %v", sum, err)
	}
	if d := check(t, g, guard.Email, guard.KindEmail, "max@firma.de"); d.Reason != guard.ReasonDenied {
		t.Fatalf("older import undid a withdrawal: %+v", d)
	}
}

func TestImportDeletedRowsAndLeads(t *testing.T) {
	_, st := mustStore(t)
	in := "Id,Email,Darf_angemailt_werden__c,SystemModstamp,IsDeleted\n00Q5g00000ABCDe,lead@firma.de,Ja,2026-11-20T08:00:00.000Z,false\n"
	if _, err := csvimport.Run(context.Background(), st, strings.NewReader(in), csvimport.Options{Object: "Lead"}); err != nil {
		t.Fatal(err)
	}
	g := guard.New(st, guard.Options{})
	if d := check(t, g, guard.Email, guard.KindEmail, "lead@firma.de"); !d.Allowed || d.Records[0].Object != "Lead" {
		t.Fatalf("lead: %+v", d)
	}
	gone := strings.Replace(strings.Replace(in, "false", "true", 1), "11-20", "11-22", 1)
	sum, err := csvimport.Run(context.Background(), st, strings.NewReader(gone), csvimport.Options{Object: "Lead"})
	if err != nil || sum.Deleted != 1 {
		t.Fatalf("delete: %+v %v", sum, err)
	}
	if d := check(t, g, guard.Email, guard.KindEmail, "lead@firma.de"); d.Reason != guard.ReasonUnknownContact {
		t.Fatalf("deleted lead: %+v", d)
	}
}

func TestImportErrors(t *testing.T) {
	srv, st := mustStore(t)
	ctx := context.Background()
	if _, err := csvimport.Run(ctx, st, strings.NewReader("Email\nx@y.de\n"), csvimport.Options{}); err == nil {
		t.Fatal("no Id column accepted")
	}
	if _, err := csvimport.Run(ctx, st, strings.NewReader(dataLoader), csvimport.Options{Object: "Account"}); !errors.Is(err, webhook.ErrUnknownObject) {
		t.Fatalf("unknown object: %v", err)
	}
	srv.Stop(t)
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := csvimport.Run(cctx, st, strings.NewReader(dataLoader), csvimport.Options{}); !errors.Is(err, csvimport.ErrStore) {
		t.Fatal("import reported success with the store down")
	}
}
