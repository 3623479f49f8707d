package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/consentguard/consentguard/guard"
)

const (
	testBearer = "flow-bearer-token"
	testSecret = "apex-hmac-secret"
)

func sign(secret, ts string, body []byte) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	return "v1=" + hex.EncodeToString(mac.Sum(nil))
}

func (e *env) events(tb testing.TB, body []byte, hdr ...string) (int, []byte) {
	tb.Helper()
	code, ct, b := e.post(tb, EventsPath, body, append([]string{"Content-Type", "application/json"}, hdr...)...)
	if ct != "application/json; charset=utf-8" {
		tb.Errorf("Content-Type %q", ct)
	}
	return code, b
}

func bearer() []string { return []string{"Authorization", "Bearer " + testBearer} }

func eventsEnv(tb testing.TB) *env {
	return newEnv(tb, Options{BearerToken: testBearer, HMACSecret: testSecret})
}

func TestEventsEndToEnd(t *testing.T) {
	e := eventsEnv(t)
	// The record exists before its deletion.
	e.mustAck(t, encodeOutbound(testOrg, []notification{contactNote(t, 1, 2, "2026-11-28T09:00:00.000Z", "Ja")}))

	code, b := e.events(t, readTestdata(t, "events_records.json"), bearer()...)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, b)
	}
	var res EventsResult
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if res.Received != 3 || res.Applied != 2 || res.Deleted != 1 || res.Stale != 0 || res.Unchanged != 0 || len(res.Warnings) != 0 {
		t.Errorf("%s", b)
	}
	if !strings.Contains(string(b), `"warnings":[]`) {
		t.Errorf("warnings not an empty array: %s", b)
	}
	if d := e.check(t, guard.Email, guard.KindEmail, "anna.schmidt@example.de"); !d.Allowed {
		t.Errorf("%+v", d)
	}
	if d := e.check(t, guard.Phone, guard.KindPhone, "0211 17540322"); d.Reason != guard.ReasonDenied {
		t.Errorf("%+v", d)
	}
	if r, ok := e.record(t, "00Q000000000001EAA"); !ok || r.Object != "Lead" || r.Consent != [4]string{"Ja", "", "", "Ja"} {
		t.Errorf("lead %+v", r)
	}
	if r, ok := e.record(t, sfid(t, "003", 2)); !ok || !r.Deleted || r.Object != "Contact" {
		t.Errorf("deleted %+v %v", r, ok)
	}
	if d := e.check(t, guard.Email, guard.KindEmail, "kontakt2@example.de"); d.Allowed || d.Reason != guard.ReasonUnknownContact {
		t.Errorf("deleted contact still found: %+v", d)
	}
	// A late, older message cannot bring the deleted record back.
	e.mustAck(t, encodeOutbound(testOrg, []notification{contactNote(t, 2, 2, "2026-11-28T10:59:59.000Z", "Ja")}))
	if d := e.check(t, guard.Email, guard.KindEmail, "kontakt2@example.de"); d.Allowed {
		t.Errorf("resurrected: %+v", d)
	}
	// The same body again: everything unchanged or stale.
	code, b = e.events(t, readTestdata(t, "events_records.json"), bearer()...)
	if err := json.Unmarshal(b, &res); err != nil || code != 200 || res.Applied != 0 || res.Unchanged+res.Stale != 3 {
		t.Errorf("replayed: %d %s", code, b)
	}
}

func TestEventsValues(t *testing.T) {
	e := newEnv(t, Options{BearerToken: testBearer, Mapping: checkboxMapping()})
	body := `{"orgId":"00D000000000062","records":[{"attributes":{"type":"Contact"},"Id":"003000000000004",
		"SystemModstamp":"2026-11-28T09:15:02.000+0000","HasOptedOutOfEmail":false,"DoNotCall":1,
		"Postwerbung__c":"true","Speicherung__c":null,"Email":"not an address","Phone":"+49 211 17540322",
		"Account":{"attributes":{"type":"Account"},"Name":"ACME"}}]}`
	code, b := e.events(t, []byte(body), bearer()...)
	if code != http.StatusOK {
		t.Fatalf("%d %s", code, b)
	}
	if !strings.Contains(string(b), `"warnings":[{"field":"records[0].Email","code":"invalid_email"}]`) {
		t.Errorf("%s", b)
	}
	r, ok := e.record(t, "003000000000004AAA")
	if !ok || r.Consent != [4]string{"Ja", "Nein", "Ja", ""} {
		t.Errorf("%+v", r)
	}
	if d := e.check(t, guard.Email, guard.KindPhone, "+49 211 17540322"); !d.Allowed {
		t.Errorf("phone: %+v", d)
	}
}

