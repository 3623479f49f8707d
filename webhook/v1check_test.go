package webhook

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/httpapi"
)

// The whole path as serve wires it: one listener with the webhooks under
// /salesforce/ and the check API at /, over the same cache.Store. A POSTed
// envelope is reflected by GET /v1/check.
func TestOutboundThenV1Check(t *testing.T) {
	e := newEnv(t, Options{})
	mux := http.NewServeMux()
	mux.Handle("/salesforce/", New(e.store, Options{Token: testToken, OrgIDs: []string{testOrg15}}))
	mux.Handle("/", httpapi.New(e.guard, e.store.Store, httpapi.Options{AllowAnonymous: true}))
	srv := httptest.NewServer(mux)
	defer srv.Close()

	check := func(channel, email string) (allowed bool, reason string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/v1/check?channel=" + channel + "&email=" + url.QueryEscape(email))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var d struct {
			Allowed bool   `json:"allowed"`
			Reason  string `json:"reason"`
		}
		if err := json.Unmarshal(b, &d); err != nil {
			t.Fatalf("%d %s", resp.StatusCode, b)
		}
		return d.Allowed, d.Reason
	}
	if ok, reason := check("email", "anna.schmidt@example.de"); ok || reason != string(guard.ReasonUnknownContact) {
		t.Fatalf("before: %v %s", ok, reason)
	}
	resp, err := http.Post(srv.URL+OutboundPath+"?token="+testToken, "text/xml; charset=utf-8",
		bytes.NewReader(readTestdata(t, "outbound_one.xml")))
	if err != nil {
		t.Fatal(err)
	}
	ack, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(ack) != ackEnvelope {
		t.Fatalf("%d %s", resp.StatusCode, ack)
	}
	for _, tt := range []struct {
		channel string
		allowed bool
		reason  guard.Reason
	}{
		{"email", true, guard.ReasonGranted},
		{"phone", false, guard.ReasonPending},
		{"post", false, guard.ReasonDenied},
	} {
		if ok, reason := check(tt.channel, "Anna.Schmidt@example.de"); ok != tt.allowed || reason != string(tt.reason) {
			t.Errorf("%s: %v %s", tt.channel, ok, reason)
		}
	}
}
