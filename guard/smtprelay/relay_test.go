package smtprelay_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"

	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/smtprelay"
)

const body = "From: Newsletter <news@shop.example>\r\n" +
	"To: undisclosed-recipients:;\r\n" +
	"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" +
	"\r\n" +
	"Hallo,\r\n" +
	". a line that starts with a dot\r\n" +
	"..two dots\r\n" +
	"trailing spaces   \r\n" +
	"\tand a tab\r\n" +
	"Umlaute: \xc3\xa4\xc3\xb6\xc3\xbc\r\n"

// stuffed doubles the leading dots of a CRLF message, as an SMTP client
// does on the wire.
func stuffed(msg string) string {
	lines := strings.SplitAfter(msg, "\r\n")
	for i, l := range lines {
		if strings.HasPrefix(l, ".") {
			lines[i] = "." + l
		}
	}
	return strings.Join(lines, "")
}

func TestThreeRecipientsOnlyTheConsentingOneGetsTheMail(t *testing.T) {
	g, _ := mustGuard(t)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		reg := prometheus.NewRegistry()
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr, Registerer: reg}, tweak)

		cv := dialConv(t, addr)
		cv.must("EHLO client.test", 250)
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		if code, msg := cv.cmd("RCPT TO:<nein@example.de>"); code != 550 || msg != "5.7.1 <nein@example.de>: no email consent (consent_denied)" {
			t.Errorf("RCPT Nein: %d %q", code, msg)
		}
		if code, msg := cv.cmd("RCPT TO:<unknown@example.de>"); code != 550 || msg != "5.7.1 <unknown@example.de>: no email consent (unknown_contact)" {
			t.Errorf("RCPT unknown: %d %q", code, msg)
		}
		cv.must("DATA", 354)
		cv.send(stuffed(body) + ".\r\n")
		cv.expect(250)
		cv.must("QUIT", 221)

		msgs := k.messages()
		if len(msgs) != 1 {
			t.Fatalf("sink got %d messages, want 1", len(msgs))
		}
		m := msgs[0]
		if m.from != "news@shop.example" || len(m.to) != 1 || m.to[0] != "ja@example.de" {
			t.Errorf("envelope from %q to %q; want news@shop.example to [ja@example.de]", m.from, m.to)
		}
		trace, rest := splitTrace(t, m.data)
		if string(rest) != body {
			t.Errorf("body changed in transit:\n got %q\nwant %q", rest, body)
		}
		for _, want := range []string{"Received: from client.test ([127.0.0.1])", "by relay.test (consentguard) with ESMTP;"} {
			if !strings.Contains(trace, want) {
				t.Errorf("trace header %q lacks %q", trace, want)
			}
		}
		if strings.Contains(trace, "X-Consent-Guard") {
			t.Errorf("X-Consent-Guard added although not configured: %q", trace)
		}

		want := map[string]float64{
			"consentguard_smtp_recipients_total/consent_granted": 1,
			"consentguard_smtp_recipients_total/consent_denied":  1,
			"consentguard_smtp_recipients_total/unknown_contact": 1,
			"consentguard_smtp_messages_total/relayed":           1,
		}
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				got[mf.GetName()+"/"+m.GetLabel()[0].GetValue()] = m.GetCounter().GetValue()
			}
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("metric %s = %v, want %v (all: %v)", k, got[k], v, got)
			}
		}
	})
}

func TestEveryReasonHasItsReply(t *testing.T) {
	g, _ := mustGuard(t)
	k := startSink(t)
	addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr})
	cases := []struct {
		rcpt string
		code int
		msg  string
	}{
		{"ja@example.de", 250, ""},
		{"JA@Example.DE", 250, ""},
		{"nein@example.de", 550, "5.7.1 <nein@example.de>: no email consent (consent_denied)"},
		{"pending@example.de", 550, "5.7.1 <pending@example.de>: no email consent (consent_pending)"},
		{"missing@example.de", 550, "5.7.1 <missing@example.de>: no email consent (consent_missing)"},
		{"storage@example.de", 550, "5.7.1 <storage@example.de>: no email consent (storage_denied)"},
		{"nobody@example.de", 550, "5.7.1 <nobody@example.de>: no email consent (unknown_contact)"},
		{"x@localhost", 553, "5.1.3 <x@localhost>: invalid recipient address"},
	}
	cv := dialConv(t, addr)
	cv.must("EHLO client.test", 250)
	cv.must("MAIL FROM:<news@shop.example>", 250)
	for _, c := range cases {
		code, msg := cv.cmd("RCPT TO:<" + c.rcpt + ">")
		if code != c.code || (c.msg != "" && msg != c.msg) {
			t.Errorf("RCPT %s: %d %q, want %d %q", c.rcpt, code, msg, c.code, c.msg)
		}
	}
}

