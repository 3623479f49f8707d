package sfrest_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/webhook"
	"github.com/consentguard/consentguard/webhook/sfrest"
	"github.com/consentguard/consentguard/webhook/sfrest/sfresttest"
)

const hashKey = "0123456789abcdef0123456789abcdef-sfrest-test"

var t0 = time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC)

func at(min int) time.Time { return t0.Add(time.Duration(min) * time.Minute) }

func mustClient(tb testing.TB, sf *sfresttest.Server, secret string) *sfrest.Client {
	tb.Helper()
	c, err := sfrest.New(sfrest.Config{URL: sf.URL(), ClientID: sf.ClientID, ClientSecret: secret})
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

func mustStore(tb testing.TB) (*cache.Store, *redistest.Server) {
	tb.Helper()
	rs := redistest.Start(tb)
	st := cache.New(rs.Client(tb), cache.Options{HashKey: []byte(hashKey)})
	if err := st.Init(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return st, rs
}

func contact(id string, ms time.Time, email, phone, emailConsent, phoneConsent any) map[string]any {
	return map[string]any{
		"Id": id, "SystemModstamp": ms, "LastModifiedDate": ms,
		"Email": email, "Phone": phone, "MobilePhone": nil,
		"Darf_angemailt_werden__c":                    emailConsent,
		"Darf_telefonisch_kontaktiert_werden__c":      phoneConsent,
		"Darf_Postwerbung_erhalten__c":                nil,
		"Informationen_duerfen_gespeichert_werden__c": "Ja",
	}
}

func check(tb testing.TB, g *guard.Guard, ch guard.Channel, kind guard.Kind, raw string) guard.Decision {
	tb.Helper()
	id, err := g.Parse(kind, raw)
	if err != nil {
		tb.Fatal(err)
	}
	d, err := g.Check(context.Background(), ch, id)
	if err != nil {
		tb.Fatalf("check %s: %v", ch, err)
	}
	return d
}

func TestSOQL(t *testing.T) {
	obj := webhook.DefaultMapping()["Contact"]
	got := sfrest.SelectSOQL("Contact", obj, time.Date(2026, 11, 28, 9, 15, 2, 700e6, time.FixedZone("CET", 3600)))
	want := "SELECT Id, SystemModstamp, LastModifiedDate, Email, Phone, MobilePhone, Darf_angemailt_werden__c, " +
		"Darf_telefonisch_kontaktiert_werden__c, Darf_Postwerbung_erhalten__c, Informationen_duerfen_gespeichert_werden__c " +
		"FROM Contact WHERE SystemModstamp >= 2026-11-28T08:15:02Z ORDER BY SystemModstamp, Id"
	if got != want {
		t.Fatalf("SelectSOQL\n got %s\nwant %s", got, want)
	}
	if got := sfrest.SelectSOQL("Lead", obj, time.Time{}); strings.Contains(got, "WHERE") {
		t.Fatalf("full sync has a WHERE: %s", got)
	}
	if got, want := sfrest.DeletedSOQL("Lead", t0), "SELECT Id, SystemModstamp FROM Lead WHERE IsDeleted = TRUE AND SystemModstamp >= 2026-11-28T09:15:02Z ORDER BY SystemModstamp, Id"; got != want {
		t.Fatalf("DeletedSOQL\n got %s\nwant %s", got, want)
	}
}

// TestSync runs a full sync against the fake org into a real Redis: paged
// results, a session that expires mid-query, booleans from a checkbox
// mapping, a deleted row, and a newer webhook write the sync must not undo.
func TestSync(t *testing.T) {
	ctx := context.Background()
	st, _ := mustStore(t)
	sf := sfresttest.Start(t)
	sf.PageSize = 2

	mapping := webhook.DefaultMapping()
	lead := mapping["Lead"]
	lead.Channels = map[string]webhook.Field{
		"email": {Field: "HasOptedOutOfEmail", Kind: webhook.OptOut},
		"phone": {Field: "Telefon_OK__c", Kind: webhook.Checkbox},
	}
	mapping["Lead"] = lead

	sf.Add("Contact", contact("0035g00000ABCDeAAP", at(0), "Anna@Firma.de", "0211 17540322", "Ja", "Nein"))
	sf.Add("Contact", contact("0035g00000ABCDf", at(1), "bert@firma.de", nil, "Abfrage ausstehend", nil))
	sf.Add("Contact", contact("0035g00000ABCDg", at(2), "carl@firma.de", nil, "Ja", "Ja"))
	sf.Add("Contact", contact("0035g00000ABCDh", at(3), "dora@firma.de", nil, "Vielleicht", nil))
	sf.Add("Contact", contact("0035g00000ABCDi", at(4), "erik@firma.de", nil, "Ja", nil))
	sf.Add("Contact", contact("not-an-id", at(5), "x@firma.de", nil, "Ja", nil))
	sf.Add("Lead", map[string]any{
		"Id": "00Q5g00000ABCDe", "SystemModstamp": at(0), "LastModifiedDate": at(0),
		"Email": "lead@firma.de", "Phone": 2111754033, "MobilePhone": nil,
		"HasOptedOutOfEmail": false, "Telefon_OK__c": true,
	})
	sf.Delete("Contact", "0035g00000ABCDjAAP", at(6))

	// Before the sync: carl withdrew by webhook at a newer version, and the
	// contact deleted in Salesforce is still in the store.
	if _, err := st.Apply(ctx, []guard.Update{
		{ID: "0035g00000ABCDgAAP", Object: "Contact", Version: at(30), Consent: [4]string{"Nein", "Nein", "", "Ja"}, Identifiers: []guard.Identifier{{Kind: guard.KindEmail, Value: "carl@firma.de"}}, Source: "outbound"},
		{ID: "0035g00000ABCDjAAP", Object: "Contact", Version: at(-60), Consent: [4]string{"Ja", "", "", "Ja"}, Identifiers: []guard.Identifier{{Kind: guard.KindEmail, Value: "jana@firma.de"}}, Source: "outbound"},
	}); err != nil {
		t.Fatal(err)
	}

	// The token expires after the first page: the client must authenticate
	// again and carry on with the same cursor.
	sf.ExpireSessionsAfter(1)
	c := mustClient(t, sf, sf.ClientSecret)
	sum, err := sfrest.Sync(ctx, c, st, sfrest.Options{Mapping: mapping, Record: webhook.RecordOptions{Now: at(60)}})
	if err != nil {
		t.Fatalf("sync: %v\n%s", err, sum)
	}
	t.Log(sum)
	if sf.TokenRequests() != 2 || sf.Rejected() != 1 {
		t.Errorf("token requests %d, 401s %d; want 2 and 1", sf.TokenRequests(), sf.Rejected())
	}
	qs := sf.Queries()
	wantQ := []string{
		"query: " + sfrest.SelectSOQL("Contact", mapping["Contact"], time.Time{}),
		"queryAll: " + sfrest.DeletedSOQL("Contact", time.Time{}),
		"query: " + sfrest.SelectSOQL("Lead", mapping["Lead"], time.Time{}),
		"queryAll: " + sfrest.DeletedSOQL("Lead", time.Time{}),
	}
	if strings.Join(qs, "\n") != strings.Join(wantQ, "\n") {
		t.Errorf("queries\n%s\nwant\n%s", strings.Join(qs, "\n"), strings.Join(wantQ, "\n"))
	}
	for _, v := range sf.APIVersions() {
		if v != "62.0" {
			t.Errorf("API version %s", v)
		}
	}
	if sum.Rows != 8 || sum.Deleted != 1 || sum.Skipped != 1 || sum.Pages != 6 {
		t.Errorf("rows %d deleted %d skipped %d pages %d; want 8 1 1 6", sum.Rows, sum.Deleted, sum.Skipped, sum.Pages)
	}
	if o := sum.Outcomes; o["created"] != 5 || o["stale"] != 1 || o["tombstoned"] != 1 {
		t.Errorf("outcomes %v", o)
	}
	if sum.Warnings[webhook.WarnUnknownValue] != 1 {
		t.Errorf("warnings %v", sum.Warnings)
	}
	if len(sum.Problems) != 1 || !strings.Contains(sum.Problems[0], "Id") || strings.Contains(sum.Problems[0], "firma") {
		t.Errorf("problems %q", sum.Problems)
	}

	g := guard.New(st, guard.Options{})
	for _, tc := range []struct {
		ch     guard.Channel
		kind   guard.Kind
		raw    string
		reason guard.Reason
	}{
		{guard.Email, guard.KindEmail, "anna@firma.de", guard.ReasonGranted},
		{guard.Phone, guard.KindPhone, "+49 211 17540322", guard.ReasonDenied},
		{guard.Email, guard.KindEmail, "bert@firma.de", guard.ReasonPending},
		{guard.Email, guard.KindEmail, "carl@firma.de", guard.ReasonDenied}, // newer webhook withdrawal stands
		{guard.Email, guard.KindEmail, "dora@firma.de", guard.ReasonMissing},
		{guard.Email, guard.KindEmail, "erik@firma.de", guard.ReasonGranted}, // read after the re-auth
		{guard.Email, guard.KindEmail, "lead@firma.de", guard.ReasonGranted}, // optout false
		{guard.Phone, guard.KindPhone, "0211 1754033", guard.ReasonGranted},  // checkbox true, number JSON
		{guard.Email, guard.KindEmail, "jana@firma.de", guard.ReasonUnknownContact},
		{guard.Email, guard.KindEmail, "x@firma.de", guard.ReasonUnknownContact},
	} {
		if d := check(t, g, tc.ch, tc.kind, tc.raw); d.Reason != tc.reason {
			t.Errorf("%s %s: %s, want %s", tc.ch, tc.raw, d.Reason, tc.reason)
		}
	}
	rec, err := st.Get(ctx, "0035g00000ABCDjAAP")
	if err != nil || !rec.Deleted || !rec.Version.Equal(at(6)) {
		t.Errorf("deleted contact: %+v %v", rec, err)
	}
	hist, err := st.History(ctx, "0035g00000ABCDeAAP")
	if err != nil || len(hist) != 1 || hist[0].Source != "sync" || hist[0].Ref != "query Contact page 1" {
		t.Errorf("history %+v %v", hist, err)
	}

	// A second sync since the deletion re-reads only newer rows; replaying
	// changes nothing.
	sum, err = sfrest.Sync(ctx, c, st, sfrest.Options{Mapping: mapping, Objects: []string{"contact"}, Since: at(4), Record: webhook.RecordOptions{Now: at(60)}})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Rows != 3 || sum.Outcomes["unchanged"]+sum.Outcomes["stale"] != 2 || strings.Join(sum.Objects, ",") != "Contact" {
		t.Errorf("incremental sync: %s", sum)
	}
	if q := sf.Queries(); !strings.Contains(q[len(q)-2], "WHERE SystemModstamp >= 2026-11-28T09:19:02Z ORDER BY") {
		t.Errorf("incremental query %s", q[len(q)-2])
	}
}

func TestSyncErrors(t *testing.T) {
	ctx := context.Background()
	st, rs := mustStore(t)
	sf := sfresttest.Start(t)
	sf.Add("Contact", contact("0035g00000ABCDe", at(0), "anna@firma.de", nil, "Ja", nil))
	sf.Add("Lead", contact("00Q5g00000ABCDe", at(0), "lead@firma.de", nil, "Ja", nil))

	t.Run("wrong secret", func(t *testing.T) {
		c := mustClient(t, sf, "not-the-secret")
		_, err := sfrest.Sync(ctx, c, st, sfrest.Options{})
		if !errors.Is(err, sfrest.ErrAuth) || !strings.Contains(err.Error(), "invalid_client") {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(err.Error(), "not-the-secret") || strings.Contains(err.Error(), sf.ClientSecret) {
			t.Fatalf("error shows the secret: %v", err)
		}
	})
	t.Run("salesforce error", func(t *testing.T) {
		c := mustClient(t, sf, sf.ClientSecret)
		sf.FailNext(http.StatusBadRequest, "INVALID_FIELD", "No such column 'Darf_angemailt_werden__c' on entity 'Contact'.")
		_, err := sfrest.Sync(ctx, c, st, sfrest.Options{})
		var ae *sfrest.APIError
		if !errors.As(err, &ae) || ae.Code != "INVALID_FIELD" || ae.Status != 400 || !strings.Contains(err.Error(), "No such column") {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(err.Error(), "00D000000000062!") {
			t.Fatalf("error shows the token: %v", err)
		}
	})
	t.Run("unknown object", func(t *testing.T) {
		c := mustClient(t, sf, sf.ClientSecret)
		_, err := sfrest.Sync(ctx, c, st, sfrest.Options{Objects: []string{"Account", "Contact"}})
		if !errors.Is(err, webhook.ErrUnknownObject) || !strings.Contains(err.Error(), "Account") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("redis down", func(t *testing.T) {
		rs.Stop(t)
		c := mustClient(t, sf, sf.ClientSecret)
		sum, err := sfrest.Sync(ctx, c, st, sfrest.Options{})
		if !errors.Is(err, sfrest.ErrStore) {
			t.Fatalf("err = %v (%s)", err, sum)
		}
		if len(sum.Outcomes) != 0 {
			t.Fatalf("outcomes with redis down: %v", sum.Outcomes)
		}
	})
}

func TestNewConfig(t *testing.T) {
	_, err := sfrest.New(sfrest.Config{})
	for _, want := range []string{"url", "client_id", "client_secret"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("empty config: %v does not name %s", err, want)
		}
	}
	for _, u := range []string{"http://acme.my.salesforce.com", "ftp://x", "acme.my.salesforce.com", "https://user:pw@acme.my.salesforce.com"} {
		if _, err := sfrest.New(sfrest.Config{URL: u, ClientID: "a", ClientSecret: "b"}); err == nil {
			t.Errorf("URL %s accepted", u)
		} else if strings.Contains(err.Error(), "pw") {
			t.Errorf("error shows the URL password: %v", err)
		}
	}
	if _, err := sfrest.New(sfrest.Config{URL: "https://acme.my.salesforce.com", ClientID: "a", ClientSecret: "b", APIVersion: "latest"}); err == nil {
		t.Error("api version latest accepted")
	}
	if _, err := sfrest.New(sfrest.Config{URL: "https://acme.my.salesforce.com/", ClientID: "a", ClientSecret: "b", APIVersion: "v61.0"}); err != nil {
		t.Error(err)
	}
}

// TestHostileAnswers: a token answer or a cursor that points elsewhere
// never receives the bearer token; answers are bounded.
func TestHostileAnswers(t *testing.T) {
	var leaked atomic.Int32
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "" {
			leaked.Add(1)
		}
		w.Write([]byte(`{"done":true,"totalSize":0,"records":[]}`))
	}))
	defer elsewhere.Close()

	var mode atomic.Value
	org := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := mode.Load().(string)
		if r.URL.Path == "/services/oauth2/token" {
			inst := "http://" + r.Host
			if m == "foreign-instance" {
				inst = "ftp://" + r.Host
			}
			json.NewEncoder(w).Encode(map[string]string{"access_token": "tok", "instance_url": inst, "token_type": "Bearer"})
			return
		}
		switch m {
		case "absolute-cursor":
			w.Write([]byte(`{"done":false,"totalSize":2,"records":[{}],"nextRecordsUrl":"` + elsewhere.URL + `/services/data/v62.0/query/01g-1"}`))
		case "repeating-cursor":
			w.Write([]byte(`{"done":false,"totalSize":2,"records":[],"nextRecordsUrl":"/services/data/v62.0/query/01g-1"}`))
		case "huge":
			w.Write([]byte(`{"done":true,"totalSize":1,"records":[{"Id":"` + strings.Repeat("x", 4096) + `"}]}`))
		case "not-json":
			w.Write([]byte(`<html>maintenance</html>`))
		}
	}))
	defer org.Close()

	for _, m := range []string{"foreign-instance", "absolute-cursor", "repeating-cursor", "huge", "not-json"} {
		mode.Store(m)
		c, err := sfrest.New(sfrest.Config{URL: org.URL, ClientID: "id", ClientSecret: "secret", MaxBody: 1024})
		if err != nil {
			t.Fatal(err)
		}
		pages := 0
		err = c.Query(context.Background(), "SELECT Id FROM Contact", false, func(sfrest.Page) error { pages++; return nil })
		if !errors.Is(err, sfrest.ErrResponse) {
			t.Errorf("%s: err = %v", m, err)
		}
		if pages > 2 {
			t.Errorf("%s: %d pages", m, pages)
		}
	}
	if leaked.Load() != 0 {
		t.Fatal("bearer token sent to a foreign host")
	}
}

