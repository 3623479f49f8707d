package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/webhook/sfrest/sfresttest"
)

// syncEnv is redisEnv plus the REST settings of the fake org.
func syncEnv(redisURL string, sf *sfresttest.Server) map[string]string {
	env := redisEnv(redisURL)
	env["CONSENTGUARD_SALESFORCE_URL"] = sf.URL()
	env["CONSENTGUARD_SALESFORCE_CLIENT_ID"] = sf.ClientID
	env["CONSENTGUARD_SALESFORCE_CLIENT_SECRET"] = sf.ClientSecret
	return env
}

func sfContact(id string, ms time.Time, email, emailConsent string) map[string]any {
	return map[string]any{
		"Id": id, "SystemModstamp": ms, "LastModifiedDate": ms,
		"Email": email, "Phone": nil, "MobilePhone": nil,
		"Darf_angemailt_werden__c":                    emailConsent,
		"Darf_telefonisch_kontaktiert_werden__c":      nil,
		"Darf_Postwerbung_erhalten__c":                nil,
		"Informationen_duerfen_gespeichert_werden__c": "Ja",
	}
}

// runCmd runs one command and returns its exit code and output.
func runCmd(tb testing.TB, env map[string]string, args ...string) (int, string, error) {
	tb.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), append([]string{"consentguard"}, args...), envFunc(env), &out, &errb)
	return exitCode(err, io.Discard), out.String(), err
}

