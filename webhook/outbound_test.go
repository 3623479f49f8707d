package webhook

import (
	"context"
	"encoding/xml"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentguard/consentguard/guard"
)

func TestOutboundEndToEnd(t *testing.T) {
	e := newEnv(t, Options{})
	if d := e.check(t, guard.Email, guard.KindEmail, "anna.schmidt@example.de"); d.Allowed || d.Reason != guard.ReasonUnknownContact {
		t.Fatalf("before: %+v", d)
	}
	code, body := e.outbound(t, readTestdata(t, "outbound_one.xml"))
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	if string(body) != string(readTestdata(t, "ack.golden.xml")) {
		t.Fatalf("ack differs from testdata/ack.golden.xml:\n%s", body)
	}
	tests := []struct {
		ch     guard.Channel
		kind   guard.Kind
		raw    string
		reason guard.Reason
	}{
		{guard.Email, guard.KindEmail, "ANNA.schmidt@example.de", guard.ReasonGranted},
		{guard.Phone, guard.KindPhone, "0211 17540322", guard.ReasonPending},
		{guard.Phone, guard.KindPhone, "+49 171 2345678", guard.ReasonPending}, // MobilePhone
		{guard.Post, guard.KindRecordID, "003000000000001", guard.ReasonDenied},
		{guard.Email, guard.KindRecordID, "003000000000001AAA", guard.ReasonGranted},
	}
	for _, tt := range tests {
		d := e.check(t, tt.ch, tt.kind, tt.raw)
		if d.Reason != tt.reason || d.Allowed != (tt.reason == guard.ReasonGranted) {
			t.Errorf("%v %s: %+v", tt.ch, tt.raw, d)
		}
		if len(d.Records) == 1 && d.Records[0].Version != "2026-11-28T09:15:02.000Z" {
			t.Errorf("version %q", d.Records[0].Version)
		}
	}
	if h, err := e.store.History(context.Background(), "003000000000001AAA"); err != nil || len(h) != 1 ||
		h[0].Source != "outbound" || h[0].Ref != "04l000000000001AAA" {
		t.Errorf("history %+v %v", h, err)
	}
	if n := e.metric(t, "consentguard_webhook_records_total", map[string]string{"result": "created"}); n != 1 {
		t.Errorf("created metric %v", n)
	}
}