func TestEventsAuth(t *testing.T) {
	e := eventsEnv(t)
	body := readTestdata(t, "events_records.json")
	now := strconv.FormatInt(testNow.Unix(), 10)
	old := strconv.FormatInt(testNow.Add(-6*time.Minute).Unix(), 10)
	future := strconv.FormatInt(testNow.Add(6*time.Minute).Unix(), 10)
	tests := []struct {
		name string
		hdr  []string
		code int
	}{
		{"none", nil, 401},
		{"wrong bearer", []string{"Authorization", "Bearer nope"}, 401},
		{"basic", []string{"Authorization", "Basic " + testBearer}, 401},
		{"bearer prefix", []string{"Authorization", "Bearer " + testBearer[:5]}, 401},
		{"bad signature", []string{"X-Timestamp", now, "X-Signature", sign("other", now, body)}, 401},
		{"signature over other timestamp", []string{"X-Timestamp", now, "X-Signature", sign(testSecret, old, body)}, 401},
		{"old timestamp", []string{"X-Timestamp", old, "X-Signature", sign(testSecret, old, body)}, 401},
		{"future timestamp", []string{"X-Timestamp", future, "X-Signature", sign(testSecret, future, body)}, 401},
		{"no timestamp", []string{"X-Signature", sign(testSecret, "", body)}, 401},
		{"no v1", []string{"X-Timestamp", now, "X-Signature", strings.TrimPrefix(sign(testSecret, now, body), "v1=")}, 401},
		{"bearer ok", bearer(), 200},
		{"bearer lower-case scheme", []string{"Authorization", "bearer " + testBearer}, 200},
		{"signature ok", []string{"X-Timestamp", now, "X-Signature", sign(testSecret, now, body)}, 200},
		{"one of two signatures ok", []string{"X-Timestamp", now, "X-Signature", "v1=00, " + sign(testSecret, now, body)}, 200},
		{"signature within skew", []string{"X-Timestamp", strconv.FormatInt(testNow.Add(-4*time.Minute).Unix(), 10),
			"X-Signature", sign(testSecret, strconv.FormatInt(testNow.Add(-4*time.Minute).Unix(), 10), body)}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _, _ := e.store.counts()
			code, b := e.events(t, body, tt.hdr...)
			if code != tt.code {
				t.Fatalf("%d %s", code, b)
			}
			after, _, _ := e.store.counts()
			if code == 401 {
				if after != before {
					t.Error("refused request reached the store")
				}
				var er EventsError
				if err := json.Unmarshal(b, &er); err != nil || er.Error == "" {
					t.Errorf("%s", b)
				}
			}
		})
	}
	// Without any configured credential the endpoint is closed.
	h := New(e.store, Options{})
	w := httptest.NewRecorder()
	req := newRequest(EventsPath, body)
	req.Header.Set("Authorization", "Bearer ")
	h.ServeHTTP(w, req)
	if w.Code != http.StatusUnauthorized {
		t.Errorf("unconfigured: %d", w.Code)
	}
}

