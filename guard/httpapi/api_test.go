package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/httpapi"
)

func TestMain(m *testing.M) {
	// gin's mode is process-global; release mode only silences its debug
	// route printing in test output. cmd sets it the same way.
	gin.SetMode(gin.ReleaseMode)
	os.Exit(m.Run())
}

// The store the lead wires in satisfies the interface this package declares.
var _ httpapi.Contacts = (*cache.Store)(nil)

var testHashKey = []byte("httpapi-test-hash-key-0123456789")

// Contacts of the fixture. Ids are 15-character and normalised to 18.
var (
	idJane    = mustID("003000000000001")
	idShared1 = mustID("003000000000002")
	idShared2 = mustID("003000000000003")
	idStorage = mustID("003000000000004")
	idOdd     = mustID("00Q000000000005") // a Lead with an unknown word
	version   = time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC)
)

const (
	janeEmail  = "jane.doe@example.de"
	janePhone  = "+4921117540322"
	sharedMail = "info@firma.de"
)

func mustID(s string) string {
	id, err := guard.NormalizeRecordID(s)
	if err != nil {
		panic(err)
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

type fixture struct {
	url   string
	redis *redistest.Server
	store *cache.Store
	logs  *syncBuffer
}

// mustServe starts a redis-server, a store populated with the fixture's
// contacts, and the API over httptest.NewServer.
func mustServe(tb testing.TB, opts httpapi.Options) *fixture {
	tb.Helper()
	rs := redistest.Start(tb)
	st := cache.New(rs.Client(tb), cache.Options{HashKey: testHashKey})
	ctx := context.Background()
	if err := st.Init(ctx); err != nil {
		tb.Fatalf("store init: %v", err)
	}
	ups := []guard.Update{
		{ID: idJane, Object: "Contact", Version: version, Consent: [4]string{"Ja", "Nein", "Abfrage ausstehend", "Ja"},
			Identifiers: []guard.Identifier{email(tb, janeEmail), phone(tb, janePhone)}, Source: "test", Ref: "n1"},
		{ID: idShared1, Object: "Contact", Version: version, Consent: [4]string{"Ja", "", "", ""},
			Identifiers: []guard.Identifier{email(tb, sharedMail)}, Source: "test"},
		{ID: idShared2, Object: "Contact", Version: version, Consent: [4]string{"Nein", "", "", ""},
			Identifiers: []guard.Identifier{email(tb, sharedMail)}, Source: "test"},
		{ID: idStorage, Object: "Contact", Version: version, Consent: [4]string{"Ja", "Ja", "Ja", "Nein"},
			Identifiers: []guard.Identifier{email(tb, "storage@example.de")}, Source: "test"},
		{ID: idOdd, Object: "Lead", Version: version, Consent: [4]string{"Vielleicht", "", "", ""},
			Identifiers: []guard.Identifier{email(tb, "odd@example.de")}, Source: "test"},
	}
	if _, err := st.Apply(ctx, ups); err != nil {
		tb.Fatalf("populate: %v", err)
	}
	logs := &syncBuffer{}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	g := guard.New(st, guard.Options{Logger: opts.Logger})
	srv := httptest.NewServer(httpapi.New(g, st, opts))
	tb.Cleanup(srv.Close)
	return &fixture{url: srv.URL, redis: rs, store: st, logs: logs}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// response is the union of the bodies the API answers.
type response struct {
	Allowed *bool   `json:"allowed"`
	Channel string  `json:"channel"`
	Reason  string  `json:"reason"`
	Error   string  `json:"error"`
	Records []recJS `json:"records"`
	Results []struct {
		Allowed bool    `json:"allowed"`
		Channel string  `json:"channel"`
		Reason  string  `json:"reason"`
		Error   string  `json:"error"`
		Records []recJS `json:"records"`
	} `json:"results"`
	Status string `json:"status"`
}

type recJS struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Consent string `json:"consent"`
	Version string `json:"version"`
	Reason  string `json:"reason"`
}

type call struct {
	method, path, body string
	header             map[string]string
}

func (f *fixture) do(tb testing.TB, c call) (int, string) {
	tb.Helper()
	var body io.Reader
	if c.body != "" {
		body = strings.NewReader(c.body)
	}
	req, err := http.NewRequest(c.method, f.url+c.path, body)
	if err != nil {
		tb.Fatal(err)
	}
	if c.body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", c.method, c.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		tb.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") && !strings.HasPrefix(c.path, "/metrics") {
		tb.Errorf("%s %s: Content-Type %q, want JSON", c.method, c.path, ct)
	}
	return resp.StatusCode, string(b)
}

func (f *fixture) get(tb testing.TB, path string) (int, response, string) {
	tb.Helper()
	return f.decode(tb, call{method: "GET", path: path})
}

func (f *fixture) decode(tb testing.TB, c call) (int, response, string) {
	tb.Helper()
	code, body := f.do(tb, c)
	var r response
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		tb.Fatalf("%s %s: body is not JSON: %v: %s", c.method, c.path, err, body)
	}
	return code, r, body
}