func TestSyncCommand(t *testing.T) {
	rs := redistest.Start(t)
	sf := sfresttest.Start(t)
	env := syncEnv(rs.URL(), sf)
	base := time.Date(2025, 6, 1, 9, 0, 0, 0, time.UTC)

	// Webhooks first: max withdraws at 10:00; jana exists and is later
	// deleted in Salesforce.
	s := mustServe(t, env)
	if code := postOutbound(t, s.base, outbound("0035g00000ABCDeAAP", "2025-06-01T10:00:00.000Z", "max@firma.de", "0211 17540322", "Nein", "Nein")); code != 200 {
		t.Fatalf("outbound: %d", code)
	}
	if code := postOutbound(t, s.base, outbound("0035g00000ABCDjAAP", "2025-06-01T08:00:00.000Z", "jana@firma.de", "0211 17540399", "Ja", "Ja")); code != 200 {
		t.Fatalf("outbound: %d", code)
	}
	s.stop(t)

	// Salesforce as the REST API sees it: max's older "Ja" (the sync must
	// not undo the newer withdrawal), anna, bert, a lead, jana deleted.
	sf.PageSize = 2
	sf.Add("Contact", sfContact("0035g00000ABCDeAAP", base.Add(15*time.Minute), "max@firma.de", "Ja"))
	sf.Add("Contact", sfContact("0035g00000ABCDf", base.Add(20*time.Minute), "Anna@Firma.de", "Ja"))
	sf.Add("Contact", sfContact("0035g00000ABCDg", base.Add(25*time.Minute), "bert@firma.de", "Abfrage ausstehend"))
	sf.Add("Lead", sfContact("00Q5g00000ABCDe", base.Add(30*time.Minute), "lead@firma.de", "Ja"))
	sf.Delete("Contact", "0035g00000ABCDjAAP", base.Add(90*time.Minute))
	sf.ExpireSessionsAfter(1) // 401 on the second page: re-authenticate once

	code, out, err := runCmd(t, env, "sync")
	if code != 0 {
		t.Fatalf("sync: exit %d: %v\n%s", code, err, out)
	}
	for _, want := range []string{"sync Contact,Lead (everything)", "rows 5", "deleted 1", "created 3", "stale 1", "tombstoned 1"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(strings.ToLower(out), "firma.de") {
		t.Errorf("summary shows an email:\n%s", out)
	}
	if sf.Rejected() != 1 || sf.TokenRequests() != 2 {
		t.Errorf("401s %d, token requests %d", sf.Rejected(), sf.TokenRequests())
	}

	for _, tc := range []struct {
		email string
		exit  int
		why   string
	}{
		{"anna@firma.de", 0, "consent_granted"},
		{"lead@firma.de", 0, "consent_granted"},
		{"bert@firma.de", 1, "consent_pending"},
		{"max@firma.de", 1, "consent_denied"}, // the newer webhook withdrawal stands
		{"jana@firma.de", 1, "unknown_contact"},
	} {
		code, out, err := runCmd(t, env, "check", "-channel", "email", "-email", tc.email)
		if code != tc.exit || !strings.Contains(out, tc.why) {
			t.Errorf("check %s: exit %d %s (%v), want %d %s", tc.email, code, out, err, tc.exit, tc.why)
		}
	}

	// An incremental run for one object.
	code, out, err = runCmd(t, env, "sync", "-object", "lead", "-since", "2025-06-01T09:30:00Z")
	if code != 0 || !strings.Contains(out, "sync Lead (since 2025-06-01T09:30:00Z)") || !strings.Contains(out, "rows 1") || !strings.Contains(out, "unchanged 1") {
		t.Fatalf("incremental sync: exit %d %v\n%s", code, err, out)
	}
	q := sf.Queries()
	if last := q[len(q)-2]; !strings.HasPrefix(last, "query: SELECT Id, SystemModstamp") || !strings.Contains(last, "FROM Lead WHERE SystemModstamp >= 2025-06-01T09:30:00Z ORDER BY SystemModstamp, Id") {
		t.Errorf("incremental query %s", last)
	}

	// A Salesforce error surfaces its code and message.
	sf.FailNext(400, "INVALID_FIELD", "No such column 'Darf_angemailt_werden__c' on entity 'Contact'.")
	code, _, err = runCmd(t, env, "sync", "-object", "Contact")
	if code == 0 || err == nil || !strings.Contains(err.Error(), "INVALID_FIELD") || !strings.Contains(err.Error(), "No such column") {
		t.Errorf("salesforce error: exit %d %v", code, err)
	}

	// Redis goes away: the sync fails.
	rs.Stop(t)
	code, _, err = runCmd(t, env, "sync")
	if code == 0 || err == nil {
		t.Fatalf("sync with redis down: exit %d %v", code, err)
	}
}

func TestSyncCommandRefusals(t *testing.T) {
	sf := sfresttest.Start(t)

	// Missing REST settings are named all at once, before Redis is tried.
	env := redisEnv("redis://127.0.0.1:1/0")
	code, _, err := runCmd(t, env, "sync")
	if code != 2 || err == nil {
		t.Fatalf("sync without REST settings: exit %d %v", code, err)
	}
	for _, want := range []string{"CONSENTGUARD_SALESFORCE_URL", "CONSENTGUARD_SALESFORCE_CLIENT_ID", "CONSENTGUARD_SALESFORCE_CLIENT_SECRET"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	if strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Errorf("REST settings not checked before the store: %v", err)
	}

	// Wrong client secret: a clear error without the secret.
	rs := redistest.Start(t)
	env = syncEnv(rs.URL(), sf)
	env["CONSENTGUARD_SALESFORCE_CLIENT_SECRET"] = "wrong-secret-value"
	code, _, err = runCmd(t, env, "sync")
	if code != 2 || err == nil || !strings.Contains(err.Error(), "invalid_client") || !strings.Contains(err.Error(), "client credentials") {
		t.Fatalf("wrong secret: exit %d %v", code, err)
	}
	if strings.Contains(err.Error(), "wrong-secret-value") {
		t.Fatalf("error shows the secret: %v", err)
	}

	// Bad flags are usage errors.
	for _, args := range [][]string{{"sync", "-since", "yesterday"}, {"sync", "-since", "-5h"}, {"sync", "extra"}} {
		_, _, err := runCmd(t, env, args...)
		var ue *usageError
		if !errors.As(err, &ue) {
			t.Errorf("%v: %v, want a usage error", args, err)
		}
	}
	_, _, err = runCmd(t, env, "sync", "-object", "Account")
	if err == nil || !strings.Contains(err.Error(), "Account") {
		t.Errorf("unknown object: %v", err)
	}
}

func TestParseSince(t *testing.T) {
	now := time.Date(2026, 11, 28, 9, 15, 2, 0, time.UTC)
	for _, tc := range []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"2026-11-01T00:00:00Z", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-11-01T01:00:00+01:00", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{"2026-11-01", time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)},
		{"25h", now.Add(-25 * time.Hour)},
		{"90m", now.Add(-90 * time.Minute)},
		{"7d", now.Add(-7 * 24 * time.Hour)},
	} {
		got, err := parseSince(tc.in, now)
		if err != nil || !got.Equal(tc.want) {
			t.Errorf("parseSince(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"yesterday", "0h", "-1h", "xd", "2026-13-01"} {
		if _, err := parseSince(bad, now); err == nil {
			t.Errorf("parseSince(%q) accepted", bad)
		}
	}
}