func TestStoreKilledMidSessionDefersAndRelaysNothing(t *testing.T) {
	g, redis := mustGuard(t)
	k := startSink(t)
	addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr})

	cv := dialConv(t, addr)
	cv.must("EHLO client.test", 250)
	// One message goes through while the store is up.
	cv.must("MAIL FROM:<news@shop.example>", 250)
	cv.must("RCPT TO:<ja@example.de>", 250)
	cv.must("DATA", 354)
	cv.send(stuffed(body) + ".\r\n")
	cv.expect(250)

	cv.must("MAIL FROM:<news@shop.example>", 250)
	redis.Stop(t)
	for _, rcpt := range []string{"ja2@example.de", "nein@example.de"} {
		code, msg := cv.cmd("RCPT TO:<" + rcpt + ">")
		want := "4.3.0 <" + rcpt + ">: consent store unavailable, try again later"
		if code != 451 || msg != want {
			t.Errorf("RCPT %s with the store down: %d %q, want 451 %q", rcpt, code, msg, want)
		}
	}
	if code, _ := cv.cmd("DATA"); code/100 == 3 || code/100 == 2 {
		t.Errorf("DATA without accepted recipients answered %d", code)
	}
	cv.must("QUIT", 221)
	if n := len(k.messages()); n != 1 {
		t.Errorf("sink got %d messages, want only the one sent before the store died", n)
	}
}

func TestUpstreamDownIs451(t *testing.T) {
	g, _ := mustGuard(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	addr, _ := startRelay(t, g, smtprelay.Options{Upstream: dead, UpstreamTimeout: 5 * time.Second})

	cv := dialConv(t, addr)
	cv.must("EHLO client.test", 250)
	cv.must("MAIL FROM:<news@shop.example>", 250)
	code, msg := cv.cmd("RCPT TO:<ja@example.de>")
	if code != 451 {
		t.Fatalf("RCPT with the upstream down: %d %q, want 451", code, msg)
	}
	if strings.Contains(msg, "127.0.0.1") || strings.Contains(msg, "refused") || strings.Contains(msg, "dial") {
		t.Errorf("reply leaks internal error text: %q", msg)
	}
	// A denied recipient is still denied, without asking the upstream.
	if code, _ := cv.cmd("RCPT TO:<nein@example.de>"); code != 550 {
		t.Errorf("RCPT Nein with upstream down: %d, want 550", code)
	}
}

func TestUpstreamLostBeforeDataIs451(t *testing.T) {
	g, _ := mustGuard(t)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tweak)

		cv := dialConv(t, addr)
		cv.must("EHLO client.test", 250)
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		k.srv.Close() // the upstream goes away with our transaction open
		code, msg := cv.cmd("DATA")
		if code == 354 {
			cv.send(stuffed(body) + ".\r\n")
			code, msg = cv.read()
		}
		if code != 451 {
			t.Errorf("message with the upstream gone: %d %q, want 451", code, msg)
		}
	})
}

