package policy_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/policy"
)

var hashKey = []byte("policy-test-hash-key-32-bytes-xx")

var people = []struct {
	id, email            string
	emailWord, storeWord string
}{
	{"003000000000001", "ja@example.de", "Ja", "Ja"},
	{"003000000000002", "nein@example.de", "Nein", ""},
	{"003000000000003", "pending@example.de", "Abfrage ausstehend", ""},
	{"003000000000004", "missing@example.de", "", ""},
	{"003000000000005", "storage@example.de", "Ja", "Nein"},
	{"003000000000006", "vielleicht@example.de", "Vielleicht", ""},
}

// mustGuard starts a real redis-server, loads the people and returns a
// guard over it.
func mustGuard(tb testing.TB) (*guard.Guard, *redistest.Server) {
	tb.Helper()
	srv := redistest.Start(tb)
	st := cache.New(srv.Client(tb), cache.Options{HashKey: hashKey})
	ctx := context.Background()
	if err := st.Init(ctx); err != nil {
		tb.Fatalf("store init: %v", err)
	}
	ups := make([]guard.Update, 0, len(people))
	for _, p := range people {
		id, err := guard.NormalizeRecordID(p.id)
		if err != nil {
			tb.Fatal(err)
		}
		email, err := guard.ParseEmail(p.email)
		if err != nil {
			tb.Fatal(err)
		}
		var c [guard.NumChannels]string
		c[guard.Email], c[guard.Storage] = p.emailWord, p.storeWord
		ups = append(ups, guard.Update{
			ID: id, Object: "Contact", Version: time.Date(2026, 11, 1, 9, 0, 0, 0, time.UTC),
			Consent: c, Identifiers: []guard.Identifier{email}, Source: "test",
		})
	}
	if _, err := st.Apply(ctx, ups); err != nil {
		tb.Fatalf("store apply: %v", err)
	}
	return guard.New(st, guard.Options{Timeout: 2 * time.Second}), srv
}

// startPolicy serves on a loopback port and returns its address; Shutdown
// on cleanup.
func startPolicy(tb testing.TB, g *guard.Guard, opts policy.Options) string {
	tb.Helper()
	return startPolicyServer(tb, g, opts).addr
}

// polServer is a policy server on a loopback port.
type polServer struct {
	tb   testing.TB
	addr string
	s    *policy.Server
	done chan error
	once sync.Once
}

// startPolicyServer serves on a loopback port; Shutdown on cleanup, or
// earlier with shutdown.
func startPolicyServer(tb testing.TB, g *guard.Guard, opts policy.Options) *polServer {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	ps := &polServer{tb: tb, addr: l.Addr().String(), s: policy.New(g, opts), done: make(chan error, 1)}
	go func() { ps.done <- ps.s.Serve(l) }()
	tb.Cleanup(ps.shutdown)
	return ps
}

// shutdown stops the policy server (once) and checks that it stopped
// cleanly.
func (ps *polServer) shutdown() {
	ps.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := ps.s.Shutdown(ctx); err != nil {
			ps.tb.Errorf("Shutdown: %v", err)
		}
		if err := <-ps.done; !errors.Is(err, policy.ErrServerClosed) {
			ps.tb.Errorf("Serve: %v, want ErrServerClosed", err)
		}
	})
}

type client struct {
	tb testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dial(tb testing.TB, addr string) *client {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return &client{tb: tb, c: c, br: bufio.NewReader(c)}
}

// request renders a request as Postfix 3.7 sends it at RCPT.
func request(state, rcpt string) string {
	return "request=smtpd_access_policy\n" +
		"protocol_state=" + state + "\n" +
		"protocol_name=ESMTP\n" +
		"client_address=192.0.2.10\n" +
		"client_name=mail.shop.example\n" +
		"reverse_client_name=mail.shop.example\n" +
		"helo_name=mail.shop.example\n" +
		"sender=news@shop.example\n" +
		"recipient=" + rcpt + "\n" +
		"recipient_count=0\n" +
		"queue_id=\n" +
		"instance=1a2b.6567c0de.1234.0\n" +
		"size=0\n" +
		"etrn_domain=\n" +
		"stress=\n" +
		"sasl_method=\n" +
		"sasl_username=\n" +
		"sasl_sender=\n" +
		"ccert_subject=\n" +
		"ccert_issuer=\n" +
		"ccert_fingerprint=\n" +
		"ccert_pubkey_fingerprint=\n" +
		"encryption_protocol=TLSv1.3\n" +
		"encryption_cipher=TLS_AES_256_GCM_SHA384\n" +
		"encryption_keysize=256\n" +
		"policy_context=\n" +
		"server_address=192.0.2.1\n" +
		"server_port=25\n" +
		"compatibility_level=3.6\n" +
		"mail_version=3.7.11\n" +
		"\n"
}

// ask sends raw text and reads one reply: the action, after checking the
// reply is exactly "action=…\n\n".
func (c *client) ask(raw string) string {
	c.tb.Helper()
	if _, err := io.WriteString(c.c, raw); err != nil {
		c.tb.Fatalf("write: %v", err)
	}
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.tb.Fatalf("read reply: %v", err)
	}
	empty, err := c.br.ReadString('\n')
	if err != nil || empty != "\n" {
		c.tb.Fatalf("reply %q not followed by an empty line: %q %v", line, empty, err)
	}
	act, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "action=")
	if !ok {
		c.tb.Fatalf("reply %q is not an action", line)
	}
	return act
}

