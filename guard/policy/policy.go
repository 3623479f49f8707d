// Package policy is consentguard's Postfix SMTP access policy delegation
// server: the check_policy_service protocol of Postfix's
// SMTPD_POLICY_README.
//
// Postfix sends name=value lines ended by an empty line; the server answers
// one "action=…" line and an empty line, and keeps the connection for the
// next request. Unknown attributes are ignored. At protocol_state=RCPT the
// recipient is decided by (*guard.Guard).Check for the email channel:
//
//	allowed              action=DUNNO
//	denied               action=550 5.7.1 <rcpt>: no email consent (reason)
//	store unavailable    action=DEFER_IF_PERMIT consent store unavailable
//	invalid address      action=553 5.1.3 <rcpt>: invalid recipient address
//
// Every other protocol state gets DUNNO. The server never answers HOLD,
// DISCARD, FILTER or REDIRECT: those act on the whole message, for every
// recipient. In shadow mode rejects and defers become "action=WARN …", so
// Postfix only logs what would have been blocked.
package policy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/consentguard/consentguard/guard"
)

// Modes.
const (
	ModeEnforce = "enforce"
	ModeShadow  = "shadow"
)

// Limits of the protocol reader.
const (
	MaxLineBytes       = 8 << 10  // one name=value line
	MaxRequestBytes    = 64 << 10 // one request
	DefaultIdleTimeout = 10 * time.Minute
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("policy: server closed")

// Options configure a Server.
type Options struct {
	// Mode is "enforce" (default) or "shadow". Anything else is treated as
	// enforce, and logged.
	Mode       string
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are not registered
	// IdleTimeout closes a connection that sends no complete request for
	// this long. Postfix closes idle policy connections after
	// smtpd_policy_service_max_idle (300s) itself; default 10 minutes.
	IdleTimeout time.Duration
	// WriteTimeout bounds writing one reply; default 10s.
	WriteTimeout time.Duration
}

// Server answers Postfix policy requests. Create it with New; it is shaped
// like net/http.Server: Serve, then Shutdown.
type Server struct {
	g       *guard.Guard
	shadow  bool
	idle    time.Duration
	wto     time.Duration
	log     *slog.Logger
	metrics *metrics

	ctx    context.Context // cancelled when Shutdown gives up waiting
	cancel context.CancelFunc

	mu        sync.Mutex
	closing   bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	wg        sync.WaitGroup
}

// New returns a policy server that asks g about every recipient.
func New(g *guard.Guard, opts Options) *Server {
	s := &Server{
		g:         g,
		idle:      opts.IdleTimeout,
		wto:       opts.WriteTimeout,
		log:       opts.Logger,
		metrics:   newMetrics(opts.Registerer),
		listeners: map[net.Listener]struct{}{},
		conns:     map[net.Conn]struct{}{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.idle <= 0 {
		s.idle = DefaultIdleTimeout
	}
	if s.wto <= 0 {
		s.wto = 10 * time.Second
	}
	switch strings.ToLower(strings.TrimSpace(opts.Mode)) {
	case "", ModeEnforce:
	case ModeShadow:
		s.shadow = true
	default:
		s.log.Error("unknown policy mode; enforcing", "mode", opts.Mode)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

// Serve accepts connections on l until Shutdown; it then returns
// ErrServerClosed.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			// Like net/http: back off on temporary errors (EMFILE, …).
			var ne interface{ Temporary() bool }
			if errors.As(err, &ne) && ne.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("policy: accept failed; retrying", "err", err, "in", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// Shutdown stops accepting connections, lets requests in progress finish
// their reply, closes every connection between requests, and waits for
// them; when ctx ends first it closes the rest and returns ctx's error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.closing = true
	var err error
	for l := range s.listeners {
		if e := l.Close(); e != nil && err == nil {
			err = e
		}
	}
	// Wake every reader; a connection in the middle of a request finishes
	// it and then sees closing.
	for c := range s.conns {
		_ = c.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		s.cancel()
		return err
	case <-ctx.Done():
		s.cancel()
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}

// request holds the attributes the server uses; the rest are ignored.
type request struct {
	request   string
	state     string
	recipient string
	queueID   string
}

// errTooLong: a line or request over the limits; the connection is closed.
var errTooLong = errors.New("policy: request too long")

func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	defer func() {
		if p := recover(); p != nil {
			s.metrics.errors.WithLabelValues("panic").Inc()
			s.log.Error("policy: panic serving connection", "panic", p, "client", c.RemoteAddr().String())
		}
	}()
	br := bufio.NewReaderSize(c, MaxLineBytes)
	out := make([]byte, 0, 512)
	for {
		s.mu.Lock()
		closing := s.closing
		if !closing {
			_ = c.SetReadDeadline(time.Now().Add(s.idle))
		}
		s.mu.Unlock()
		if closing {
			return
		}
		req, err := readRequest(br)
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
			case errors.Is(err, errTooLong):
				s.metrics.errors.WithLabelValues("too_long").Inc()
				s.log.Warn("policy: request over the size limit; closing connection", "client", c.RemoteAddr().String())
			case errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrUnexpectedEOF):
			default:
				var ne net.Error
				if !(errors.As(err, &ne) && ne.Timeout()) {
					s.log.Warn("policy: read failed", "err", err)
				}
			}
			return
		}
		act := s.answer(req)
		out = append(out[:0], "action="...)
		out = append(out, act...)
		out = append(out, "\n\n"...)
		_ = c.SetWriteDeadline(time.Now().Add(s.wto))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

// readRequest reads name=value lines up to the empty line. Lines without
// "=" are ignored like unknown attributes; a trailing CR is tolerated.
func readRequest(br *bufio.Reader) (request, error) {
	var req request
	total, lines := 0, 0
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return req, errTooLong
		}
		if err != nil {
			if err == io.EOF && (len(line) > 0 || lines > 0) {
				err = io.ErrUnexpectedEOF
			}
			return req, err
		}
		total += len(line)
		if total > MaxRequestBytes {
			return req, errTooLong
		}
		line = bytes.TrimSuffix(bytes.TrimSuffix(line, []byte{'\n'}), []byte{'\r'})
		if len(line) == 0 {
			if lines == 0 {
				continue // stray empty line between requests
			}
			return req, nil
		}
		lines++
		name, value, ok := bytes.Cut(line, []byte{'='})
		if !ok {
			continue
		}
		switch string(name) {
		case "request":
			req.request = string(value)
		case "protocol_state":
			req.state = string(value)
		case "recipient":
			req.recipient = string(value)
		case "queue_id":
			req.queueID = string(value)
		}
	}
}

// answer decides one request.
func (s *Server) answer(req request) string {
	if req.request != "smtpd_access_policy" || !strings.EqualFold(req.state, "RCPT") {
		s.metrics.requests.WithLabelValues("other_state").Inc()
		return "DUNNO"
	}
	// A recipient that does not parse leaves id zero, which Check answers
	// with invalid_identifier (and ErrInvalidIdentifier) without asking the
	// store: the reason comes from guard on every path.
	id, _ := s.g.Parse(guard.KindEmail, req.recipient)
	d, err := s.g.Check(s.ctx, guard.Email, id)
	act := action(s.shadow, req.recipient, d, err)
	result := string(d.Reason)
	s.metrics.requests.WithLabelValues(result).Inc()
	if act != "DUNNO" {
		s.log.Info("policy: recipient refused", "rcpt", guard.Mask(guard.KindEmail, req.recipient),
			"reason", result, "shadow", s.shadow, "queue_id", printable(req.queueID, 64))
	}
	return act
}

// action maps one guard answer to the Postfix action. It is the only place
// where guard errors and decisions become policy replies.
func action(shadow bool, rcpt string, d guard.Decision, err error) string {
	var act string
	switch {
	case err == nil && d.Allowed:
		return "DUNNO"
	case errors.Is(err, guard.ErrInvalidIdentifier):
		act = "553 5.1.3 " + bracket(rcpt) + ": invalid recipient address"
	case err != nil:
		// ErrUnavailable and anything unexpected: fail closed, temporarily.
		act = "DEFER_IF_PERMIT consent store unavailable"
	default:
		act = "550 5.7.1 " + bracket(rcpt) + ": no email consent (" + string(d.Reason) + ")"
	}
	if shadow {
		return "WARN consentguard shadow mode, would answer: " + act
	}
	return act
}

// angles drops angle brackets from an address put between them.
var angles = strings.NewReplacer("<", "", ">", "")

// bracket renders the recipient for a reply: "<addr>", with anything that
// could break the action line removed. The reply goes to the client that
// sent the address, so it is not masked.
func bracket(addr string) string {
	return "<" + angles.Replace(printable(addr, 320)) + ">"
}

// printable keeps printable characters and cuts s to at most n bytes.
func printable(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return -1
	}, s)
	if len(s) > n {
		s = strings.ToValidUTF8(s[:n], "")
	}
	return strings.TrimSpace(s)
}

type metrics struct {
	requests *prometheus.CounterVec
	errors   *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "policy", Name: "requests_total",
			Help: "Policy requests by result: the guard's reason code, invalid_identifier, store_unavailable, or other_state.",
		}, []string{"result"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "consentguard", Subsystem: "policy", Name: "errors_total",
			Help: "Connections closed on a protocol error, by kind.",
		}, []string{"kind"}),
	}
	if reg != nil {
		m.requests = register(reg, m.requests)
		m.errors = register(reg, m.errors)
	}
	return m
}

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