func TestOutboundFixtures(t *testing.T) {
	t.Run("lead", func(t *testing.T) {
		e := newEnv(t, Options{})
		e.mustAck(t, readTestdata(t, "outbound_lead.xml"))
		r, ok := e.record(t, "00Q000000000001EAA")
		if !ok || r.Object != "Lead" || r.Consent != [4]string{"Nein", "Ja", "Ja", "Ja"} {
			t.Fatalf("%+v %v", r, ok)
		}
		if d := e.check(t, guard.Email, guard.KindEmail, "lead@xn--mller-kva.example"); d.Reason != guard.ReasonDenied {
			t.Errorf("IDN email: %+v", d)
		}
		if d := e.check(t, guard.Phone, guard.KindPhone, "+4921117540322"); !d.Allowed {
			t.Errorf("phone: %+v", d)
		}
	})
	t.Run("omitted and nil fields", func(t *testing.T) {
		e := newEnv(t, Options{})
		e.mustAck(t, readTestdata(t, "outbound_nil_fields.xml"))
		r, ok := e.record(t, "003000000000002AAA")
		if !ok || r.Consent != [4]string{"Ja", "", "", ""} || guard.VersionString(r.Version) != "2026-11-28T09:30:00.000Z" {
			t.Fatalf("%+v %v", r, ok)
		}
		if d := e.check(t, guard.Phone, guard.KindEmail, "nil.fields@example.de"); d.Reason != guard.ReasonMissing {
			t.Errorf("nil phone consent: %+v", d)
		}
		// The second notification carries no version (15-character Id in
		// the payload): counted, and it can never grant.
		if d := e.check(t, guard.Email, guard.KindRecordID, "003000000000003"); d.Allowed {
			t.Errorf("unversioned record grants: %+v", d)
		}
		if n := e.metric(t, "consentguard_webhook_warnings_total", map[string]string{"code": "unversioned"}); n != 1 {
			t.Errorf("unversioned metric %v", n)
		}
	})
	t.Run("checkbox and optout", func(t *testing.T) {
		e := newEnv(t, Options{Mapping: checkboxMapping()})
		e.mustAck(t, readTestdata(t, "outbound_checkbox_optout.xml"))
		r, ok := e.record(t, "003000000000004AAA")
		if !ok || r.Consent != [4]string{"Ja", "Nein", "Ja", "Nein"} {
			t.Fatalf("%+v %v", r, ok)
		}
		if d := e.check(t, guard.Email, guard.KindEmail, "checkbox@example.de"); d.Reason != guard.ReasonStorageDenied {
			t.Errorf("%+v", d)
		}
	})
	t.Run("unknown word", func(t *testing.T) {
		e := newEnv(t, Options{})
		e.mustAck(t, readTestdata(t, "outbound_unknown_word.xml"))
		r, ok := e.record(t, "003Aa0000012345IAA")
		if !ok || r.Consent[guard.Email] != "Vielleicht" {
			t.Fatalf("%+v %v", r, ok)
		}
		if d := e.check(t, guard.Email, guard.KindEmail, "vielleicht@example.de"); d.Allowed || d.Reason != guard.ReasonMissing {
			t.Errorf("%+v", d)
		}
		for code, want := range map[string]float64{"unknown_value": 1, "invalid_phone": 1} {
			if n := e.metric(t, "consentguard_webhook_warnings_total", map[string]string{"code": code, "object": "Contact"}); n != want {
				t.Errorf("%s metric %v", code, n)
			}
		}
		logs := e.logs.String()
		if !strings.Contains(logs, "Vielleicht") || !strings.Contains(logs, "unknown_value") {
			t.Errorf("unknown word not logged:\n%s", logs)
		}
		if strings.Contains(logs, "@example.de") || strings.Contains(logs, "call me maybe") {
			t.Errorf("logs carry personal data:\n%s", logs)
		}
	})
	t.Run("empty sObject skipped", func(t *testing.T) {
		e := newEnv(t, Options{})
		e.mustAck(t, readTestdata(t, "outbound_empty_sobject.xml"))
		if applies, _, remembered := e.store.counts(); applies != 0 || remembered != 1 {
			t.Errorf("applies %d remembered %d", applies, remembered)
		}
		if n := e.metric(t, "consentguard_webhook_records_total", map[string]string{"result": "empty"}); n != 1 {
			t.Errorf("empty metric %v", n)
		}
	})
	t.Run("100 notifications", func(t *testing.T) {
		e := newEnv(t, Options{})
		e.mustAck(t, readTestdata(t, "outbound_100.xml"))
		if applies, applied, remembered := e.store.counts(); applies != 1 || applied != 100 || remembered != 100 {
			t.Errorf("applies %d applied %d remembered %d", applies, applied, remembered)
		}
		words := []string{"Ja", "Nein", "Abfrage ausstehend"}
		for i := 0; i < 100; i++ {
			r, ok := e.record(t, sfid(t, "003", 100+i))
			if !ok || r.Consent[guard.Email] != words[i%3] {
				t.Errorf("contact %d: %+v %v", i, r, ok)
			}
		}
	})
}

// faultString decodes a SOAP fault.
func faultString(tb testing.TB, b []byte) (code, msg string) {
	tb.Helper()
	var v struct {
		Body struct {
			Fault struct {
				Code   string `xml:"faultcode"`
				String string `xml:"faultstring"`
			} `xml:"http://schemas.xmlsoap.org/soap/envelope/ Fault"`
		} `xml:"http://schemas.xmlsoap.org/soap/envelope/ Body"`
	}
	if err := xml.Unmarshal(b, &v); err != nil {
		tb.Fatalf("not a SOAP fault: %v\n%s", err, b)
	}
	return v.Body.Fault.Code, v.Body.Fault.String
}