func TestRecordField(t *testing.T) {
	sf := sfresttest.Start(t)
	sf.Add("Contact", map[string]any{
		"Id": "0035g00000ABCDe", "SystemModstamp": t0, "Email": "a@b.de", "DoNotCall": true,
		"HasOptedOutOfEmail": false, "NumberOfEmployees": 1.5e3, "Phone": nil,
	})
	c := mustClient(t, sf, sf.ClientSecret)
	var got []sfrest.Record
	err := c.Query(context.Background(), "SELECT Id, SystemModstamp, email, DoNotCall, HasOptedOutOfEmail, NumberOfEmployees, Phone FROM Contact ORDER BY SystemModstamp, Id", false, func(p sfrest.Page) error {
		got = append(got, p.Records...)
		return nil
	})
	if err != nil || len(got) != 1 {
		t.Fatal(err, len(got))
	}
	r := got[0]
	if r.Type != "Contact" {
		t.Errorf("type %q", r.Type)
	}
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"Id", "0035g00000ABCDe", true},
		{"EMAIL", "a@b.de", true},
		{"SystemModstamp", "2026-11-28T09:15:02.000+0000", true},
		{"DoNotCall", "true", true},
		{"HasOptedOutOfEmail", "false", true},
		{"NumberOfEmployees", "1500", true},
		{"Phone", "", false},
		{"MobilePhone", "", false},
		{"attributes", "", false},
	} {
		if v, ok := r.Field(tc.name); v != tc.want || ok != tc.ok {
			t.Errorf("Field(%s) = %q, %v; want %q, %v", tc.name, v, ok, tc.want, tc.ok)
		}
	}
}
