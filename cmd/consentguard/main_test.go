package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/consentguard/consentguard/cache/redistest"
)

// syncBuffer collects a command's output while it runs.
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

func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// server is one `consentguard serve` run inside the test process.
type server struct {
	base   string // http://127.0.0.1:port
	addrs  map[string]string
	stdout *syncBuffer
	stderr *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

var listenLine = regexp.MustCompile(`consentguard (\w+) listening on (?:https?://)?(\S+)`)

// mustServe starts serve with env and waits until it listens.
func mustServe(tb testing.TB, env map[string]string, args ...string) *server {
	tb.Helper()
	if env["CONSENTGUARD_HTTP_LISTEN"] == "" {
		env["CONSENTGUARD_HTTP_LISTEN"] = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &server{stdout: &syncBuffer{}, stderr: &syncBuffer{}, cancel: cancel, done: make(chan error, 1), addrs: map[string]string{}}
	go func() {
		s.done <- run(ctx, append([]string{"consentguard", "serve"}, args...), envFunc(env), s.stdout, s.stderr)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		for _, m := range listenLine.FindAllStringSubmatch(s.stdout.String(), -1) {
			s.addrs[m[1]] = m[2]
		}
		if a, ok := s.addrs["http"]; ok {
			s.base = "http://" + a
			tb.Cleanup(func() { s.stop(tb) })
			return s
		}
		select {
		case err := <-s.done:
			tb.Fatalf("serve exited early: %v\nstderr:\n%s", err, s.stderr.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	tb.Fatalf("serve did not listen in time\nstdout:%s\nstderr:%s", s.stdout.String(), s.stderr.String())
	return nil
}

func (s *server) stop(tb testing.TB) {
	tb.Helper()
	if s.cancel == nil {
		return
	}
	s.cancel()
	s.cancel = nil
	select {
	case err := <-s.done:
		if err != nil {
			tb.Errorf("serve returned %v after shutdown", err)
		}
	case <-time.After(15 * time.Second):
		tb.Errorf("serve did not shut down")
	}
}

func getJSON(tb testing.TB, url string, into any) int {
	tb.Helper()
	resp, err := http.Get(url)
	if err != nil {
		tb.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if into != nil {
		if err := json.Unmarshal(b, into); err != nil {
			tb.Fatalf("GET %s: %d %s: %v", url, resp.StatusCode, b, err)
		}
	}
	return resp.StatusCode
}

type decision struct {
	Allowed bool   `json:"allowed"`
	Channel string `json:"channel"`
	Reason  string `json:"reason"`
	Records []struct {
		ID      string `json:"id"`
		Consent string `json:"consent"`
		Version string `json:"version"`
	} `json:"records"`
}

func TestVersionAndUsage(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"consentguard", "version"}, envFunc(nil), &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "consentguard ") {
		t.Fatalf("version printed %q", out.String())
	}
	err := run(context.Background(), []string{"consentguard", "frobnicate"}, envFunc(nil), &out, &errb)
	if exitCode(err, io.Discard) != 2 {
		t.Fatalf("unknown command: %v", err)
	}
}

func TestServeEmbeddedDefault(t *testing.T) {
	s := mustServe(t, map[string]string{})
	var d decision
	if code := getJSON(t, s.base+"/v1/check?channel=email&email=x@y.de", &d); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	if d.Allowed || d.Reason != "unknown_contact" || d.Channel != "email" {
		t.Fatalf("decision %+v", d)
	}
	for _, p := range []string{"/healthz", "/readyz", "/metrics"} {
		if code := getJSON(t, s.base+p, nil); code != http.StatusOK {
			t.Fatalf("%s: %d", p, code)
		}
	}
	if !strings.Contains(s.stderr.String(), "NO REDIS CONFIGURED") {
		t.Fatalf("embedded mode not announced loudly:\n%s", s.stderr.String())
	}
	s.stop(t)
}

func TestServeRefusesIncompleteConfig(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"consentguard", "serve"}, envFunc(map[string]string{
		"CONSENTGUARD_REDIS_URL": "redis://127.0.0.1:1/0",
	}), &out, &errb)
	if err == nil {
		t.Fatal("serve started without org ids, token and hash key")
	}
	for _, want := range []string{"salesforce.org_ids", "salesforce.token", "identity.hash_key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
}

func TestCheckConfigFlag(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	os.WriteFile(good, []byte("http: {listen: 127.0.0.1:9090}\npolicy: {listen: 127.0.0.1:9998, mode: shadow}\n"), 0o600)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"consentguard", "serve", "-check-config", "-config", good}, envFunc(nil), &out, &errb); err != nil {
		t.Fatalf("good config: %v", err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte("http: {listen: nope}\npolicy: {mode: loud}\nsmtp: {listen: 127.0.0.1:2525}\nidentity: {hash_key: short}\nsalesforce: {values: {granted: [Ja], denied: [ja]}}\n"), 0o600)
	err := run(context.Background(), []string{"consentguard", "serve", "-check-config", "-config", bad}, envFunc(nil), &out, &errb)
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"http.listen", "policy.mode", "smtp.upstream", "hash_key", "salesforce.values"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	typo := filepath.Join(dir, "typo.yaml")
	os.WriteFile(typo, []byte("htp: {listen: 127.0.0.1:1}\n"), 0o600)
	if err := run(context.Background(), []string{"consentguard", "serve", "-check-config", "-config", typo}, envFunc(nil), &out, &errb); err == nil || !strings.Contains(err.Error(), "htp") {
		t.Fatalf("unknown key: %v", err)
	}
}

const (
	testOrg   = "00D000000000062EAA"
	testToken = "outbound-secret-token"
	testKey   = "0123456789abcdef0123456789abcdef-test-hash-key"
)

func outbound(id, modstamp, email, phone, emailConsent, phoneConsent string) string {
	return fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>%s</OrganizationId>
   <ActionId>04k000000000001AAA</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/62.0/00D000000000062</EnterpriseUrl>
   <PartnerUrl>https://example.my.salesforce.com/services/Soap/u/62.0/00D000000000062</PartnerUrl>
   <Notification>
    <Id>04l000000000%s</Id>
    <sObject xsi:type="sf:Contact" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>%s</sf:Id>
     <sf:Darf_angemailt_werden__c>%s</sf:Darf_angemailt_werden__c>
     <sf:Darf_telefonisch_kontaktiert_werden__c>%s</sf:Darf_telefonisch_kontaktiert_werden__c>
     <sf:Email>%s</sf:Email>
     <sf:Phone>%s</sf:Phone>
     <sf:SystemModstamp>%s</sf:SystemModstamp>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>`, testOrg, modstamp[11:13]+modstamp[14:16]+modstamp[17:19], id, emailConsent, phoneConsent, email, phone, modstamp)
}

func postOutbound(tb testing.TB, base, body string) int {
	tb.Helper()
	resp, err := http.Post(base+"/salesforce/outbound?token="+testToken, "text/xml; charset=utf-8", strings.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK && !strings.Contains(string(b), "<Ack>true</Ack>") {
		tb.Fatalf("200 without ack: %s", b)
	}
	return resp.StatusCode
}

func redisEnv(url string) map[string]string {
	return map[string]string{
		"CONSENTGUARD_REDIS_URL":          url,
		"CONSENTGUARD_HASH_KEY":           testKey,
		"CONSENTGUARD_SALESFORCE_TOKEN":   testToken,
		"CONSENTGUARD_SALESFORCE_ORG_IDS": "00D000000000062",
	}
}

func TestEndToEndOnRedis(t *testing.T) {
	rs := redistest.Start(t)
	env := redisEnv(rs.URL())
	audit := filepath.Join(t.TempDir(), "decisions.jsonl")
	env["CONSENTGUARD_AUDIT_PATH"] = audit
	s := mustServe(t, env)

	const id = "0035g00000ABCDeAAP"
	if code := postOutbound(t, s.base, outbound(id, "2026-11-28T09:15:02.000Z", "Max.Mustermann@Firma.de", "0211 17540322", "Ja", "Nein")); code != 200 {
		t.Fatalf("outbound: %d", code)
	}
	var d decision
	getJSON(t, s.base+"/v1/check?channel=email&email=max.mustermann@firma.de", &d)
	if !d.Allowed || d.Reason != "consent_granted" || len(d.Records) != 1 || d.Records[0].ID != id || d.Records[0].Version != "2026-11-28T09:15:02.000Z" {
		t.Fatalf("email after ingest: %+v", d)
	}
	getJSON(t, s.base+"/v1/check?channel=phone&phone=%2B49%20211%2017540322", &d)
	if d.Allowed || d.Reason != "consent_denied" {
		t.Fatalf("phone after ingest: %+v", d)
	}

	// The check command against the same Redis: exit 0 allowed, 1 denied, 2 invalid.
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"consentguard", "check", "-channel", "email", "-email", "MAX.MUSTERMANN@firma.de"}, envFunc(env), &out, &errb)
	if code := exitCode(err, io.Discard); code != 0 {
		t.Fatalf("check allowed: exit %d (%v) %s", code, err, errb.String())
	}
	if err := json.Unmarshal(out.Bytes(), &d); err != nil || !d.Allowed {
		t.Fatalf("check printed %s", out.String())
	}
	out.Reset()
	err = run(context.Background(), []string{"consentguard", "check", "-channel", "phone", "-phone", "0211 175403-22"}, envFunc(env), &out, &errb)
	if code := exitCode(err, io.Discard); code != 1 {
		t.Fatalf("check denied: exit %d (%v)", code, err)
	}
	out.Reset()
	err = run(context.Background(), []string{"consentguard", "check", "-channel", "phone", "-phone", "not a number"}, envFunc(env), &out, &errb)
	if code := exitCode(err, io.Discard); code != 2 || !strings.Contains(out.String(), "invalid_identifier") {
		t.Fatalf("check invalid: exit %d (%v) %s", code, err, out.String())
	}

	// Withdrawal takes effect at once; a late older "Ja" cannot undo it.
	if code := postOutbound(t, s.base, outbound(id, "2026-11-28T09:20:00.000Z", "max.mustermann@firma.de", "0211 17540322", "Nein", "Nein")); code != 200 {
		t.Fatalf("withdrawal: %d", code)
	}
	if code := postOutbound(t, s.base, outbound(id, "2026-11-28T09:17:00.000Z", "max.mustermann@firma.de", "0211 17540322", "Ja", "Ja")); code != 200 {
		t.Fatalf("late message: %d", code)
	}
	getJSON(t, s.base+"/v1/check?channel=email&email=max.mustermann@firma.de", &d)
	if d.Allowed || d.Reason != "consent_denied" {
		t.Fatalf("after withdrawal and late Ja: %+v", d)
	}

	// Redis goes away: fail closed, then recover.
	rs.Stop(t)
	if code := getJSON(t, s.base+"/v1/check?channel=email&email=max.mustermann@firma.de", &d); code != http.StatusServiceUnavailable || d.Allowed || d.Reason != "store_unavailable" {
		t.Fatalf("redis down: %d %+v", code, d)
	}
	if code := getJSON(t, s.base+"/readyz", nil); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz with redis down: %d", code)
	}
	rs.Restart(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code := getJSON(t, s.base+"/v1/check?channel=email&email=max.mustermann@firma.de", &d)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after redis restart: %d %+v", code, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if d.Reason != "unknown_contact" { // the restarted test server is empty
		t.Fatalf("after restart: %+v", d)
	}

	s.stop(t)
	raw, err := os.ReadFile(audit)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(raw)), "mustermann") || strings.Contains(string(raw), "17540322") {
		t.Fatal("audit log holds plaintext identifiers")
	}
	// The audit log names the address by the same digest the store indexes it under.
	mac := hmac.New(sha256.New, []byte(testKey))
	mac.Write([]byte("email:max.mustermann@firma.de"))
	if !strings.Contains(string(raw), hex.EncodeToString(mac.Sum(nil))) {
		t.Fatal("audit log does not carry the identifier's HMAC")
	}
	if n := strings.Count(string(raw), "\n"); n < 5 {
		t.Fatalf("audit log has %d decisions, want at least 5", n)
	}
}

func TestServeRefusesForeignHashKey(t *testing.T) {
	rs := redistest.Start(t)
	env := redisEnv(rs.URL())
	s := mustServe(t, env)
	s.stop(t)
	env["CONSENTGUARD_HASH_KEY"] = strings.Repeat("x", 40)
	var out, errb bytes.Buffer
	err := run(context.Background(), []string{"consentguard", "serve"}, envFunc(env), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "hash key") {
		t.Fatalf("serve with another hash key: %v", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal("wrong error")
	}
}

func TestImportAndScrubCommands(t *testing.T) {
	rs := redistest.Start(t)
	env := redisEnv(rs.URL())
	dir := t.TempDir()
	export := filepath.Join(dir, "contacts.csv")
	os.WriteFile(export, []byte(`"ID","EMAIL","PHONE","DARF_ANGEMAILT_WERDEN__C","DARF_TELEFONISCH_KONTAKTIERT_WERDEN__C","SYSTEMMODSTAMP"
"0035g00000ABCDe","anna@firma.de","0211 17540322","Ja","Nein","2026-11-20T08:00:00.000Z"
"0035g00000ABCDf","bert@firma.de","0211 17540323","Nein","Ja","2026-11-20T08:00:00.000Z"
"0035g00000ABCDg","carl@firma.de","","Abfrage ausstehend","","2026-11-20T08:00:00.000Z"
`), 0o600)
	var out, errb bytes.Buffer
	if err := run(context.Background(), []string{"consentguard", "import", export}, envFunc(env), &out, &errb); err != nil {
		t.Fatalf("import: %v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), "rows 3") || !strings.Contains(out.String(), "created 3") {
		t.Fatalf("import summary: %s", out.String())
	}
	list := filepath.Join(dir, "campaign.csv")
	os.WriteFile(list, []byte("name,mail\nAnna,anna@firma.de\nBert,BERT@firma.de\nCarl,carl@firma.de\nDora,dora@firma.de\n"), 0o600)
	out.Reset()
	errb.Reset()
	if err := run(context.Background(), []string{"consentguard", "scrub", "-channel", "email", "-column", "mail", list}, envFunc(env), &out, &errb); err != nil {
		t.Fatalf("scrub: %v\n%s", err, errb.String())
	}
	if out.String() != "name,mail\nAnna,anna@firma.de\n" {
		t.Fatalf("scrub output %q", out.String())
	}
	if !strings.Contains(errb.String(), "rows 4, allowed 1, denied 3") {
		t.Fatalf("scrub summary %q", errb.String())
	}
	out.Reset()
	if err := run(context.Background(), []string{"consentguard", "scrub", "-channel", "phone", "-column", "tel", list}, envFunc(env), &out, &errb); err == nil {
		t.Fatal("scrub with a missing column succeeded")
	}

	// The same over HTTP.
	s := mustServe(t, env)
	resp, err := http.Post(s.base+"/v1/scrub?channel=email&column=mail&annotate=1", "text/csv", strings.NewReader("mail\nanna@firma.de\nbert@firma.de\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != "mail,consent_allowed,consent_reason\nanna@firma.de,true,consent_granted\nbert@firma.de,false,consent_denied\n" {
		t.Fatalf("POST /v1/scrub: %d %q", resp.StatusCode, b)
	}
	if resp.Trailer.Get("X-Scrub-Allowed") != "1" || resp.Trailer.Get("X-Scrub-Rows") != "2" {
		t.Fatalf("trailers %v", resp.Trailer)
	}
	resp, err = http.Post(s.base+"/v1/import?object=Lead", "text/csv", strings.NewReader("Id,Email,Darf_angemailt_werden__c,SystemModstamp\n00Q5g00000ABCDe,lead@firma.de,Ja,2026-11-20T08:00:00.000Z\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `"created":1`) {
		t.Fatalf("POST /v1/import: %d %s", resp.StatusCode, b)
	}
	var d decision
	getJSON(t, s.base+"/v1/check?channel=email&email=lead@firma.de", &d)
	if !d.Allowed {
		t.Fatalf("imported lead: %+v", d)
	}
	rs.Stop(t)
	resp, err = http.Post(s.base+"/v1/scrub?channel=email&column=mail", "text/csv", strings.NewReader("mail\nanna@firma.de\n"))
	if err != nil {
		t.Fatal(err)
	}
	b, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(b), "store_unavailable") {
		t.Fatalf("scrub with redis down: %d %s", resp.StatusCode, b)
	}
}

// The shipped example configuration must stay valid.
func TestExampleConfigIsValid(t *testing.T) {
	var out, errb bytes.Buffer
	env := envFunc(map[string]string{"CONSENTGUARD_HASH_KEY": testKey, "CONSENTGUARD_SALESFORCE_TOKEN": testToken})
	if err := run(context.Background(), []string{"consentguard", "serve", "-check-config", "-config", "../../deploy/config.example.yaml"}, env, &out, &errb); err != nil {
		t.Fatalf("deploy/config.example.yaml: %v", err)
	}
	if !strings.Contains(out.String(), "configuration ok") {
		t.Fatalf("output %q", out.String())
	}
}

func TestServeMailFrontEnds(t *testing.T) {
	rs := redistest.Start(t)
	env := redisEnv(rs.URL())
	cfg := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfg, []byte("smtp: {listen: 127.0.0.1:0, upstream: 127.0.0.1:1}\npolicy: {listen: 127.0.0.1:0, mode: enforce}\n"), 0o600)
	s := mustServe(t, env, "-config", cfg)
	if s.addrs["smtp"] == "" || s.addrs["policy"] == "" {
		t.Fatalf("smtp/policy not listening: %v", s.addrs)
	}

	// Postfix policy delegation: one request, one action.
	conn, err := net.Dial("tcp", s.addrs["policy"])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nsender=news@shop.example\nrecipient=nobody@firma.de\n\n")
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "action=550 5.7.1 ") || !strings.Contains(line, "unknown_contact") {
		t.Fatalf("policy answered %q, %v", line, err)
	}

	// SMTP relay: the unknown recipient is refused at RCPT.
	c, err := smtp.Dial(s.addrs["smtp"])
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("test.example"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("news@shop.example", nil); err != nil {
		t.Fatal(err)
	}
	err = c.Rcpt("nobody@firma.de", nil)
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 550 || !strings.Contains(se.Message, "unknown_contact") {
		t.Fatalf("RCPT answered %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	s.stop(t)
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"":                                "(embedded)",
		"redis://127.0.0.1:6379/0":        "redis://127.0.0.1:6379/0",
		"redis://user:s3cret@host:6379/0": "redis://user:xxxxx@host:6379/0",
		"rediss://:s3cret@host:6380":      "rediss://:xxxxx@host:6380",
	} {
		if got := redactURL(in); got != want || strings.Contains(got, "s3cret") {
			t.Errorf("redactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// The tools (check, import, scrub, sync, repair-index) need the hash key
// with a Redis store, not the webhook's org ids and token: only serve
// receives webhooks.
func TestToolsNeedOnlyTheHashKey(t *testing.T) {
	rs := redistest.Start(t)
	var out, errb bytes.Buffer
	env := envFunc(map[string]string{"CONSENTGUARD_REDIS_URL": rs.URL(), "CONSENTGUARD_HASH_KEY": testKey})
	err := run(context.Background(), []string{"consentguard", "check", "-channel", "email", "-email", "x@y.de"}, env, &out, &errb)
	if code := exitCode(err, io.Discard); code != 1 || !strings.Contains(out.String(), "unknown_contact") {
		t.Fatalf("check with Redis and hash key only: %v, %q, %s", err, out.String(), errb.String())
	}
	out.Reset()
	err = run(context.Background(), []string{"consentguard", "repair-index"}, env, &out, &errb)
	if err != nil || !strings.HasPrefix(out.String(), "index: ") {
		t.Fatalf("repair-index with Redis and hash key only: %v, %q", err, out.String())
	}
	// Without the hash key: that, and only that, is named.
	err = run(context.Background(), []string{"consentguard", "check", "-channel", "email", "-email", "x@y.de"},
		envFunc(map[string]string{"CONSENTGUARD_REDIS_URL": rs.URL()}), &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "identity.hash_key") || strings.Contains(err.Error(), "salesforce.") {
		t.Fatalf("check without hash key: %v", err)
	}
}
