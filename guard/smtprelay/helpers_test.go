package smtprelay_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/consentguard/consentguard/cache"
	"github.com/consentguard/consentguard/cache/redistest"
	"github.com/consentguard/consentguard/guard"
	"github.com/consentguard/consentguard/guard/smtprelay"
)

var hashKey = []byte("smtprelay-test-hash-key-32-bytes")

// people in the test store, by email address.
var people = []struct {
	id, email            string
	emailWord, storeWord string // consent words for email and storage
}{
	{"003000000000001", "ja@example.de", "Ja", "Ja"},
	{"003000000000002", "nein@example.de", "Nein", "Ja"},
	{"003000000000003", "pending@example.de", "Abfrage ausstehend", ""},
	{"003000000000004", "missing@example.de", "", ""},
	{"003000000000005", "storage@example.de", "Ja", "Nein"},
	{"003000000000006", "ja2@example.de", "Ja", ""},
	{"003000000000007", "ja3@example.de", "Ja", ""},
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
	// A generous timeout: the test machines are slow and noisy.
	return guard.New(st, guard.Options{Timeout: 2 * time.Second, Logger: testLogger(tb)}), srv
}

// sinkMsg is one message the sink received.
type sinkMsg struct {
	from string
	to   []string
	data []byte
	tls  bool
	user string
}

// sink is the upstream: a go-smtp server that records what arrives.
type sink struct {
	addr string
	srv  *smtp.Server

	mu   sync.Mutex
	msgs []sinkMsg
	// rejectRcpt answers RCPT for these addresses; dataErr answers DATA.
	rejectRcpt map[string]*smtp.SMTPError
	dataErr    *smtp.SMTPError
	users      map[string]string // AUTH PLAIN users; nil: no AUTH
	// discard: count messages instead of keeping them (benchmarks); with
	// commit set, wait that long before answering the end of data, as an
	// MTA does while it writes and fsyncs its queue file.
	discard bool
	commit  time.Duration
	count   atomic.Int64

	// transcript, with withSinkTranscript, is every byte the sink read.
	transcript *lockedBuffer
}

type sinkOpt func(*sink, *smtp.Server)

func withSinkTLS(cfg *tls.Config) sinkOpt {
	return func(_ *sink, s *smtp.Server) { s.TLSConfig = cfg }
}

// withSinkTranscript records what the upstream receives (commands and
// message data) in k.transcript.
func withSinkTranscript() sinkOpt {
	return func(k *sink, _ *smtp.Server) { k.transcript = &lockedBuffer{} }
}

// withSinkMaxMessageBytes sets the sink's message size limit.
func withSinkMaxMessageBytes(n int64) sinkOpt {
	return func(_ *sink, s *smtp.Server) { s.MaxMessageBytes = n }
}

func withSinkAuth(user, pass string) sinkOpt {
	return func(k *sink, s *smtp.Server) {
		k.users = map[string]string{user: pass}
	}
}

func startSink(tb testing.TB, opts ...sinkOpt) *sink {
	tb.Helper()
	k := &sink{rejectRcpt: map[string]*smtp.SMTPError{}}
	s := smtp.NewServer(k)
	s.Domain = "sink.test"
	s.AllowInsecureAuth = false
	s.ErrorLog = discardLog{}
	for _, o := range opts {
		o(k, s)
	}
	var l net.Listener
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	k.addr, k.srv = l.Addr().String(), s
	if k.transcript != nil {
		l = teeListener{l, k.transcript}
	}
	go s.Serve(l)
	tb.Cleanup(func() { s.Close() })
	return k
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// teeListener copies everything read from its connections to w.
type teeListener struct {
	net.Listener
	w io.Writer
}

func (l teeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return teeConn{c, l.w}, nil
}

type teeConn struct {
	net.Conn
	w io.Writer
}

func (c teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.w.Write(p[:n])
	return n, err
}

func (k *sink) messages() []sinkMsg {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]sinkMsg(nil), k.msgs...)
}

func (k *sink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	_, isTLS := c.TLSConnectionState()
	return &sinkSession{k: k, tls: isTLS}, nil
}

type sinkSession struct {
	k    *sink
	tls  bool
	user string
	msg  sinkMsg
}

func (s *sinkSession) AuthMechanisms() []string {
	if s.k.users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *sinkSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if p, ok := s.k.users[user]; ok && p == pass {
			s.user = user
			return nil
		}
		return &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "bad credentials"}
	}), nil
}

func (s *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.k.users != nil && s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "auth first"}
	}
	s.msg = sinkMsg{from: from, tls: s.tls, user: s.user}
	return nil
}

func (s *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.k.mu.Lock()
	e := s.k.rejectRcpt[to]
	s.k.mu.Unlock()
	if e != nil {
		return e
	}
	s.msg.to = append(s.msg.to, to)
	return nil
}

