package scrub_test

import (
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/scrub"
)

var hashKey = []byte("scrub-test-hash-key-0123456789abcdef")

func recordID(n int) string {
	id, err := guard.NormalizeRecordID(fmt.Sprintf("003%012d", n))
	if err != nil {
		panic(err)
	}
	return id
}

// mustStore returns a store on a real redis-server holding n contacts
// p<i>@firma.de whose email consent cycles Ja, Nein, Abfrage ausstehend, "".
func mustStore(tb testing.TB, n int) (*redistest.Server, *cache.Store) {
	tb.Helper()
	srv := redistest.Start(tb)
	st := cache.New(srv.Client(tb), cache.Options{HashKey: hashKey})
	ctx := context.Background()
	if err := st.Init(ctx); err != nil {
		tb.Fatal(err)
	}
	words := []string{"Ja", "Nein", "Abfrage ausstehend", ""}
	var ups []guard.Update
	for i := range n {
		id, err := guard.ParseEmail(fmt.Sprintf("p%d@firma.de", i))
		if err != nil {
			tb.Fatal(err)
		}
		u := guard.Update{ID: recordID(i), Object: "Contact", Version: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC), Identifiers: []guard.Identifier{id}, Source: "test"}
		u.Consent[guard.Email] = words[i%4]
		ups = append(ups, u)
	}
	if _, err := st.Apply(ctx, ups); err != nil {
		tb.Fatal(err)
	}
	return srv, st
}

func list(n int) string {
	var b strings.Builder
	b.WriteString("\ufeffName,Vorname,E-Mail,Ort\n")
	for i := range n {
		fmt.Fprintf(&b, "Name %d,\"Vor, %d\",P%d@Firma.de ,Köln\n", i, i, i)
	}
	b.WriteString("Kaputt,x,not-an-address,Bonn\n")
	b.WriteString("Fremd,y,fremd@example.org,Bonn\n")
	return b.String()
}

func TestScrubKeepsOnlyAllowedRows(t *testing.T) {
	_, st := mustStore(t, 2500)
	g := guard.New(st, guard.Options{Timeout: 5 * time.Second})
	var out bytes.Buffer
	sum, err := scrub.Run(context.Background(), g, strings.NewReader(list(2500)), &out, scrub.Options{Channel: guard.Email, Column: "e-mail", Chunk: 700})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(&out).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1+625 {
		t.Fatalf("%d rows out, want header + 625", len(rows))
	}
	if rows[0][0] != "Name" || rows[0][2] != "E-Mail" {
		t.Fatalf("header %q", rows[0])
	}
	for _, r := range rows[1:] {
		var i int
		fmt.Sscanf(r[0], "Name %d", &i)
		if i%4 != 0 || r[1] != fmt.Sprintf("Vor, %d", i) {
			t.Fatalf("row %q should not be allowed or was altered", r)
		}
	}
	want := scrub.Summary{Rows: 2502, Allowed: 625, Denied: 1877, Reasons: map[guard.Reason]int{
		guard.ReasonGranted: 625, guard.ReasonDenied: 625, guard.ReasonPending: 625, guard.ReasonMissing: 625,
		guard.ReasonInvalidIdentifier: 1, guard.ReasonUnknownContact: 1,
	}}
	if fmt.Sprint(sum) != fmt.Sprint(want) {
		t.Fatalf("summary\n%v\nwant\n%v", sum, want)
	}
}

func TestScrubAnnotate(t *testing.T) {
	_, st := mustStore(t, 8)
	g := guard.New(st, guard.Options{})
	var out bytes.Buffer
	if _, err := scrub.Run(context.Background(), g, strings.NewReader(list(8)), &out, scrub.Options{Channel: guard.Email, Column: "E-Mail", Annotate: true}); err != nil {
		t.Fatal(err)
	}
	rows, _ := csv.NewReader(&out).ReadAll()
	if len(rows) != 11 || rows[0][4] != "consent_allowed" || rows[0][5] != "consent_reason" {
		t.Fatalf("annotated output %q", rows)
	}
	if rows[1][4] != "true" || rows[1][5] != "consent_granted" || rows[2][5] != "consent_denied" || rows[9][5] != "invalid_identifier" || rows[10][5] != "unknown_contact" {
		t.Fatalf("annotations %q", rows)
	}
}

func TestScrubErrors(t *testing.T) {
	srv, st := mustStore(t, 10)
	g := guard.New(st, guard.Options{Timeout: 200 * time.Millisecond})
	var out bytes.Buffer
	if _, err := scrub.Run(context.Background(), g, strings.NewReader(list(3)), &out, scrub.Options{Channel: guard.Email, Column: "Mail"}); !errors.Is(err, scrub.ErrColumn) {
		t.Fatalf("missing column: %v", err)
	}
	if _, err := scrub.Run(context.Background(), g, strings.NewReader(""), &out, scrub.Options{Channel: guard.Email, Column: "Mail"}); err == nil {
		t.Fatal("empty input accepted")
	}
	srv.Stop(t)
	out.Reset()
	_, err := scrub.Run(context.Background(), g, strings.NewReader(list(10)), &out, scrub.Options{Channel: guard.Email, Column: "E-Mail"})
	if !errors.Is(err, guard.ErrUnavailable) {
		t.Fatalf("store down: %v", err)
	}
	if rows, _ := csv.NewReader(&out).ReadAll(); len(rows) > 1 {
		t.Fatalf("rows written although the store was down: %q", rows)
	}
}