func TestOutboundRejects(t *testing.T) {
	e := newEnv(t, Options{MaxBody: 64 << 10})
	one := readTestdata(t, "outbound_one.xml")
	big := encodeOutbound(testOrg, repeat(contactNote(t, 1, 1, "2026-11-28T09:15:02.000Z", "Ja"), 100))
	big = append(big, strings.Repeat(" ", 64<<10)...)
	tests := []struct {
		name  string
		query string
		body  []byte
		code  int
		fault string
	}{
		{"wrong token", "?token=wrong", one, 401, "soapenv:Client"},
		{"no token", "", one, 401, "soapenv:Client"},
		{"token prefix", "?token=" + testToken[:4], one, 401, "soapenv:Client"},
		{"foreign org", "?token=" + testToken, readTestdata(t, "outbound_foreign_org.xml"), 403, "soapenv:Client"},
		{"garbage", "?token=" + testToken, readTestdata(t, "garbage.txt"), 400, "soapenv:Client"},
		{"not notifications", "?token=" + testToken, readTestdata(t, "not_notifications.xml"), 400, "soapenv:Client"},
		{"wrong namespace", "?token=" + testToken, readTestdata(t, "wrong_namespace.xml"), 400, "soapenv:Client"},
		{"truncated", "?token=" + testToken, readTestdata(t, "truncated.xml"), 400, "soapenv:Client"},
		{"too large", "?token=" + testToken, big, 413, "soapenv:Client"},
		{"unmapped object", "?token=" + testToken, []byte(strings.ReplaceAll(string(one), "sf:Contact", "sf:Account")), 400, "soapenv:Client"},
		{"bad version", "?token=" + testToken, []byte(strings.ReplaceAll(string(one), "2026-11-28T09:15:02.000Z", "gestern")), 400, "soapenv:Client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, ct, b := e.post(t, OutboundPath+tt.query, tt.body)
			if code != tt.code || ct != "text/xml; charset=utf-8" {
				t.Fatalf("%d %q %s", code, ct, b)
			}
			if fc, _ := faultString(t, b); fc != tt.fault {
				t.Errorf("faultcode %q", fc)
			}
		})
	}
	// Chunked body over the limit (no Content-Length) is refused too.
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+OutboundPath+"?token="+testToken, strings.NewReader(string(big)))
	req.ContentLength = -1
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked: %d", resp.StatusCode)
	}
	for _, m := range []string{http.MethodGet, http.MethodPut} {
		req, _ := http.NewRequest(m, e.srv.URL+OutboundPath, nil)
		resp, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
			t.Errorf("%s: %d", m, resp.StatusCode)
		}
	}
	if code, _, _ := e.post(t, "/salesforce/outbound/x?token="+testToken, one); code != http.StatusNotFound {
		t.Errorf("sub-path: %d", code)
	}
	// Nothing above changed any state.
	if applies, _, remembered := e.store.counts(); applies != 0 || remembered != 0 {
		t.Errorf("applies %d remembered %d", applies, remembered)
	}
	if _, ok := e.record(t, "003000000000001AAA"); ok {
		t.Error("record written by a refused POST")
	}
	if strings.Contains(e.logs.String(), "@example.de") {
		t.Errorf("logs carry personal data:\n%s", e.logs)
	}
}

// With no token configured the endpoint is closed, not open.
func TestOutboundNoTokenConfigured(t *testing.T) {
	e := newEnv(t, Options{})
	h := New(e.store, Options{}) // Token empty
	for _, q := range []string{"", "?token="} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, newRequest(OutboundPath+q, readTestdata(t, "outbound_one.xml")))
		if w.Code != http.StatusUnauthorized {
			t.Errorf("%q: %d", q, w.Code)
		}
	}
}