func TestUpstreamRepliesArePassedBack(t *testing.T) {
	g, _ := mustGuard(t)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		k.rejectRcpt["ja2@example.de"] = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "mailbox unknown"}
		k.rejectRcpt["ja3@example.de"] = &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "mailbox busy"}
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tweak)

		cv := dialConv(t, addr)
		cv.must("EHLO client.test", 250)
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		if code, msg := cv.cmd("RCPT TO:<ja2@example.de>"); code != 550 || msg != "5.1.1 mailbox unknown" {
			t.Errorf("upstream 550 came back as %d %q", code, msg)
		}
		if code, msg := cv.cmd("RCPT TO:<ja3@example.de>"); code != 450 || msg != "4.2.1 mailbox busy" {
			t.Errorf("upstream 450 came back as %d %q", code, msg)
		}
		k.mu.Lock()
		k.dataErr = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 3, 1}, Message: "insufficient system storage"}
		k.mu.Unlock()
		cv.must("DATA", 354)
		cv.send(stuffed(body) + ".\r\n")
		if code, msg := cv.read(); code != 452 || msg != "4.3.1 insufficient system storage" {
			t.Errorf("upstream 452 at end of data came back as %d %q", code, msg)
		}
		k.mu.Lock()
		k.dataErr = &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 6, 0}, Message: "content rejected"}
		k.mu.Unlock()
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		cv.must("DATA", 354)
		cv.send(stuffed(body) + ".\r\n")
		if code, msg := cv.read(); code != 554 || msg != "5.6.0 content rejected" {
			t.Errorf("upstream 554 at end of data came back as %d %q", code, msg)
		}
		// And the pooled upstream connection is fine for the next message.
		k.mu.Lock()
		k.dataErr = nil
		k.mu.Unlock()
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		cv.must("DATA", 354)
		cv.send(stuffed(body) + ".\r\n")
		cv.expect(250)
		if n := len(k.messages()); n != 1 {
			t.Errorf("sink has %d messages, want 1", n)
		}
	})
}

// TestSmugglingDoesNotSplitMessages sends end-of-data look-alikes (bare LF,
// bare CR, LF.CRLF, CRLF.LF) followed by a smuggled transaction to a
// recipient without consent. Both hops must see one message.
func TestSmugglingDoesNotSplitMessages(t *testing.T) {
	g, _ := mustGuard(t)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tweak)

		smuggled := "MAIL FROM:<evil@shop.example>\r\nRCPT TO:<nein@example.de>\r\nDATA\r\nSubject: smuggled\r\n\r\nhi\r\n"
		payload := "Subject: harmless\r\n\r\nline one\n" +
			".\n" + smuggled +
			"x\r\n.\n" + smuggled +
			"y\n.\r\n" + smuggled +
			"z\r.\r" + smuggled +
			"end\r\n"

		cv := dialConv(t, addr)
		cv.must("EHLO client.test", 250)
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		cv.must("DATA", 354)
		cv.send(payload + ".\r\n")
		cv.expect(250)
		// If the relay had split the message, replies to the smuggled
		// commands would come before this one.
		cv.must("QUIT", 221)

		msgs := k.messages()
		if len(msgs) != 1 {
			t.Fatalf("sink got %d messages, want 1", len(msgs))
		}
		m := msgs[0]
		if len(m.to) != 1 || m.to[0] != "ja@example.de" {
			t.Errorf("recipients %q, want only ja@example.de", m.to)
		}
		_, rest := splitTrace(t, m.data)
		if n := strings.Count(string(rest), "MAIL FROM:<evil@shop.example>"); n != 4 {
			t.Errorf("the smuggled commands should arrive as body text 4 times, got %d: %q", n, rest)
		}
		// Every line the upstream got ends in CRLF: no bare CR or LF left.
		if bytes.Contains(bytes.ReplaceAll(rest, []byte("\r\n"), nil), []byte("\n")) ||
			bytes.Contains(bytes.ReplaceAll(rest, []byte("\r\n"), nil), []byte("\r")) {
			t.Errorf("bare CR or LF relayed: %q", rest)
		}
	})
}

