package smtprelay

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/consentguard/consentguard/guard"
)

// backend is the smtp.Backend; a separate type keeps NewSession out of the
// Server's API.
type backend struct{ s *Server }

// NewSession implements smtp.Backend. go-smtp calls it on EHLO/HELO, and
// again after STARTTLS.
func (b backend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	s := b.s
	ss := &session{s: s, helo: traceHelo(c.Hostname()), tc: tracked(c.Conn())}
	if addr, ok := c.Conn().RemoteAddr().(*net.TCPAddr); ok {
		ss.ip = addr.IP.String()
	}
	_, ss.tls = c.TLSConnectionState()
	ss.log = s.log.With("client", ss.ip)
	return ss, nil
}

// session is one SMTP client conversation. go-smtp calls its methods from
// the connection's goroutine, except Logout, which may come from another
// goroutine when the connection is closed under a running command.
type session struct {
	s    *Server
	log  *slog.Logger
	tc   *trackedConn
	helo string // the client's EHLO name, cleaned for the Received: header
	ip   string
	tls  bool
	user string // authenticated user, "" if none

	from     string
	mailOpts *smtp.MailOptions
	attempts int // RCPT commands in this transaction
	accepted int // recipients accepted (guard and upstream)

	mu     sync.Mutex
	up     *upConn // upstream connection holding our transaction
	broken bool    // the upstream transaction was lost after a recipient was accepted
}

var _ smtp.AuthSession = (*session)(nil)

// AuthMechanisms implements smtp.AuthSession.
func (ss *session) AuthMechanisms() []string {
	if ss.s.users == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.s.users == nil {
		return nil, errAuthDisabled()
	}
	check := func(identity, user, pass string) error {
		if identity != "" && identity != user {
			return errAuthFailed()
		}
		if !ss.s.checkPassword(user, pass) {
			ss.log.Warn("authentication failed", "user", maskUser(user))
			return errAuthFailed()
		}
		ss.user = user
		ss.log = ss.log.With("user", maskUser(user))
		return nil
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return saslServer{sasl.NewPlainServer(check)}, nil
	case sasl.Login:
		return saslServer{&loginServer{check: func(u, p string) error { return check("", u, p) }}}, nil
	}
	return nil, errAuthMechanism()
}

// Mail implements smtp.Session.
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.users != nil && ss.user == "" {
		return errAuthRequired()
	}
	if strings.ContainsAny(from, "\r\n<> \t") {
		return errBadSender()
	}
	ss.resetTx()
	ss.from, ss.mailOpts = from, opts
	if ss.tc != nil {
		ss.tc.busy.Store(1)
	}
	return nil
}

// Rcpt implements smtp.Session: one guard decision per recipient, then the
// recipient is forwarded to the upstream, whose answer is passed back.
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.attempts++
	if ss.attempts > ss.s.opts.MaxRecipients {
		return errTooManyRecipients()
	}
	ctx := ss.s.ctx
	// An address that does not parse leaves id zero, which Check answers
	// with invalid_identifier (and ErrInvalidIdentifier) without asking the
	// store: the reason comes from guard on every path.
	id, _ := ss.s.g.Parse(guard.KindEmail, to)
	d, err := ss.s.g.Check(ctx, guard.Email, id)
	if e := rcptReply(to, d, err); e != nil {
		ss.s.metrics.rcpt(d.Reason)
		ss.log.Info("recipient refused", "rcpt", guard.Mask(guard.KindEmail, to), "reason", string(d.Reason), "reply", e.Code)
		return e
	}
	if e := ss.forward(ctx, to); e != nil {
		ss.s.metrics.upstreamRejected.Inc()
		ss.log.Info("recipient refused by upstream", "rcpt", guard.Mask(guard.KindEmail, to), "reply", e.Code)
		return e
	}
	ss.accepted++
	ss.s.metrics.rcpt(d.Reason)
	if ss.log.Enabled(ctx, slog.LevelDebug) {
		ss.log.Debug("recipient accepted", "rcpt", d.Identifier, "records", len(d.Records))
	}
	return nil
}

// forward sends RCPT upstream, opening the upstream transaction (RSET if
// needed, MAIL) with the first accepted recipient. A pooled connection that
// turns out dead is replaced once.
func (ss *session) forward(ctx context.Context, to string) *smtp.SMTPError {
	ss.mu.Lock()
	u := ss.up
	ss.mu.Unlock()
	if ss.broken {
		return errUpstreamLost()
	}
	rcpt := "RCPT TO:<" + to + ">"
	if u != nil {
		rs, err := u.exchange(rcpt)
		if err != nil {
			ss.dropUpstream(err)
			if ss.accepted > 0 {
				ss.broken = true
			}
			return errUpstreamLost()
		}
		if !rs[0].ok() {
			return upstreamReply(rs[0])
		}
		return nil
	}
	for attempt := 0; ; attempt++ {
		u, reused, err := ss.s.up.get(ctx)
		if err != nil {
			ss.log.Warn("upstream unavailable", "upstream", ss.s.opts.Upstream, "err", err)
			return errUpstreamUnavailable()
		}
		cmds := make([]string, 0, 3)
		if u.dirty {
			cmds = append(cmds, "RSET")
		}
		cmds = append(cmds, "MAIL FROM:<"+ss.from+">"+u.mailParams(ss.mailOpts), rcpt)
		u.dirty = true
		rs, err := u.exchange(cmds...)
		if err == nil && len(cmds) == 3 && !rs[0].ok() {
			err = errProtocol
		}
		if err != nil {
			u.close()
			if reused && attempt == 0 {
				continue // the idle connection went stale; dial afresh
			}
			ss.log.Warn("upstream failed", "upstream", ss.s.opts.Upstream, "err", err)
			return errUpstreamUnavailable()
		}
		mail, rc := rs[len(rs)-2], rs[len(rs)-1]
		if !mail.ok() {
			ss.s.up.put(u)
			ss.log.Info("sender refused by upstream", "reply", mail.code)
			return upstreamReply(mail)
		}
		ss.mu.Lock()
		ss.up = u
		ss.mu.Unlock()
		if !rc.ok() {
			return upstreamReply(rc)
		}
		return nil
	}
}