func TestOutboundDuplicate(t *testing.T) {
	e := newEnv(t, Options{})
	one := readTestdata(t, "outbound_one.xml")
	e.mustAck(t, one)
	e.mustAck(t, one) // Salesforce redelivers: acked without work
	if applies, applied, remembered := e.store.counts(); applies != 1 || applied != 1 || remembered != 1 {
		t.Fatalf("applies %d applied %d remembered %d", applies, applied, remembered)
	}
	if n := e.metric(t, "consentguard_webhook_records_total", map[string]string{"result": "duplicate"}); n != 1 {
		t.Errorf("duplicate metric %v", n)
	}
	// A POST mixing a done notification with a new one applies only the
	// new one; a notification repeated inside one POST counts once.
	m, err := decodeOutbound(one)
	if err != nil {
		t.Fatal(err)
	}
	fresh := contactNote(t, 9, 9, "2026-11-28T09:15:02.000Z", "Ja")
	e.mustAck(t, encodeOutbound(testOrg, []notification{m.Notifications[0], fresh, fresh}))
	if applies, applied, remembered := e.store.counts(); applies != 2 || applied != 2 || remembered != 2 {
		t.Fatalf("applies %d applied %d remembered %d", applies, applied, remembered)
	}
	if h, _ := e.store.History(context.Background(), "003000000000001AAA"); len(h) != 1 {
		t.Errorf("history %+v", h)
	}
}

func TestOutboundStoreDown(t *testing.T) {
	e := newEnv(t, Options{StoreTimeout: 2 * time.Second})
	one := readTestdata(t, "outbound_one.xml")
	e.redis.Stop(t)
	code, body := e.outbound(t, one)
	if code != http.StatusInternalServerError {
		t.Fatalf("%d %s", code, body)
	}
	fc, msg := faultString(t, body)
	if fc != "soapenv:Server" || msg != "temporarily unable to store notifications; retry later" {
		t.Errorf("fault %q %q", fc, msg)
	}
	for _, leak := range []string{"127.0.0.1", "dial", "refused", "redis", "EOF"} {
		if strings.Contains(string(body), leak) {
			t.Errorf("fault leaks %q: %s", leak, body)
		}
	}
	if _, _, remembered := e.store.counts(); remembered != 0 {
		t.Fatalf("remembered %d ids of a failed POST", remembered)
	}
	e.redis.Restart(t)
	if err := e.store.Init(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.mustAck(t, one)
	if d := e.check(t, guard.Email, guard.KindEmail, "anna.schmidt@example.de"); !d.Allowed {
		t.Fatalf("after restart: %+v", d)
	}
	if n := e.metric(t, "consentguard_webhook_requests_total", map[string]string{"endpoint": "outbound", "code": "500"}); n != 1 {
		t.Errorf("500 metric %v", n)
	}
}

// The write fails after the dedupe lookup succeeded (Redis refuses writes
// for a while): 500, nothing remembered, and the retry is applied.
func TestOutboundWriteFailsNothingRemembered(t *testing.T) {
	e := newEnv(t, Options{StoreTimeout: 300 * time.Millisecond})
	ctx := context.Background()
	rdb := e.redis.Client(t)
	if err := rdb.Do(ctx, "CLIENT", "PAUSE", "60000", "WRITE").Err(); err != nil {
		t.Fatal(err)
	}
	one := readTestdata(t, "outbound_one.xml")
	code, body := e.outbound(t, one)
	if err := rdb.Do(ctx, "CLIENT", "UNPAUSE").Err(); err != nil {
		t.Fatal(err)
	}
	if code != http.StatusInternalServerError {
		t.Fatalf("%d %s", code, body)
	}
	if applies, _, remembered := e.store.counts(); applies != 1 || remembered != 0 {
		t.Fatalf("applies %d remembered %d", applies, remembered)
	}
	seen, err := e.store.Seen(ctx, []string{"outbound:" + testOrg15 + ":04l000000000001AAA"})
	if err != nil || seen[0] {
		t.Fatalf("notification remembered after a failed write: %v %v", seen, err)
	}
	e.mustAck(t, one)
	if d := e.check(t, guard.Email, guard.KindEmail, "anna.schmidt@example.de"); !d.Allowed {
		t.Fatalf("after retry: %+v", d)
	}
}

// A withdrawal followed by a late, older "Ja" stays withdrawn; so does a
// "Ja" at the same version (ties never grant).
func TestOutboundWithdrawal(t *testing.T) {
	e := newEnv(t, Options{})
	post := func(notif int, version, word string) {
		t.Helper()
		e.mustAck(t, encodeOutbound(testOrg, []notification{contactNote(t, notif, 1, version, word)}))
	}
	email := func() guard.Decision { return e.check(t, guard.Email, guard.KindEmail, "kontakt1@example.de") }
	post(1, "2026-11-28T09:00:00.000Z", "Ja")
	if d := email(); !d.Allowed {
		t.Fatalf("granted: %+v", d)
	}
	post(2, "2026-11-28T09:05:00.000Z", "Nein")
	if d := email(); d.Allowed || d.Reason != guard.ReasonDenied {
		t.Fatalf("withdrawn: %+v", d)
	}
	post(3, "2026-11-28T09:00:00.000Z", "Ja") // late redelivery under a new notification Id
	post(4, "2026-11-28T09:04:59.000Z", "Ja")
	post(5, "2026-11-28T09:05:00.000Z", "Ja")
	if d := email(); d.Allowed || d.Reason != guard.ReasonDenied {
		t.Fatalf("late Ja re-granted: %+v", d)
	}
	post(6, "2026-11-28T09:06:00.000Z", "Ja") // a genuinely newer grant
	if d := email(); !d.Allowed {
		t.Fatalf("newer grant: %+v", d)
	}
}

// Replay: 1,000 contacts × several versions, delivered shuffled and
// duplicated in 100-notification POSTs, some concurrently: the store ends
// at the newest version of every contact, for every seed.
func TestOutboundReplay(t *testing.T) {
	seeds := []uint64{1, 2, 3}
	if testing.Short() {
		seeds = seeds[:1]
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { replay(t, seed, 1000, 4) })
	}
}