func TestEveryReasonOnOneConnection(t *testing.T) {
	g, _ := mustGuard(t)
	addr := startPolicy(t, g, policy.Options{})
	c := dial(t, addr)
	cases := []struct{ rcpt, want string }{
		{"ja@example.de", "DUNNO"},
		{"Ja@EXAMPLE.de", "DUNNO"},
		{"nein@example.de", "550 5.7.1 <nein@example.de>: no email consent (consent_denied)"},
		{"pending@example.de", "550 5.7.1 <pending@example.de>: no email consent (consent_pending)"},
		{"missing@example.de", "550 5.7.1 <missing@example.de>: no email consent (consent_missing)"},
		{"vielleicht@example.de", "550 5.7.1 <vielleicht@example.de>: no email consent (consent_missing)"},
		{"storage@example.de", "550 5.7.1 <storage@example.de>: no email consent (storage_denied)"},
		{"nobody@example.de", "550 5.7.1 <nobody@example.de>: no email consent (unknown_contact)"},
		{"not an address", "553 5.1.3 <not an address>: invalid recipient address"},
		{"", "553 5.1.3 <>: invalid recipient address"},
		{"ja@example.de", "DUNNO"},
	}
	for _, tc := range cases {
		if got := c.ask(request("RCPT", tc.rcpt)); got != tc.want {
			t.Errorf("recipient %q: action=%s, want %s", tc.rcpt, got, tc.want)
		}
	}
}

func TestOtherStatesAreDunno(t *testing.T) {
	g, _ := mustGuard(t)
	addr := startPolicy(t, g, policy.Options{})
	c := dial(t, addr)
	for _, state := range []string{"CONNECT", "EHLO", "HELO", "MAIL", "DATA", "END-OF-MESSAGE", "VRFY", "ETRN"} {
		// A denied recipient, so only the state can make this DUNNO.
		if got := c.ask(request(state, "nein@example.de")); got != "DUNNO" {
			t.Errorf("state %s: action=%s, want DUNNO", state, got)
		}
	}
	if got := c.ask("request=something_else\nprotocol_state=RCPT\nrecipient=nein@example.de\n\n"); got != "DUNNO" {
		t.Errorf("other request type: action=%s, want DUNNO", got)
	}
}

func TestShadowModeWarnsInsteadOfRejecting(t *testing.T) {
	g, redis := mustGuard(t)
	addr := startPolicy(t, g, policy.Options{Mode: "shadow"})
	c := dial(t, addr)
	if got := c.ask(request("RCPT", "ja@example.de")); got != "DUNNO" {
		t.Errorf("allowed in shadow mode: %s", got)
	}
	for rcpt, reason := range map[string]string{
		"nein@example.de": "550 5.7.1 <nein@example.de>: no email consent (consent_denied)",
		"x@localhost":     "553 5.1.3 <x@localhost>: invalid recipient address",
	} {
		got := c.ask(request("RCPT", rcpt))
		if !strings.HasPrefix(got, "WARN ") || !strings.Contains(got, reason) {
			t.Errorf("shadow %s: action=%s, want WARN … %s", rcpt, got, reason)
		}
	}
	redis.Stop(t)
	if got := c.ask(request("RCPT", "ja@example.de")); !strings.HasPrefix(got, "WARN ") || !strings.Contains(got, "consent store unavailable") {
		t.Errorf("shadow with the store down: action=%s, want WARN", got)
	}
}