func (s *sinkSession) Data(r io.Reader) error {
	if s.k.discard {
		s.k.count.Add(1)
		_, err := io.Copy(io.Discard, r)
		time.Sleep(s.k.commit)
		return err
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	if s.k.dataErr != nil {
		return s.k.dataErr
	}
	s.msg.data = b
	s.k.msgs = append(s.k.msgs, s.msg)
	return nil
}

func (s *sinkSession) Reset()        { s.msg = sinkMsg{} }
func (s *sinkSession) Logout() error { return nil }

type discardLog struct{}

func (discardLog) Printf(string, ...any) {}
func (discardLog) Println(...any)        {}

// startRelay serves a relay on a loopback port; Shutdown on cleanup. The
// tweaks run before Serve.
func startRelay(tb testing.TB, g *guard.Guard, opts smtprelay.Options, tweaks ...func(*smtprelay.Server)) (string, *smtprelay.Server) {
	tb.Helper()
	if opts.Domain == "" {
		opts.Domain = "relay.test"
	}
	if opts.UpstreamTLS == "" {
		opts.UpstreamTLS = smtprelay.UpstreamNone
	}
	r := smtprelay.New(g, opts)
	for _, t := range tweaks {
		t(r)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- r.Serve(l) }()
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
		if err := <-served; !errors.Is(err, smtprelay.ErrServerClosed) {
			tb.Errorf("Serve returned %v, want ErrServerClosed", err)
		}
	})
	return l.Addr().String(), r
}

// transfers are the two ways the relay sends a message upstream: BDAT
// (RFC 3030) when the upstream offers CHUNKING and PIPELINING, as the
// go-smtp sink does, and DATA otherwise.
var transfers = []struct {
	name  string
	tweak func(*smtprelay.Server)
}{
	{"upstream=BDAT", func(*smtprelay.Server) {}},
	{"upstream=DATA", smtprelay.WithoutChunking},
}

// eachTransfer runs f once per transfer mode, as subtests.
func eachTransfer(t *testing.T, f func(t *testing.T, tweak func(*smtprelay.Server))) {
	for _, tr := range transfers {
		t.Run(tr.name, func(t *testing.T) { f(t, tr.tweak) })
	}
}

// conv is a scripted SMTP conversation over a raw connection.
type conv struct {
	tb testing.TB
	c  net.Conn
	tp *textproto.Conn
}

func dialConv(tb testing.TB, addr string) *conv {
	tb.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	cv := &conv{tb: tb, c: c, tp: textproto.NewConn(c)}
	cv.expect(220)
	return cv
}

// cmd sends one line and returns the reply code and text.
func (cv *conv) cmd(line string) (int, string) {
	cv.tb.Helper()
	if err := cv.tp.PrintfLine("%s", line); err != nil {
		cv.tb.Fatalf("send %q: %v", line, err)
	}
	return cv.read()
}

func (cv *conv) read() (int, string) {
	cv.tb.Helper()
	code, msg, err := cv.tp.ReadResponse(0)
	if err != nil {
		cv.tb.Fatalf("read reply: %v", err)
	}
	return code, msg
}

func (cv *conv) expect(code int) string {
	cv.tb.Helper()
	got, msg := cv.read()
	if got != code {
		cv.tb.Fatalf("reply %d %q, want %d", got, msg, code)
	}
	return msg
}

// send writes raw bytes (no CRLF added).
func (cv *conv) send(b string) {
	cv.tb.Helper()
	if _, err := cv.c.Write([]byte(b)); err != nil {
		cv.tb.Fatalf("write: %v", err)
	}
}

func (cv *conv) must(line string, code int) string {
	cv.tb.Helper()
	got, msg := cv.cmd(line)
	if got != code {
		cv.tb.Fatalf("%s: reply %d %q, want %d", line, got, msg, code)
	}
	return msg
}

// splitTrace cuts the relay's Received: header (and X-Consent-Guard, if
// any) off a relayed message and returns both parts.
func splitTrace(tb testing.TB, data []byte) (trace string, rest []byte) {
	tb.Helper()
	br := bufio.NewReader(bytes.NewReader(data))
	var b strings.Builder
	first := true
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			tb.Fatalf("message ends inside the trace header: %q", data)
		}
		isCont := strings.HasPrefix(line, "\t") || strings.HasPrefix(line, " ")
		if first && !strings.HasPrefix(line, "Received: ") {
			tb.Fatalf("message does not start with Received: %q", line)
		}
		if !first && !isCont && !strings.HasPrefix(line, "X-Consent-Guard: ") {
			rest = data[b.Len():]
			return b.String(), rest
		}
		first = false
		b.WriteString(line)
	}
}

// selfSigned returns a server config for 127.0.0.1/localhost and a client
// config that trusts it.
func selfSigned(tb testing.TB) (server, client *tls.Config) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "consentguard test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}}}
	client = &tls.Config{RootCAs: pool, ServerName: "localhost"}
	return server, client
}

// testLogger logs warnings and errors through tb.Log.
func testLogger(tb testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.tb.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