func TestInboundSTARTTLSAndAuth(t *testing.T) {
	g, _ := mustGuard(t)
	k := startSink(t)
	serverTLS, clientTLS := selfSigned(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startRelay(t, g, smtprelay.Options{
		Upstream: k.addr, TLS: serverTLS,
		Users:            map[string]string{"newsletter": string(hash)},
		AddConsentHeader: true,
	})

	// Before TLS: STARTTLS offered, AUTH not; MAIL needs AUTH.
	cv := dialConv(t, addr)
	ehlo := cv.must("EHLO client.test", 250)
	if !strings.Contains(ehlo, "STARTTLS") || strings.Contains(ehlo, "AUTH") {
		t.Errorf("EHLO before TLS: %q; want STARTTLS and no AUTH", ehlo)
	}
	if code, _ := cv.cmd("MAIL FROM:<news@shop.example>"); code != 530 {
		t.Errorf("MAIL before AUTH: %d, want 530", code)
	}
	cv.must("QUIT", 221)

	c, err := smtp.DialStartTLS(addr, clientTLS)
	if err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	defer c.Close()
	if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") || !strings.Contains(mechs, "LOGIN") {
		t.Errorf("AUTH after TLS: %v %q", ok, mechs)
	}
	var se *smtp.SMTPError
	if err := c.Auth(sasl.NewPlainClient("", "newsletter", "wrong")); !errors.As(err, &se) || se.Code != 535 {
		t.Errorf("AUTH with a wrong password: %v, want 535", err)
	}
	if err := c.Mail("news@shop.example", nil); !errors.As(err, &se) || se.Code != 530 {
		t.Errorf("MAIL after failed AUTH: %v, want 530", err)
	}
	if err := c.Auth(sasl.NewLoginClient("newsletter", "s3cret")); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	if err := c.SendMail("news@shop.example", []string{"ja@example.de"}, strings.NewReader(body)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}

	// AUTH PLAIN works too.
	c2, err := smtp.DialStartTLS(addr, clientTLS)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if err := c2.Auth(sasl.NewPlainClient("", "newsletter", "s3cret")); err != nil {
		t.Fatalf("AUTH PLAIN: %v", err)
	}
	if err := c2.Quit(); err != nil {
		t.Errorf("QUIT: %v", err)
	}

	msgs := k.messages()
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages, want 1", len(msgs))
	}
	trace, rest := splitTrace(t, msgs[0].data)
	if !strings.Contains(trace, " with ESMTPSA;") || !strings.Contains(trace, "X-Consent-Guard: ") {
		t.Errorf("trace header %q: want ESMTPSA and X-Consent-Guard", trace)
	}
	if string(rest) != body {
		t.Errorf("body changed: %q", rest)
	}
}

func TestUpstreamSTARTTLSAndAuth(t *testing.T) {
	g, _ := mustGuard(t)
	serverTLS, clientTLS := selfSigned(t)
	k := startSink(t, withSinkTLS(serverTLS), withSinkAuth("relay", "upstream-pass"))
	addr, _ := startRelay(t, g, smtprelay.Options{
		Upstream: k.addr, UpstreamTLS: smtprelay.UpstreamRequire, UpstreamTLSConfig: clientTLS,
		UpstreamUser: "relay", UpstreamPassword: "upstream-pass",
	})
	c, err := smtp.Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SendMail("news@shop.example", []string{"ja@example.de"}, strings.NewReader(body)); err != nil {
		t.Fatalf("send: %v", err)
	}
	msgs := k.messages()
	if len(msgs) != 1 || !msgs[0].tls || msgs[0].user != "relay" {
		t.Fatalf("sink got %+v, want one message over TLS from user relay", msgs)
	}

	// "require" refuses an upstream without STARTTLS: 451, nothing sent.
	plain := startSink(t)
	addr2, _ := startRelay(t, g, smtprelay.Options{Upstream: plain.addr, UpstreamTLS: smtprelay.UpstreamRequire})
	cv := dialConv(t, addr2)
	cv.must("EHLO client.test", 250)
	cv.must("MAIL FROM:<news@shop.example>", 250)
	if code, msg := cv.cmd("RCPT TO:<ja@example.de>"); code != 451 {
		t.Errorf("RCPT via an upstream without STARTTLS in require mode: %d %q, want 451", code, msg)
	}
	// With the default mode, credentials are not sent over plain text either.
	addr3, _ := startRelay(t, g, smtprelay.Options{Upstream: plain.addr, UpstreamTLS: smtprelay.UpstreamStartTLS,
		UpstreamUser: "relay", UpstreamPassword: "x"})
	cv = dialConv(t, addr3)
	cv.must("EHLO client.test", 250)
	cv.must("MAIL FROM:<news@shop.example>", 250)
	if code, msg := cv.cmd("RCPT TO:<ja@example.de>"); code != 451 {
		t.Errorf("RCPT needing AUTH over plain text: %d %q, want 451", code, msg)
	}
	if n := len(plain.messages()); n != 0 {
		t.Errorf("plain sink got %d messages", n)
	}
}