func TestStoreDownDefers(t *testing.T) {
	g, redis := mustGuard(t)
	addr := startPolicy(t, g, policy.Options{})
	c := dial(t, addr)
	if got := c.ask(request("RCPT", "ja@example.de")); got != "DUNNO" {
		t.Fatalf("before: %s", got)
	}
	redis.Stop(t)
	for _, rcpt := range []string{"ja@example.de", "nein@example.de"} {
		if got := c.ask(request("RCPT", rcpt)); got != "DEFER_IF_PERMIT consent store unavailable" {
			t.Errorf("%s with the store down: action=%s", rcpt, got)
		}
	}
	// Other states do not need the store.
	if got := c.ask(request("MAIL", "")); got != "DUNNO" {
		t.Errorf("MAIL with the store down: %s", got)
	}
}

func TestGarbageAndUnknownAttributes(t *testing.T) {
	g, _ := mustGuard(t)
	addr := startPolicy(t, g, policy.Options{})
	c := dial(t, addr)
	raw := "request=smtpd_access_policy\r\n" + // CRLF tolerated
		"this line has no equals sign\n" +
		"=\n" +
		"x_future_attribute=some value=with equals\n" +
		"protocol_state=RCPT\n" +
		"recipient=nein@example.de\n" +
		"\n"
	if got := c.ask(raw); got != "550 5.7.1 <nein@example.de>: no email consent (consent_denied)" {
		t.Errorf("request with garbage: action=%s", got)
	}
	// Stray empty lines between requests are skipped.
	if got := c.ask("\n\n" + request("RCPT", "ja@example.de")); got != "DUNNO" {
		t.Errorf("after stray empty lines: action=%s", got)
	}
	// A reply never carries a line break, whatever the recipient holds.
	if got := c.ask("request=smtpd_access_policy\nprotocol_state=RCPT\nrecipient=a\x00b\x7f@example.de>\n\n"); strings.ContainsAny(got, "\x00\x7f\r\n") {
		t.Errorf("control characters echoed: %q", got)
	}

	// A line over the limit closes the connection (Postfix then uses its
	// default_action); the server keeps serving others.
	long := dial(t, addr)
	io.WriteString(long.c, "request=smtpd_access_policy\nrecipient="+strings.Repeat("a", policy.MaxLineBytes+10)+"\n\n")
	if _, err := long.br.ReadString('\n'); err == nil {
		t.Errorf("over-long line got a reply; want the connection closed")
	}
	// A request over the size limit, in short lines.
	big := dial(t, addr)
	io.WriteString(big.c, strings.Repeat("x_pad="+strings.Repeat("p", 1000)+"\n", policy.MaxRequestBytes/1000+2)+"\n")
	if _, err := big.br.ReadString('\n'); err == nil {
		t.Errorf("over-long request got a reply; want the connection closed")
	}
	if got := c.ask(request("RCPT", "ja@example.de")); got != "DUNNO" {
		t.Errorf("first connection after the others were closed: %s", got)
	}
}

func TestIdleConnectionIsClosed(t *testing.T) {
	g, _ := mustGuard(t)
	addr := startPolicy(t, g, policy.Options{IdleTimeout: 200 * time.Millisecond})
	c := dial(t, addr)
	if got := c.ask(request("RCPT", "ja@example.de")); got != "DUNNO" {
		t.Fatal(got)
	}
	// An idle connection is closed by the server (no timing assertion:
	// only that it happens before the client's own 30s deadline).
	if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection: read %v, want EOF", err)
	}
}

func TestShutdownWaitsForTheReplyAndClosesIdle(t *testing.T) {
	g, _ := mustGuard(t)
	s := policy.New(g, policy.Options{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	c := dial(t, l.Addr().String())
	if got := c.ask(request("RCPT", "nein@example.de")); !strings.HasPrefix(got, "550 ") {
		t.Fatal(got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, policy.ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if _, err := c.br.ReadByte(); !errors.Is(err, io.EOF) {
		t.Errorf("idle connection after Shutdown: %v, want EOF", err)
	}
}

// panicStore stands in for a store with a bug.
type panicStore struct{}

func (panicStore) Lookup(context.Context, []guard.Identifier) ([][]guard.Record, error) {
	panic("bug in the store")
}

func TestPanicClosesOnlyThatConnection(t *testing.T) {
	addr := startPolicy(t, guard.New(panicStore{}, guard.Options{}), policy.Options{})
	for i := 0; i < 2; i++ {
		c := dial(t, addr)
		io.WriteString(c.c, request("RCPT", "ja@example.de"))
		if line, err := c.br.ReadString('\n'); err == nil {
			t.Errorf("reply %q after a panic; want the connection closed (Postfix then uses default_action)", line)
		}
		// Requests that do not reach the store are still answered.
		c = dial(t, addr)
		if got := c.ask(request("MAIL", "")); got != "DUNNO" {
			t.Errorf("MAIL after a panic elsewhere: %s", got)
		}
	}
}