func TestEventsBadInput(t *testing.T) {
	e := newEnv(t, Options{BearerToken: testBearer, MaxBody: 4096})
	rec := func(extra string) string {
		return `{"attributes":{"type":"Contact"},"Id":"003000000000001","SystemModstamp":"2026-11-28T09:15:02Z"` + extra + `}`
	}
	tests := []struct {
		name, body string
		code       int
		field      string
	}{
		{"not JSON", `records: []`, 400, ""},
		{"array", `[]`, 400, ""},
		{"records not array", `{"orgId":"00D000000000062","records":{}}`, 400, "records"},
		{"no orgId", `{"records":[` + rec("") + `]}`, 400, "orgId"},
		{"foreign org", `{"orgId":"00DA0000000XyZq","records":[` + rec("") + `]}`, 403, "orgId"},
		{"no type", `{"orgId":"00D000000000062","records":[` + rec("") + `,{"Id":"003000000000002"}]}`, 400, "records[1].attributes.type"},
		{"unmapped type", `{"orgId":"00D000000000062","records":[{"attributes":{"type":"Account"},"Id":"001000000000001"}]}`, 400, "records[0].attributes.type"},
		{"no Id", `{"orgId":"00D000000000062","records":[{"attributes":{"type":"Contact"}}]}`, 400, "records[0].Id"},
		{"bad Id", `{"orgId":"00D000000000062","records":[{"attributes":{"type":"Contact"},"Id":"003"}]}`, 400, "records[0].Id"},
		{"bad version", `{"orgId":"00D000000000062","records":[` + rec("") + `,` + rec("") + `,` + rec("") + `,` +
			`{"attributes":{"type":"Contact"},"Id":"003000000000001","SystemModstamp":"28.11.2026"}]}`, 400, "records[3].SystemModstamp"},
		{"future version", `{"orgId":"00D000000000062","records":[{"attributes":{"type":"Contact"},"Id":"003000000000001","SystemModstamp":"2030-01-01T00:00:00Z"}]}`, 400, "records[0].SystemModstamp"},
		{"deleted without Id", `{"orgId":"00D000000000062","deleted":[{"SystemModstamp":"2026-11-28T09:15:02Z"}]}`, 400, "deleted[0].Id"},
		{"deleted bad version", `{"orgId":"00D000000000062","deleted":[{"Id":"003000000000001","LastModifiedDate":"x"}]}`, 400, "deleted[0].LastModifiedDate"},
		{"deleted unmapped type", `{"orgId":"00D000000000062","deleted":[{"Id":"001000000000001","attributes":{"type":"Account"}}]}`, 400, "deleted[0].attributes.type"},
		{"too large", `{"orgId":"00D000000000062","records":[` + strings.Repeat(rec("")+",", 80) + rec("") + `]}`, 413, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := e.events(t, []byte(tt.body), bearer()...)
			if code != tt.code {
				t.Fatalf("%d %s", code, b)
			}
			var er EventsError
			if err := json.Unmarshal(b, &er); err != nil || er.Error == "" || er.Field != tt.field {
				t.Errorf("%s (want field %q)", b, tt.field)
			}
		})
	}
	if applies, _, _ := e.store.counts(); applies != 0 {
		t.Errorf("%d applies for bad input", applies)
	}
	// An empty but valid body is fine and touches nothing.
	if code, b := e.events(t, []byte(`{"orgId":"00D000000000062EAA"}`), bearer()...); code != 200 ||
		!strings.Contains(string(b), `"received":0`) {
		t.Errorf("%d %s", code, b)
	}
}

func TestEventsStoreDown(t *testing.T) {
	e := newEnv(t, Options{BearerToken: testBearer, StoreTimeout: 2 * time.Second})
	body := readTestdata(t, "events_records.json")
	e.redis.Stop(t)
	code, ct, b := e.post(t, EventsPath, body, bearer()...)
	if code != http.StatusServiceUnavailable || ct != "application/json; charset=utf-8" {
		t.Fatalf("%d %s", code, b)
	}
	if string(b) != `{"error":"store unavailable; retry later"}`+"\n" {
		t.Errorf("%s", b)
	}
	e.redis.Restart(t)
	code, b = e.events(t, body, bearer()...)
	if code != http.StatusOK {
		t.Fatalf("after restart: %d %s", code, b)
	}
}

// Deleted entries may omit the type (the key prefix names it) and the
// version (the store then uses max(stored, now)).
func TestEventsDeletedShapes(t *testing.T) {
	e := newEnv(t, Options{BearerToken: testBearer})
	var notes []notification
	for i := 1; i <= 3; i++ {
		notes = append(notes, contactNote(t, i, i, "2026-11-28T09:00:00.000Z", "Ja"))
	}
	e.mustAck(t, encodeOutbound(testOrg, notes))
	body := fmt.Sprintf(`{"orgId":%q,"deleted":[{"Id":%q},{"Id":%q,"LastModifiedDate":"2026-11-28T10:00:00.000+0000"},{"Id":%q,"attributes":{"type":"contact"},"SystemModstamp":"2026-11-28T10:00:00Z"}]}`,
		testOrg, sfid(t, "003", 1), sfid(t, "003", 2), sfid(t, "003", 3))
	code, b := e.events(t, []byte(body), bearer()...)
	if code != 200 || !strings.Contains(string(b), `"deleted":3`) {
		t.Fatalf("%d %s", code, b)
	}
	for i := 1; i <= 3; i++ {
		if r, ok := e.record(t, sfid(t, "003", i)); !ok || !r.Deleted || r.Object != "Contact" {
			t.Errorf("%d: %+v", i, r)
		}
	}
}