// takeUp takes the upstream connection out of the session: the caller
// owns it from now on.
func (ss *session) takeUp() *upConn {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	u := ss.up
	ss.up = nil
	return u
}

// dropUpstream closes the session's upstream connection after an error.
func (ss *session) dropUpstream(err error) {
	u := ss.takeUp()
	if u != nil {
		u.close()
		ss.log.Warn("upstream connection lost", "upstream", ss.s.opts.Upstream, "err", err)
	}
}

// Data implements smtp.Session: the message goes upstream with a Received:
// header in front, and the upstream's final reply comes back.
func (ss *session) Data(r io.Reader) error {
	u := ss.takeUp()
	// With BDAT, go-smtp runs Data in its own goroutine and a RSET may
	// reset the session meanwhile: read what is needed now.
	recipients, trace := ss.accepted, ss.traceHeader()
	m := ss.s.metrics
	if u == nil || ss.broken {
		if u != nil {
			u.close()
		}
		m.msgUnavailable.Inc()
		return errUpstreamLost()
	}
	var start time.Time
	debug := ss.log.Enabled(context.Background(), slog.LevelDebug)
	if debug {
		start = time.Now()
	}
	final, readErr, err := u.send(trace, r)
	switch {
	case readErr != nil:
		// u is closed: the upstream never saw an end of data.
		if errors.Is(readErr, smtp.ErrDataTooLarge) {
			m.tooLarge.Inc()
			ss.log.Info("message too large", "limit", ss.s.opts.MaxMessageBytes)
			return errTooLarge()
		}
		m.aborted.Inc()
		ss.log.Info("message transfer aborted by client", "err", readErr)
		return errAborted()
	case err != nil:
		u.close()
		m.msgUnavailable.Inc()
		ss.log.Warn("upstream lost during DATA", "upstream", ss.s.opts.Upstream, "err", err)
		return errUpstreamLost()
	}
	ss.s.up.put(u)
	if !final.ok() {
		m.msgRejected.Inc()
		ss.log.Info("message refused by upstream", "reply", final.code, "recipients", recipients)
		return upstreamReply(final)
	}
	m.relayed.Inc()
	if debug {
		ss.log.Debug("message relayed", "recipients", recipients, "took", time.Since(start))
	}
	return nil
}

// maskUser masks a user name that is an email address; others are
// shown (cut to a sane length).
func maskUser(u string) string {
	if strings.Contains(u, "@") {
		return guard.Mask(guard.KindEmail, u)
	}
	return printable(u, 64)
}

// traceHelo keeps the characters of an EHLO name that may stand in a
// Received: header, at most 255 of them.
func traceHelo(helo string) string {
	helo = strings.Map(func(r rune) rune {
		if r > ' ' && r < 0x7f && r != '(' && r != ')' && r != ';' {
			return r
		}
		return -1
	}, helo)
	if len(helo) > 255 {
		helo = helo[:255]
	}
	return helo
}

// traceHeader is the Received: header (RFC 5321 section 4.4) and, when
// configured, X-Consent-Guard.
func (ss *session) traceHeader() []byte {
	b := make([]byte, 0, 160+len(ss.helo)+len(ss.s.opts.Domain))
	b = append(b, "Received: from "...)
	b = append(b, ss.helo...)
	b = append(b, " (["...)
	b = append(b, ss.ip...)
	b = append(b, "])\r\n\tby "...)
	b = append(b, ss.s.opts.Domain...)
	b = append(b, " (consentguard) with ESMTP"...)
	if ss.tls {
		b = append(b, 'S')
	}
	if ss.user != "" {
		b = append(b, 'A')
	}
	b = append(b, ";\r\n\t"...)
	b = time.Now().AppendFormat(b, time.RFC1123Z)
	b = append(b, "\r\n"...)
	if ss.s.opts.AddConsentHeader {
		b = append(b, "X-Consent-Guard: email consent checked for every recipient by "...)
		b = append(b, ss.s.opts.Domain...)
		b = append(b, "\r\n"...)
	}
	return b
}

// Reset implements smtp.Session (RSET, a new EHLO, and after every DATA).
func (ss *session) Reset() { ss.resetTx() }

// resetTx ends the transaction; an upstream connection still inside one
// goes back to the pool marked for RSET.
func (ss *session) resetTx() {
	u := ss.takeUp()
	if u != nil {
		u.dirty = true
		ss.s.up.put(u)
	}
	ss.from, ss.mailOpts = "", nil
	ss.attempts, ss.accepted, ss.broken = 0, 0, false
	if ss.tc != nil {
		ss.tc.busy.Store(0)
	}
}

// Logout implements smtp.Session. It may run while Data is streaming (the
// connection was closed under it): the upstream connection is closed, not
// pooled.
func (ss *session) Logout() error {
	u := ss.takeUp()
	if u != nil {
		u.close()
	}
	if ss.tc != nil {
		ss.tc.busy.Store(0)
	}
	return nil
}