func TestLimits(t *testing.T) {
	g, _ := mustGuard(t)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr, MaxMessageBytes: 2048, MaxRecipients: 2}, tweak)

		cv := dialConv(t, addr)
		cv.must("EHLO client.test", 250)
		if code, _ := cv.cmd("MAIL FROM:<news@shop.example> SIZE=100000"); code != 552 {
			t.Errorf("MAIL with SIZE over the limit: %d, want 552", code)
		}
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		cv.cmd("RCPT TO:<nein@example.de>") // 550, but counts
		if code, msg := cv.cmd("RCPT TO:<ja2@example.de>"); code != 452 {
			t.Errorf("third RCPT with MaxRecipients 2: %d %q, want 452", code, msg)
		}
		cv.must("DATA", 354)
		big := body + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 64)
		cv.send(stuffed(big) + ".\r\n")
		if code, msg := cv.read(); code != 552 {
			t.Errorf("message over the size limit: %d %q, want 552", code, msg)
		}
		// The session goes on, and the next message (small) is relayed.
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		cv.must("DATA", 354)
		cv.send(stuffed(body) + ".\r\n")
		cv.expect(250)
		msgs := k.messages()
		if len(msgs) != 1 || !bytes.HasSuffix(msgs[0].data, []byte(body)) {
			t.Fatalf("sink got %d messages, want only the small one", len(msgs))
		}
	})
}

// panicStore stands in for a store with a bug: the relay must answer 421
// and keep serving other connections.
type panicStore struct{ calls atomic.Int32 }

func (p *panicStore) Lookup(context.Context, []guard.Identifier) ([][]guard.Record, error) {
	p.calls.Add(1)
	panic("bug in the store")
}

func TestPanicIsRecovered(t *testing.T) {
	k := startSink(t)
	ps := &panicStore{}
	addr, _ := startRelay(t, guard.New(ps, guard.Options{}), smtprelay.Options{Upstream: k.addr})
	for i := 0; i < 2; i++ {
		cv := dialConv(t, addr)
		cv.must("EHLO client.test", 250)
		cv.must("MAIL FROM:<news@shop.example>", 250)
		if code, msg := cv.cmd("RCPT TO:<ja@example.de>"); code != 421 || strings.Contains(msg, "bug") {
			t.Errorf("RCPT with a panicking store: %d %q, want 421 without internals", code, msg)
		}
	}
	if ps.calls.Load() != 2 {
		t.Errorf("store asked %d times, want 2", ps.calls.Load())
	}
}

func TestShutdownClosesIdleConnections(t *testing.T) {
	g, _ := mustGuard(t)
	k := startSink(t)
	r := smtprelay.New(g, smtprelay.Options{Upstream: k.addr, UpstreamTLS: smtprelay.UpstreamNone})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- r.Serve(l) }()
	cv := dialConv(t, l.Addr().String())
	cv.must("EHLO client.test", 250)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, smtprelay.ErrServerClosed) {
		t.Errorf("Serve: %v, want ErrServerClosed", err)
	}
	if _, err := io.ReadAll(cv.c); err != nil {
		t.Errorf("idle connection not closed cleanly: %v", err)
	}
	if _, err := net.Dial("tcp", l.Addr().String()); err == nil {
		t.Errorf("listener still accepting after Shutdown")
	}
}