func replay(t *testing.T, seed uint64, contacts, versions int) {
	e := newEnv(t, Options{})
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	words := []string{"Ja", "Nein", "Abfrage ausstehend", "", "Vielleicht"}
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	type state struct {
		version time.Time
		consent [4]string
	}
	newest := make([]state, contacts)
	var notes []notification
	notifID := 0
	for c := 0; c < contacts; c++ {
		v := base
		for k := 0; k < versions; k++ {
			v = v.Add(time.Duration(1+rng.IntN(3600)) * time.Second)
			var s state
			s.version = v
			n := notification{ID: sfid(t, "04l", notifID), Object: "Contact", Fields: []sfField{
				{"Id", sfid(t, "003", c)},
				{"Email", fmt.Sprintf("replay%d@example.de", c)},
				{"SystemModstamp", guard.VersionString(v)},
			}}
			notifID++
			for ch, f := range []string{"Darf_angemailt_werden__c", "Darf_telefonisch_kontaktiert_werden__c",
				"Darf_Postwerbung_erhalten__c", "Informationen_duerfen_gespeichert_werden__c"} {
				w := words[rng.IntN(len(words))]
				s.consent[ch] = w
				if w != "" {
					n.Fields = append(n.Fields, sfField{f, w})
				}
			}
			newest[c] = s
			notes = append(notes, n)
			// Duplicates: the same notification again (redelivery), or
			// the same state under a new notification Id (re-queued).
			switch rng.IntN(4) {
			case 0:
				notes = append(notes, n)
			case 1:
				d := n
				d.ID = sfid(t, "04l", notifID)
				notifID++
				notes = append(notes, d)
			}
		}
	}
	rng.Shuffle(len(notes), func(i, j int) { notes[i], notes[j] = notes[j], notes[i] })
	var posts [][]byte
	for i := 0; i < len(notes); i += MaxNotifications {
		posts = append(posts, encodeOutbound(testOrg, notes[i:min(i+MaxNotifications, len(notes))]))
	}
	// Half the POSTs one at a time, the rest four at a time; every POST
	// is then delivered once more (Salesforce retrying an ack it missed).
	half := len(posts) / 2
	for _, p := range posts[:half] {
		e.mustAck(t, p)
	}
	var wg sync.WaitGroup
	work := make(chan []byte)
	errs := make(chan string, len(posts)*2)
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				if code, b := e.outbound(t, p); code != http.StatusOK || string(b) != ackEnvelope {
					errs <- fmt.Sprintf("%d %s", code, b)
				}
			}
		}()
	}
	for _, p := range posts[half:] {
		work <- p
	}
	for _, i := range rng.Perm(len(posts)) {
		work <- posts[i]
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for c := 0; c < contacts; c++ {
		r, ok := e.record(t, sfid(t, "003", c))
		if !ok || !r.Version.Equal(newest[c].version) || r.Consent != newest[c].consent {
			t.Fatalf("contact %d: got %v %q, want %v %q", c, r.Version, r.Consent, newest[c].version, newest[c].consent)
		}
	}
	// And the guard agrees, by email.
	for c := 0; c < contacts; c += 97 {
		d := e.check(t, guard.Email, guard.KindEmail, fmt.Sprintf("replay%d@example.de", c))
		want := guard.Decide(guard.DefaultVocabulary(), guard.Email, []guard.Record{{Consent: newest[c].consent}})
		if d.Reason != want.Reason {
			t.Errorf("contact %d: %s, want %s", c, d.Reason, want.Reason)
		}
	}
	applies, applied, _ := e.store.counts()
	t.Logf("seed: %d notifications in %d POSTs (each twice); %d Apply calls, %d updates applied",
		len(notes), len(posts), applies, applied)
	if dup := e.metric(t, "consentguard_webhook_records_total", map[string]string{"result": "duplicate"}); dup < float64(len(notes)) {
		t.Errorf("only %v duplicates skipped on redelivery", dup)
	}
}

