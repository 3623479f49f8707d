package smtprelay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/consentguard/consentguard/guard"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("smtprelay: server closed")

// Defaults for zero Options fields.
const (
	DefaultMaxMessageBytes = 32 << 20
	DefaultMaxRecipients   = 100 // RFC 5321 section 4.5.3.1.8: at least 100
	DefaultReadTimeout     = 5 * time.Minute
	DefaultWriteTimeout    = time.Minute
	DefaultUpstreamTimeout = 2 * time.Minute
)

// Options configure a Server.
type Options struct {
	// Upstream is the host:port every accepted message is relayed to.
	Upstream string
	// UpstreamTLS is "starttls" (STARTTLS when offered; the default),
	// "require" (refuse an upstream without STARTTLS), "none" or "tls"
	// (implicit TLS).
	UpstreamTLS string
	// UpstreamUser and UpstreamPassword, when set, are sent with AUTH PLAIN
	// (or LOGIN when only that is offered). Never over an unencrypted
	// connection unless UpstreamTLS is "none".
	UpstreamUser, UpstreamPassword string
	// UpstreamTLSConfig verifies the upstream; nil means the system roots
	// and the host name of Upstream.
	UpstreamTLSConfig *tls.Config
	// UpstreamTimeout bounds dialling and every upstream command.
	UpstreamTimeout time.Duration

	// Domain is our name in the greeting, EHLO and Received: header;
	// default the host name.
	Domain string
	// TLS, when set, offers STARTTLS to clients. AUTH is then only
	// offered inside TLS.
	TLS *tls.Config
	// Users, when not empty, requires AUTH (PLAIN or LOGIN) before MAIL:
	// user name → password hash, bcrypt ("$2b$12$…", as htpasswd -B
	// writes it) or argon2id in the PHC string format
	// ("$argon2id$v=19$m=65536,t=3,p=2$<salt>$<hash>", base64 without
	// padding). A hash that cannot be used is logged at New and never
	// matches; argon2id parameters beyond m=1 GiB, t=16, p=16 count as
	// unusable.
	Users map[string]string

	MaxMessageBytes int64 // default 32 MiB
	MaxRecipients   int   // RCPT commands per message, default 100
	ReadTimeout     time.Duration
	WriteTimeout    time.Duration
	// AddConsentHeader adds an X-Consent-Guard: header to relayed mail.
	AddConsentHeader bool

	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
}

// Server is the SMTP relay. Create it with New; it is shaped like
// net/http.Server: Serve, then Shutdown.
type Server struct {
	g     *guard.Guard
	opts  Options
	log   *slog.Logger
	srv   *smtp.Server
	up    *upstream
	users map[string]credential
	dummy credential
	// argonSlots bounds concurrent argon2id derivations (memory).
	argonSlots chan struct{}
	metrics    *metrics

	ctx    context.Context // cancelled when Shutdown gives up waiting
	cancel context.CancelFunc

	closing atomic.Bool
	mu      sync.Mutex
	conns   map[*trackedConn]struct{}
}

// New returns a relay that asks g about every recipient.
func New(g *guard.Guard, opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Domain == "" {
		opts.Domain, _ = os.Hostname()
		if opts.Domain == "" {
			opts.Domain = "localhost"
		}
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = DefaultMaxMessageBytes
	}
	if opts.MaxRecipients <= 0 {
		opts.MaxRecipients = DefaultMaxRecipients
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = DefaultWriteTimeout
	}
	if opts.UpstreamTimeout <= 0 {
		opts.UpstreamTimeout = DefaultUpstreamTimeout
	}
	mode := strings.ToLower(strings.TrimSpace(opts.UpstreamTLS))
	if mode == "" {
		mode = UpstreamStartTLS
	}
	tlsCfg := opts.UpstreamTLSConfig.Clone()
	if tlsCfg == nil {
		tlsCfg = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if tlsCfg.ServerName == "" {
		tlsCfg.ServerName, _, _ = net.SplitHostPort(opts.Upstream)
	}

	s := &Server{
		g:     g,
		opts:  opts,
		log:   opts.Logger,
		conns: map[*trackedConn]struct{}{},
		up: &upstream{
			addr:      opts.Upstream,
			mode:      mode,
			tlsConfig: tlsCfg,
			user:      opts.UpstreamUser,
			pass:      opts.UpstreamPassword,
			name:      opts.Domain,
			timeout:   opts.UpstreamTimeout,
			maxIdle:   16,
			idleFor:   30 * time.Second,
		},
		metrics: newMetrics(opts.Registerer),
	}
	switch mode {
	case UpstreamStartTLS, UpstreamRequire, UpstreamNone, UpstreamTLS:
	default:
		// Unknown: be strict rather than send mail in clear.
		s.log.Error("unknown upstream TLS mode; using require", "mode", opts.UpstreamTLS)
		s.up.mode = UpstreamRequire
	}
	if len(opts.Users) > 0 {
		s.users = make(map[string]credential, len(opts.Users))
		for u, h := range opts.Users {
			c := parseCredential(strings.TrimSpace(h))
			if c.err != nil {
				s.log.Error("unusable password hash; the user cannot log in", "user", maskUser(u), "err", c.err)
			}
			s.users[u] = c
		}
		s.dummy = dummyCredential(s.users)
		s.argonSlots = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)))
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())

	srv := smtp.NewServer(backend{s})
	srv.Domain = opts.Domain
	srv.TLSConfig = opts.TLS
	srv.AllowInsecureAuth = opts.TLS == nil
	srv.MaxMessageBytes = opts.MaxMessageBytes
	srv.MaxRecipients = opts.MaxRecipients
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	srv.ErrorLog = errorLog{s.log}
	s.srv = srv
	return s
}