func TestSendThroughRelayWithGoSMTPClient(t *testing.T) {
	// Many recipients over one pooled upstream connection, several
	// messages per session: per-recipient answers survive reuse.
	g, _ := mustGuard(t)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tweak)
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := 0; i < 5; i++ {
			if err := c.Mail("news@shop.example", nil); err != nil {
				t.Fatal(err)
			}
			for _, r := range []string{"ja@example.de", "nein@example.de", "ja2@example.de", "pending@example.de"} {
				err := c.Rcpt(r, nil)
				if want := strings.HasPrefix(r, "ja"); (err == nil) != want {
					t.Errorf("message %d RCPT %s: %v", i, r, err)
				}
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(w, "Subject: %d\r\n\r\nhello\r\n", i)
			if err := w.Close(); err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
		}
		msgs := k.messages()
		if len(msgs) != 5 {
			t.Fatalf("sink got %d messages, want 5", len(msgs))
		}
		for i, m := range msgs {
			if strings.Join(m.to, ",") != "ja@example.de,ja2@example.de" {
				t.Errorf("message %d went to %q", i, m.to)
			}
		}
	})
}

func TestChunkingBDAT(t *testing.T) {
	g, _ := mustGuard(t)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tweak)
		cv := dialConv(t, addr)
		if ehlo := cv.must("EHLO client.test", 250); !strings.Contains(ehlo, "CHUNKING") {
			t.Fatalf("EHLO lacks CHUNKING: %q", ehlo)
		}
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		half := len(body) / 2
		cv.send(fmt.Sprintf("BDAT %d\r\n%s", half, body[:half]))
		cv.expect(250)
		cv.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body)-half, body[half:]))
		cv.expect(250)
		cv.must("QUIT", 221)
		msgs := k.messages()
		if len(msgs) != 1 {
			t.Fatalf("sink got %d messages, want 1", len(msgs))
		}
		if _, rest := splitTrace(t, msgs[0].data); string(rest) != body {
			t.Errorf("body changed: %q", rest)
		}
	})
}

// TestUpstreamTransfer checks on the wire how a message goes upstream:
// with CHUNKING and PIPELINING offered, as one BDAT LAST chunk holding the
// trace header and the body as the client meant it (no dot stuffing);
// otherwise as DATA with dot stuffing.
func TestUpstreamTransfer(t *testing.T) {
	g, _ := mustGuard(t)
	for _, tr := range transfers {
		t.Run(tr.name, func(t *testing.T) {
			k := startSink(t, withSinkTranscript())
			addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tr.tweak)
			c, err := smtp.Dial(addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			for range 2 {
				if err := c.SendMail("news@shop.example", []string{"ja@example.de"}, strings.NewReader(body)); err != nil {
					t.Fatal(err)
				}
			}
			if err := c.Quit(); err != nil {
				t.Fatal(err)
			}
			msgs := k.messages()
			if len(msgs) != 2 {
				t.Fatalf("sink got %d messages, want 2", len(msgs))
			}
			wire := k.transcript.String()
			bdat, data := strings.Count(wire, " LAST\r\n"), strings.Count(wire, "\r\nDATA\r\n")
			if tr.name == "upstream=BDAT" {
				want := fmt.Sprintf("BDAT %d LAST\r\n%s", len(msgs[0].data), msgs[0].data)
				if bdat != 2 || data != 0 || !strings.Contains(wire, want) {
					t.Errorf("want each message as one BDAT LAST chunk; upstream got:\n%s", wire)
				}
			} else {
				if bdat != 0 || data != 2 || !strings.Contains(wire, "\r\n.. a line that starts with a dot\r\n") {
					t.Errorf("want DATA with dot stuffing; upstream got:\n%s", wire)
				}
			}
			if strings.Contains(wire, "RSET") {
				t.Errorf("RSET between completed messages:\n%s", wire)
			}
		})
	}
}

// TestLargeMessage sends a message of many BDAT chunks (more than are
// ever outstanding at once) and checks that it arrives byte for byte.
func TestLargeMessage(t *testing.T) {
	g, _ := mustGuard(t)
	var b strings.Builder
	b.WriteString("Subject: large\r\n\r\n")
	for i := 0; b.Len() < 1500<<10; i++ {
		fmt.Fprintf(&b, "%06d %s\r\n", i, strings.Repeat("x", i%200))
		if i%97 == 0 {
			b.WriteString(".\r\n..\r\n. dot\r\n")
		}
	}
	large := b.String()
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t)
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tweak)
		c, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.SendMail("news@shop.example", []string{"ja@example.de"}, strings.NewReader(large)); err != nil {
			t.Fatal(err)
		}
		msgs := k.messages()
		if len(msgs) != 1 {
			t.Fatalf("sink got %d messages, want 1", len(msgs))
		}
		if _, rest := splitTrace(t, msgs[0].data); string(rest) != large {
			t.Errorf("large message changed in transit (%d bytes arrived, %d sent)", len(rest), len(large))
		}
	})
}