// One notification that cannot be mapped must not hold back the others:
// they are written at once, the POST is not acked (400 names the bad one),
// and Salesforce's redelivery finds the good ones already done.
func TestOutboundBadNotificationDoesNotHoldBackOthers(t *testing.T) {
	e := newEnv(t, Options{})
	good1 := contactNote(t, 901, 1, "2026-11-28T09:00:00.000Z", "Ja")
	bad := contactNote(t, 902, 2, "2026-11-28T09:00:00.000Z", "Ja")
	bad.Fields[len(bad.Fields)-1].Value = "gestern" // SystemModstamp
	good2 := contactNote(t, 903, 3, "2026-11-28T09:00:00.000Z", "Nein")
	body := encodeOutbound(testOrg, []notification{good1, bad, good2})

	code, b := e.outbound(t, body)
	if code != http.StatusBadRequest || !strings.Contains(string(b), "notification 2") || strings.Contains(string(b), "<Ack>") {
		t.Fatalf("POST with one bad notification: %d %s", code, b)
	}
	if d := e.check(t, guard.Email, guard.KindEmail, "kontakt1@example.de"); !d.Allowed {
		t.Fatalf("good notification 1 not written: %+v", d)
	}
	if d := e.check(t, guard.Email, guard.KindEmail, "kontakt3@example.de"); d.Reason != guard.ReasonDenied {
		t.Fatalf("good notification 3 not written: %+v", d)
	}
	if _, ok := e.record(t, sfid(t, "003", 2)); ok {
		t.Fatal("the bad notification was written")
	}
	_, applied, _ := e.store.counts()
	// Redelivery: the good ones are deduplicated, the bad one is still refused.
	code, _ = e.outbound(t, body)
	if _, applied2, _ := e.store.counts(); code != http.StatusBadRequest || applied2 != applied {
		t.Fatalf("redelivery: %d, applied %d → %d", code, applied, applied2)
	}
}