// Serve accepts connections on l until Shutdown; it then returns
// ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	if s.closing.Load() {
		l.Close()
		return ErrServerClosed
	}
	err := s.srv.Serve(&trackingListener{Listener: l, s: s})
	if s.closing.Load() {
		return ErrServerClosed
	}
	return err
}

// Shutdown stops accepting connections, closes idle ones (no transaction
// in progress) as they become idle, and waits until all are gone or ctx
// ends; then it closes the rest and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	if s.closing.Swap(true) {
		return ErrServerClosed
	}
	defer s.up.close()
	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(context.Background()) }()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.closeConns(false)
		select {
		case err := <-done:
			s.cancel()
			return err
		case <-ctx.Done():
			s.cancel()
			s.closeConns(true)
			return ctx.Err()
		case <-tick.C:
		}
	}
}

func (s *Server) closeConns(all bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		if all || c.busy.Load() == 0 {
			c.Conn.Close()
		}
	}
}

// trackingListener remembers accepted connections so that Shutdown can
// close the idle ones (go-smtp waits for clients to quit on their own).
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	l.s.conns[tc] = struct{}{}
	l.s.mu.Unlock()
	if l.s.closing.Load() {
		tc.Close()
	}
	return tc, nil
}

type trackedConn struct {
	net.Conn
	s    *Server
	busy atomic.Int32 // 1 while a mail transaction is open
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// tracked finds our wrapper under a (possibly TLS) connection.
func tracked(nc net.Conn) *trackedConn {
	if tc, ok := nc.(*tls.Conn); ok {
		nc = tc.NetConn()
	}
	c, _ := nc.(*trackedConn)
	return c
}

// errorLog sends go-smtp's internal messages (connection errors, recovered
// panics) to slog.
type errorLog struct{ log *slog.Logger }

func (e errorLog) Printf(format string, v ...any) {
	e.log.Warn("smtp server: " + fmt.Sprintf(format, v...))
}

func (e errorLog) Println(v ...any) { e.log.Warn("smtp server: " + fmt.Sprint(v...)) }

// metrics of the relay. The counters for known results are resolved once,
// so that counting is an atomic add, not a label lookup.
type metrics struct {
	rcpts    *prometheus.CounterVec
	messages *prometheus.CounterVec

	rcptBy           map[guard.Reason]prometheus.Counter // guard reasons
	upstreamRejected prometheus.Counter                  // recipient refused by the upstream

	relayed, msgRejected, msgUnavailable, tooLarge, aborted prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		rcpts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "smtp", Name: "recipients_total",
			Help: "RCPT TO commands by result: the guard's reason code, invalid_identifier, store_unavailable, or upstream_rejected.",
		}, []string{"result"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "smtp", Name: "messages_total",
			Help: "Messages by result: relayed, upstream_rejected, upstream_unavailable, too_large, aborted.",
		}, []string{"result"}),
	}
	if reg != nil {
		m.rcpts = register(reg, m.rcpts)
		m.messages = register(reg, m.messages)
	}
	m.rcptBy = map[guard.Reason]prometheus.Counter{}
	for _, r := range []guard.Reason{
		guard.ReasonGranted, guard.ReasonDenied, guard.ReasonPending, guard.ReasonMissing,
		guard.ReasonStorageDenied, guard.ReasonUnknownContact, guard.ReasonStoreUnavailable,
		guard.ReasonInvalidIdentifier,
	} {
		m.rcptBy[r] = m.rcpts.WithLabelValues(string(r))
	}
	m.upstreamRejected = m.rcpts.WithLabelValues("upstream_rejected")
	m.relayed = m.messages.WithLabelValues("relayed")
	m.msgRejected = m.messages.WithLabelValues("upstream_rejected")
	m.msgUnavailable = m.messages.WithLabelValues("upstream_unavailable")
	m.tooLarge = m.messages.WithLabelValues("too_large")
	m.aborted = m.messages.WithLabelValues("aborted")
	return m
}

// rcpt counts one recipient under the guard's reason.
func (m *metrics) rcpt(r guard.Reason) {
	if c, ok := m.rcptBy[r]; ok {
		c.Inc()
		return
	}
	m.rcpts.WithLabelValues(string(r)).Inc()
}

// register registers c, or reuses the collector already registered under
// the same name (two relays sharing one registry).
func register(reg prometheus.Registerer, c *prometheus.CounterVec) *prometheus.CounterVec {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(*prometheus.CounterVec); ok {
				return old
			}
		}
	}
	return c
}