// TestUpstreamRefusesMidMessage: the upstream refuses a message while it
// is being transferred (its size limit; with BDAT, at a chunk in the
// middle). The client gets the upstream's 552, and the pooled connection
// carries the next message.
func TestUpstreamRefusesMidMessage(t *testing.T) {
	g, _ := mustGuard(t)
	large := "Subject: large\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 10000)
	eachTransfer(t, func(t *testing.T, tweak func(*smtprelay.Server)) {
		k := startSink(t, withSinkMaxMessageBytes(200<<10))
		addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr}, tweak)
		cv := dialConv(t, addr)
		cv.must("EHLO client.test", 250)
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		cv.must("DATA", 354)
		cv.send(large + ".\r\n")
		if code, msg := cv.read(); code != 552 {
			t.Errorf("message over the upstream's limit: %d %q, want 552", code, msg)
		}
		cv.must("MAIL FROM:<news@shop.example>", 250)
		cv.must("RCPT TO:<ja@example.de>", 250)
		cv.must("DATA", 354)
		cv.send(stuffed(body) + ".\r\n")
		cv.expect(250)
		cv.must("QUIT", 221)
		if msgs := k.messages(); len(msgs) != 1 || !bytes.HasSuffix(msgs[0].data, []byte(body)) {
			t.Errorf("sink got %d messages, want only the small one", len(msgs))
		}
	})
}

// TestInboundAuthArgon2id: users with argon2id and bcrypt hashes log in
// with AUTH PLAIN and LOGIN; a wrong password, an unknown user and a user
// whose hash has absurd parameters get 535.
func TestInboundAuthArgon2id(t *testing.T) {
	g, _ := mustGuard(t)
	k := startSink(t)
	salt := []byte("a random salt, 22b")
	key := argon2.IDKey([]byte("argon-pass"), salt, 2, 1024, 2, 32)
	argonHash := fmt.Sprintf("$argon2id$v=19$m=1024,t=2,p=2$%s$%s",
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(key))
	bc, err := bcrypt.GenerateFromPassword([]byte("bcrypt-pass"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	absurd := strings.Replace(argonHash, "m=1024,t=2", "m=4194304,t=1000", 1)
	addr, _ := startRelay(t, g, smtprelay.Options{Upstream: k.addr, Users: map[string]string{
		"argon": argonHash, "bcrypt": string(bc), "absurd": absurd,
	}})
	cases := []struct {
		user, pass string
		login, ok  bool
	}{
		{"argon", "argon-pass", false, true},
		{"argon", "argon-pass", true, true},
		{"bcrypt", "bcrypt-pass", false, true},
		{"argon", "bcrypt-pass", false, false},
		{"argon", "argon-pass ", true, false},
		{"nobody", "argon-pass", false, false},
		{"absurd", "argon-pass", false, false},
	}
	for _, c := range cases {
		cl, err := smtp.Dial(addr)
		if err != nil {
			t.Fatal(err)
		}
		var mech sasl.Client = sasl.NewPlainClient("", c.user, c.pass)
		if c.login {
			mech = sasl.NewLoginClient(c.user, c.pass)
		}
		err = cl.Auth(mech)
		var se *smtp.SMTPError
		switch {
		case c.ok && err != nil:
			t.Errorf("AUTH %s (login %v): %v", c.user, c.login, err)
		case !c.ok && (!errors.As(err, &se) || se.Code != 535):
			t.Errorf("AUTH %s with %q: %v, want 535", c.user, c.pass, err)
		}
		if c.ok {
			if err := cl.SendMail("news@shop.example", []string{"ja@example.de"}, strings.NewReader(body)); err != nil {
				t.Errorf("send as %s: %v", c.user, err)
			}
		}
		cl.Close()
	}
	if n := len(k.messages()); n != 3 {
		t.Errorf("sink got %d messages, want 3", n)
	}
}