func TestCheck(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	tests := []struct {
		name    string
		query   string
		post    string
		status  int
		allowed bool
		reason  string
		records []string
	}{
		{"email granted", "channel=email&email=Jane.Doe%40Example.DE", `{"channel":"email","email":" Jane.Doe@example.de "}`,
			200, true, "consent_granted", []string{idJane}},
		{"phone denied, national format", "channel=phone&phone=0211+175403-22", `{"channel":"phone","phone":"0211 175403-22"}`,
			200, false, "consent_denied", []string{idJane}},
		{"phone with unencoded plus", "channel=phone&phone=+4921117540322", `{"channel":"phone","phone":"+49 (0)211 17540322"}`,
			200, false, "consent_denied", []string{idJane}},
		{"post pending by 15-char id", "channel=post&contact_id=003000000000001", `{"channel":"post","contact_id":"003000000000001"}`,
			200, false, "consent_pending", []string{idJane}},
		{"storage granted by 18-char id", "channel=storage&contact_id=" + idJane, `{"channel":"storage","contact_id":"` + idJane + `"}`,
			200, true, "consent_granted", []string{idJane}},
		{"shared address: most restrictive wins", "channel=email&email=info%40firma.de", `{"channel":"email","email":"info@firma.de"}`,
			200, false, "consent_denied", []string{idShared1, idShared2}},
		{"storage denied", "channel=email&email=storage%40example.de", `{"channel":"email","email":"storage@example.de"}`,
			200, false, "storage_denied", []string{idStorage}},
		{"unknown word counts as missing", "channel=email&email=odd%40example.de", `{"channel":"email","email":"odd@example.de"}`,
			200, false, "consent_missing", []string{idOdd}},
		{"unknown contact", "channel=email&email=nobody%40example.de", `{"channel":"email","email":"nobody@example.de"}`,
			200, false, "unknown_contact", nil},
		{"phone without consent field", "channel=email&contact_id=003000000000009", `{"channel":"email","contact_id":"003000000000009"}`,
			200, false, "unknown_contact", nil},
		{"invalid email", "channel=email&email=jane.doe%40", `{"channel":"email","email":"jane.doe@"}`,
			400, false, "invalid_identifier", nil},
		{"invalid phone", "channel=phone&phone=12", `{"channel":"phone","phone":"12"}`,
			400, false, "invalid_identifier", nil},
		{"invalid contact id", "channel=phone&contact_id=xyz", `{"channel":"phone","contact_id":"xyz"}`,
			400, false, "invalid_identifier", nil},
		{"bad channel", "channel=fax&email=jane.doe%40example.de", `{"channel":"fax","email":"jane.doe@example.de"}`,
			400, false, "invalid_identifier", nil},
		{"no channel", "email=jane.doe%40example.de", `{"email":"jane.doe@example.de"}`,
			400, false, "invalid_identifier", nil},
		{"no identifier", "channel=email", `{"channel":"email"}`,
			400, false, "invalid_identifier", nil},
		{"two identifiers", "channel=email&email=jane.doe%40example.de&phone=%2B4921117540322", `{"channel":"email","email":"jane.doe@example.de","phone":"+4921117540322"}`,
			400, false, "invalid_identifier", nil},
	}
	for _, tt := range tests {
		for _, c := range []call{
			{method: "GET", path: "/v1/check?" + tt.query},
			{method: "POST", path: "/v1/check", body: tt.post},
		} {
			t.Run(tt.name+"/"+c.method, func(t *testing.T) {
				code, r, body := f.decode(t, c)
				if code != tt.status {
					t.Fatalf("status %d, want %d: %s", code, tt.status, body)
				}
				if r.Allowed == nil || *r.Allowed != tt.allowed || r.Reason != tt.reason {
					t.Fatalf("got allowed=%v reason=%q, want %v %q: %s", r.Allowed, r.Reason, tt.allowed, tt.reason, body)
				}
				if code != 200 {
					if r.Error == "" {
						t.Errorf("error body without error text: %s", body)
					}
					for _, leak := range []string{"jane.doe", "17540322"} {
						if strings.Contains(body, leak) {
							t.Errorf("error body echoes %q: %s", leak, body)
						}
					}
					return
				}
				if r.Channel == "" || !strings.Contains(body, `"records":[`) {
					t.Errorf("decision without channel or records array: %s", body)
				}
				var ids []string
				for _, rec := range r.Records {
					ids = append(ids, rec.ID)
					if rec.Version != "2026-11-28T09:15:02.000Z" {
						t.Errorf("record %s version %q", rec.ID, rec.Version)
					}
				}
				if !sameSet(ids, tt.records) {
					t.Errorf("records %v, want %v", ids, tt.records)
				}
			})
		}
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

func TestCheckDecisionShape(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	_, body := f.do(t, call{method: "GET", path: "/v1/check?channel=phone&contact_id=" + idJane})
	want := `{"allowed":false,"channel":"phone","reason":"consent_denied","records":[{"id":"` + idJane +
		`","object":"Contact","consent":"Nein","version":"2026-11-28T09:15:02.000Z","reason":"consent_denied"}]}` + "\n"
	if body != want {
		t.Errorf("body\n got %s\nwant %s", body, want)
	}
}

func TestCheckBodyErrors(t *testing.T) {
	f := mustServe(t, httpapi.Options{MaxBody: 256, MaxBatch: 3})
	big := `{"channel":"email","email":"` + strings.Repeat("a", 300) + `@example.de"}`
	tests := []struct {
		name, path, body string
		status           int
	}{
		{"not JSON", "/v1/check", `{"channel":`, 400},
		{"wrong type", "/v1/check", `{"channel":"email","email":42}`, 400},
		{"empty body", "/v1/check", ``, 400},
		{"too large", "/v1/check", big, 413},
		{"batch not JSON", "/v1/check/batch", `[`, 400},
		{"batch without channel", "/v1/check/batch", `{"items":[{"email":"a@b.de"}]}`, 400},
		{"batch without items", "/v1/check/batch", `{"channel":"email"}`, 400},
		{"batch bad channel", "/v1/check/batch", `{"channel":"fax","items":[]}`, 400},
		{"batch over MaxBatch", "/v1/check/batch", `{"channel":"email","items":[{},{},{},{}]}`, 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, r, body := f.decode(t, call{method: "POST", path: tt.path, body: tt.body})
			if code != tt.status || r.Allowed == nil || *r.Allowed || r.Error == "" {
				t.Errorf("status %d, want %d with allowed:false and an error: %s", code, tt.status, body)
			}
			if tt.status == 400 && r.Reason != "invalid_identifier" {
				t.Errorf("reason %q, want invalid_identifier", r.Reason)
			}
		})
	}
}

func TestBatch(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	body := `{"channel":"email","items":[
		{"email":"jane.doe@example.de"},
		{"email":"not-an-address"},
		{"contact_id":"003000000000001"},
		{"phone":"0211 175403-22"},
		{},
		{"email":"info@firma.de"},
		{"email":"jane.doe@example.de","phone":"+4921117540322"},
		{"email":"nobody@example.de"}
	]}`
	code, r, raw := f.decode(t, call{method: "POST", path: "/v1/check/batch", body: body})
	if code != 200 {
		t.Fatalf("status %d: %s", code, raw)
	}
	want := []struct {
		allowed bool
		reason  string
		err     bool
	}{
		{true, "consent_granted", false},
		{false, "invalid_identifier", true},
		{true, "consent_granted", false},
		{true, "consent_granted", false}, // Jane's phone, channel email: Ja
		{false, "invalid_identifier", true},
		{false, "consent_denied", false},
		{false, "invalid_identifier", true},
		{false, "unknown_contact", false},
	}
	if len(r.Results) != len(want) {
		t.Fatalf("%d results, want %d: %s", len(r.Results), len(want), raw)
	}
	for i, w := range want {
		got := r.Results[i]
		if got.Allowed != w.allowed || got.Reason != w.reason || (got.Error != "") != w.err || got.Channel != "email" {
			t.Errorf("item %d: got %+v, want %+v", i, got, w)
		}
		if got.Records == nil {
			t.Errorf("item %d: records not an array", i)
		}
	}
	if strings.Contains(raw, "not-an-address") {
		t.Errorf("batch echoes an invalid identifier unmasked: %s", raw)
	}

	code, r, raw = f.decode(t, call{method: "POST", path: "/v1/check/batch", body: `{"channel":"phone","items":[]}`})
	if code != 200 || r.Results == nil || len(r.Results) != 0 {
		t.Errorf("empty batch: status %d: %s", code, raw)
	}
}

// TestBatch10000Phones checks a full-size batch for correctness: every
// result in item order, known numbers found, unknown ones not.
func TestBatch10000Phones(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	const n = 10000
	ups := make([]guard.Update, 0, n/2)
	for i := 0; i < n; i += 2 { // every second number is a contact
		consent := "Ja"
		if i%4 == 0 {
			consent = "Nein"
		}
		ups = append(ups, guard.Update{
			ID: mustID(fmt.Sprintf("003B%011d", i)), Object: "Contact", Version: version,
			Consent:     [4]string{"", consent, "", "Ja"},
			Identifiers: []guard.Identifier{phone(t, benchPhone(i))}, Source: "test",
		})
	}
	if _, err := f.store.Apply(context.Background(), ups); err != nil {
		t.Fatal(err)
	}
	items := make([]map[string]string, n)
	for i := range items {
		items[i] = map[string]string{"phone": benchPhoneNational(i)}
	}
	body, _ := json.Marshal(map[string]any{"channel": "phone", "items": items})
	code, r, raw := f.decode(t, call{method: "POST", path: "/v1/check/batch", body: string(body)})
	if code != 200 || len(r.Results) != n {
		t.Fatalf("status %d, %d results: %.300s", code, len(r.Results), raw)
	}
	for i, res := range r.Results {
		var want string
		switch {
		case i%2 == 1:
			want = "unknown_contact"
		case i%4 == 0:
			want = "consent_denied"
		default:
			want = "consent_granted"
		}
		if res.Reason != want {
			t.Fatalf("item %d: reason %q, want %q", i, res.Reason, want)
		}
		if want != "unknown_contact" && (len(res.Records) != 1 || res.Records[0].ID != mustID(fmt.Sprintf("003B%011d", i))) {
			t.Fatalf("item %d: records %+v", i, res.Records)
		}
	}
}

// benchPhone is the i-th test number in E.164 (Berlin, 8-digit subscriber).
func benchPhone(i int) string { return fmt.Sprintf("+4930%08d", 10000000+i) }

// benchPhoneNational is the same number as a German caller writes it.
func benchPhoneNational(i int) string { return fmt.Sprintf("030 %08d", 10000000+i) }

func TestContacts(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	code, body := f.do(t, call{method: "GET", path: "/v1/contacts/003000000000001"})
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	var c struct {
		ID        string `json:"id"`
		Object    string `json:"object"`
		Version   string `json:"version"`
		Deleted   bool   `json:"deleted"`
		UpdatedAt string `json:"updated_at"`
		Consent   map[string]struct {
			Value   string `json:"value"`
			Meaning string `json:"meaning"`
		} `json:"consent"`
		History []struct {
			Outcome string            `json:"outcome"`
			Source  string            `json:"source"`
			Ref     string            `json:"ref"`
			Consent map[string]string `json:"consent"`
		} `json:"history"`
	}
	if err := json.Unmarshal([]byte(body), &c); err != nil {
		t.Fatal(err)
	}
	if c.ID != idJane || c.Object != "Contact" || c.Version != "2026-11-28T09:15:02.000Z" || c.Deleted || c.UpdatedAt == "" {
		t.Errorf("record fields: %s", body)
	}
	for ch, want := range map[string][2]string{
		"email": {"Ja", "granted"}, "phone": {"Nein", "denied"}, "post": {"Abfrage ausstehend", "pending"}, "storage": {"Ja", "granted"},
	} {
		if got := c.Consent[ch]; got.Value != want[0] || got.Meaning != want[1] {
			t.Errorf("consent %s = %+v, want %v", ch, got, want)
		}
	}
	if len(c.History) != 1 || c.History[0].Outcome != "created" || c.History[0].Source != "test" || c.History[0].Ref != "n1" || c.History[0].Consent["phone"] != "Nein" {
		t.Errorf("history: %s", body)
	}
	for _, leak := range []string{"jane", "example.de", "17540322"} {
		if strings.Contains(body, leak) {
			t.Errorf("contact view contains identifier text %q: %s", leak, body)
		}
	}

	code, body = f.do(t, call{method: "GET", path: "/v1/contacts/" + idOdd})
	if code != 200 || !strings.Contains(body, `"value":"Vielleicht","meaning":"missing","unrecognised":true`) {
		t.Errorf("unknown word: status %d: %s", code, body)
	}

	for _, tt := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/v1/contacts/003000000000099", 404},
		{"GET", "/v1/contacts/not-an-id", 400},
		{"DELETE", "/v1/contacts/003000000000099", 404},
		{"DELETE", "/v1/contacts/not-an-id", 400},
	} {
		code, r, body := f.decode(t, call{method: tt.method, path: tt.path})
		if code != tt.status || r.Allowed == nil || *r.Allowed || r.Error == "" {
			t.Errorf("%s %s: status %d, want %d with an error body: %s", tt.method, tt.path, code, tt.status, body)
		}
	}

	code, body = f.do(t, call{method: "DELETE", path: "/v1/contacts/" + idJane})
	if code != 200 || body != `{"id":"`+idJane+`","outcome":"tombstoned"}`+"\n" {
		t.Fatalf("erase: status %d: %s", code, body)
	}
	_, r, body := f.get(t, "/v1/check?channel=email&email=jane.doe%40example.de")
	if r.Reason != "unknown_contact" || *r.Allowed {
		t.Errorf("check after erase: %s", body)
	}
	code, body = f.do(t, call{method: "GET", path: "/v1/contacts/" + idJane})
	if code != 200 || !strings.Contains(body, `"deleted":true`) || !strings.Contains(body, `"source":"erase"`) {
		t.Errorf("contact after erase: status %d: %s", code, body)
	}
}

func TestHealthAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := mustServe(t, httpapi.Options{Registerer: reg, Gatherer: reg})
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := f.do(t, call{method: "GET", path: p}); code != 200 {
			t.Errorf("%s: status %d: %s", p, code, body)
		}
		resp, err := http.Head(f.url + p)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("HEAD %s: %v %v", p, resp, err)
		} else {
			resp.Body.Close()
		}
	}
	f.get(t, "/v1/check?channel=email&email=jane.doe%40example.de")
	f.get(t, "/v1/check?channel=email&email=bad")
	code, body := f.do(t, call{method: "GET", path: "/metrics"})
	if code != 200 {
		t.Fatalf("/metrics: status %d", code)
	}
	for _, want := range []string{
		`consentguard_http_requests_total{method="GET",route="/v1/check",status="200"} 1`,
		`consentguard_http_requests_total{method="GET",route="/v1/check",status="400"} 1`,
		`consentguard_http_decisions_total{channel="email",reason="consent_granted"} 1`,
		`consentguard_http_decisions_total{channel="email",reason="invalid_identifier"} 1`,
		`consentguard_http_request_duration_seconds_count{method="GET",route="/v1/check"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// A second handler on the same registry reuses the collectors.
	httpapi.New(guard.New(f.store, guard.Options{}), f.store, httpapi.Options{Registerer: reg})

	// Without a Gatherer there is no /metrics.
	f2 := mustServe(t, httpapi.Options{})
	if code, _ := f2.do(t, call{method: "GET", path: "/metrics"}); code != 404 {
		t.Errorf("/metrics without Gatherer: status %d, want 404", code)
	}
}

func TestUnknownRouteAndMethod(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	for _, tt := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/nope", 404},
		{"GET", "/v1/nope", 404},
		{"PUT", "/v1/check", 405},
		{"GET", "/v1/check/batch", 405},
	} {
		code, r, body := f.decode(t, call{method: tt.method, path: tt.path})
		if code != tt.status || r.Allowed == nil || *r.Allowed || r.Error == "" {
			t.Errorf("%s %s: status %d, want %d with a JSON error: %s", tt.method, tt.path, code, tt.status, body)
		}
	}
}

func TestPanicRecovery(t *testing.T) {
	f := mustServe(t, httpapi.Options{ExtraRoutes: func(r *gin.Engine) {
		r.GET("/v1/boom", func(*gin.Context) { panic("boom") })
	}})
	code, r, body := f.decode(t, call{method: "GET", path: "/v1/boom"})
	if code != 500 || r.Allowed == nil || *r.Allowed || strings.Contains(body, "boom") {
		t.Errorf("panic: status %d: %s", code, body)
	}
	if !strings.Contains(f.logs.String(), "panic serving HTTP request") {
		t.Error("panic not logged")
	}
	if code, _, _ := f.get(t, "/v1/check?channel=email&email=jane.doe%40example.de"); code != 200 {
		t.Errorf("after panic: status %d", code)
	}
}

func TestAPIKeys(t *testing.T) {
	keys := []httpapi.Key{
		{Name: "dialer", SHA256: httpapi.HashKey("dialer-secret"), Scopes: []string{"check:phone"}},
		{Name: "crm", SHA256: httpapi.HashKey("crm-secret"), Scopes: []string{"check:*", "contacts:read"}},
		{Name: "dpo", SHA256: httpapi.HashKey("dpo-secret"), Scopes: []string{"*"}},
	}
	f := mustServe(t, httpapi.Options{Keys: keys, ExtraRoutes: func(r *gin.Engine) {
		r.POST("/v1/import", httpapi.RequireScope("import"), func(c *gin.Context) { c.JSON(200, gin.H{"ok": true}) })
	}})
	bearer := func(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }
	phoneQ := "/v1/check?channel=phone&phone=%2B4921117540322"
	emailQ := "/v1/check?channel=email&email=jane.doe%40example.de"
	tests := []struct {
		name   string
		c      call
		status int
	}{
		{"no key", call{method: "GET", path: phoneQ}, 401},
		{"wrong key", call{method: "GET", path: phoneQ, header: bearer("guess")}, 401},
		{"other scheme", call{method: "GET", path: phoneQ, header: map[string]string{"Authorization": "Basic ZGlhbGVyOng="}}, 401},
		{"empty X-API-Key", call{method: "GET", path: phoneQ, header: map[string]string{"X-API-Key": ""}}, 401},
		{"no key, bad request still 401", call{method: "GET", path: "/v1/check?channel=fax"}, 401},
		{"no key, unknown /v1 route", call{method: "GET", path: "/v1/nope"}, 401},
		{"no key, POST check", call{method: "POST", path: "/v1/check", body: `{"channel":"email","email":"a@b.de"}`}, 401},
		{"no key, bad POST body still 401", call{method: "POST", path: "/v1/check", body: `{`}, 401},
		{"wrong key, batch", call{method: "POST", path: "/v1/check/batch", body: `{"channel":"phone","items":[]}`, header: bearer("guess")}, 401},
		{"no key, wrong method on check", call{method: "PUT", path: "/v1/check"}, 401},
		{"dialer phone", call{method: "GET", path: phoneQ, header: bearer("dialer-secret")}, 200},
		{"dialer phone, lower-case scheme", call{method: "GET", path: phoneQ, header: map[string]string{"Authorization": "bearer dialer-secret"}}, 200},
		{"dialer via X-API-Key", call{method: "GET", path: phoneQ, header: map[string]string{"X-API-Key": "dialer-secret"}}, 200},
		{"dialer email", call{method: "GET", path: emailQ, header: bearer("dialer-secret")}, 403},
		{"dialer POST email", call{method: "POST", path: "/v1/check", body: `{"channel":"email","email":"a@b.de"}`, header: bearer("dialer-secret")}, 403},
		{"dialer batch email", call{method: "POST", path: "/v1/check/batch", body: `{"channel":"email","items":[]}`, header: bearer("dialer-secret")}, 403},
		{"dialer batch phone", call{method: "POST", path: "/v1/check/batch", body: `{"channel":"phone","items":[]}`, header: bearer("dialer-secret")}, 200},
		{"dialer contact", call{method: "GET", path: "/v1/contacts/" + idJane, header: bearer("dialer-secret")}, 403},
		{"crm email", call{method: "GET", path: emailQ, header: bearer("crm-secret")}, 200},
		{"crm contact", call{method: "GET", path: "/v1/contacts/" + idJane, header: bearer("crm-secret")}, 200},
		{"crm erase", call{method: "DELETE", path: "/v1/contacts/" + idJane, header: bearer("crm-secret")}, 403},
		{"crm import", call{method: "POST", path: "/v1/import", header: bearer("crm-secret")}, 403},
		{"import without key", call{method: "POST", path: "/v1/import"}, 401},
		{"dpo import", call{method: "POST", path: "/v1/import", header: bearer("dpo-secret")}, 200},
		{"dpo erase", call{method: "DELETE", path: "/v1/contacts/" + idShared1, header: bearer("dpo-secret")}, 200},
		{"healthz without key", call{method: "GET", path: "/healthz"}, 200},
		{"readyz without key", call{method: "GET", path: "/readyz"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := f.do(t, tt.c)
			if code != tt.status {
				t.Errorf("status %d, want %d: %s", code, tt.status, body)
			}
			if code >= 400 && !strings.Contains(body, `"allowed":false`) {
				t.Errorf("error body without allowed:false: %s", body)
			}
		})
	}

	// With keys and AllowAnonymous, a request without a key passes, a bad
	// key is still refused.
	f2 := mustServe(t, httpapi.Options{Keys: keys, AllowAnonymous: true})
	if code, _ := f2.do(t, call{method: "GET", path: emailQ}); code != 200 {
		t.Errorf("anonymous allowed: status %d", code)
	}
	if code, _ := f2.do(t, call{method: "GET", path: emailQ, header: bearer("guess")}); code != 401 {
		t.Errorf("anonymous allowed, bad key: status %d, want 401", code)
	}
}

// TestFailClosed kills the test's redis-server mid-run: checks must turn
// into 503 store_unavailable denials, readiness must fail, and both must
// recover when Redis returns.
func TestFailClosed(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	const q = "/v1/check?channel=email&email=jane.doe%40example.de"
	if code, r, body := f.get(t, q); code != 200 || !*r.Allowed {
		t.Fatalf("before stop: %d %s", code, body)
	}

	f.redis.Stop(t)
	for _, c := range []call{
		{method: "GET", path: q},
		{method: "POST", path: "/v1/check", body: `{"channel":"email","email":"jane.doe@example.de"}`},
		{method: "POST", path: "/v1/check/batch", body: `{"channel":"email","items":[{"email":"jane.doe@example.de"},{"email":"bad"}]}`},
	} {
		code, r, body := f.decode(t, c)
		if code != 503 || r.Allowed == nil || *r.Allowed || r.Reason != "store_unavailable" {
			t.Errorf("%s %s with Redis stopped: status %d: %s", c.method, c.path, code, body)
		}
		if strings.Contains(body, "127.0.0.1") || strings.Contains(body, "refused") {
			t.Errorf("internal error text on the wire: %s", body)
		}
	}
	if code, r, body := f.get(t, "/readyz"); code != 503 || r.Reason != "store_unavailable" {
		t.Errorf("readyz with Redis stopped: status %d: %s", code, body)
	}
	if code, _, body := f.get(t, "/v1/contacts/"+idJane); code != 503 {
		t.Errorf("contact with Redis stopped: status %d: %s", code, body)
	}
	if code, _, _ := f.get(t, "/healthz"); code != 200 {
		t.Errorf("healthz with Redis stopped: status %d, want 200 (liveness)", code)
	}

	f.redis.Restart(t) // empty data
	if code, _, body := f.get(t, "/readyz"); code != 200 {
		t.Errorf("readyz after restart: status %d: %s", code, body)
	}
	if code, r, body := f.get(t, q); code != 200 || *r.Allowed || r.Reason != "unknown_contact" {
		t.Errorf("check after restart (empty Redis): status %d: %s", code, body)
	}
}

// TestLogsMaskIdentifiers runs requests carrying an email and a phone with
// debug logging on: the logs must never hold either in full.
func TestLogsMaskIdentifiers(t *testing.T) {
	f := mustServe(t, httpapi.Options{})
	f.get(t, "/v1/check?channel=email&email=jane.doe%40example.de")
	f.get(t, "/v1/check?channel=phone&phone=%2B4921117540322")
	f.get(t, "/v1/check?channel=phone&phone=0211-17540322x")
	f.redis.Stop(t)
	f.get(t, "/v1/check?channel=email&email=jane.doe%40example.de")
	logs := f.logs.String()
	if !strings.Contains(logs, "http request") {
		t.Fatalf("no request logs at debug level:\n%s", logs)
	}
	for _, leak := range []string{"jane.doe", "17540322", "jane.doe%40"} {
		if strings.Contains(logs, leak) {
			t.Errorf("logs contain %q:\n%s", leak, logs)
		}
	}
}
