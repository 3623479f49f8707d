package smtprelay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Upstream TLS modes (Options.UpstreamTLS).
const (
	UpstreamStartTLS = "starttls" // STARTTLS when the upstream offers it (default)
	UpstreamRequire  = "require"  // STARTTLS, refuse an upstream that does not offer it
	UpstreamNone     = "none"     // plain text
	UpstreamTLS      = "tls"      // implicit TLS (port 465)
)

// reply is one SMTP reply from the upstream.
type reply struct {
	code int
	enh  smtp.EnhancedCode
	msg  string
}

func (r reply) ok() bool { return r.code/100 == 2 }

// errProtocol: the upstream said something we cannot continue from.
var errProtocol = errors.New("smtprelay: upstream protocol error")

// upConn is one connection to the upstream server, set up (greeting, EHLO,
// STARTTLS, AUTH) and ready for transactions. It is used by one session at
// a time; the pool hands it out.
type upConn struct {
	nc      net.Conn
	tr      *textproto.Reader
	bw      *bufio.Writer
	ext     map[string]string
	timeout time.Duration
	// pipelining and chunking: the upstream offers PIPELINING (RFC 2920)
	// and CHUNKING (RFC 3030); with both, messages go out as BDAT.
	pipelining, chunking bool
	// dirty: a transaction was started and not finished; RSET before the
	// next MAIL.
	dirty bool
	used  time.Time
}

func newUpConn(nc net.Conn, timeout time.Duration) *upConn {
	return &upConn{
		nc:      nc,
		tr:      textproto.NewReader(bufio.NewReaderSize(nc, 4096)),
		bw:      bufio.NewWriterSize(nc, 32*1024),
		timeout: timeout,
	}
}

func (u *upConn) has(ext string) bool { _, ok := u.ext[ext]; return ok }

func (u *upConn) deadline() { _ = u.nc.SetDeadline(time.Now().Add(u.timeout)) }

func (u *upConn) close() { _ = u.nc.Close() }

// quit says goodbye politely, without waiting long for the answer.
func (u *upConn) quit() {
	_ = u.nc.SetDeadline(time.Now().Add(time.Second))
	if _, err := u.bw.WriteString("QUIT\r\n"); err == nil && u.bw.Flush() == nil {
		_, _ = u.read()
	}
	u.close()
}

// read reads one (possibly multi-line) reply.
func (u *upConn) read() (reply, error) {
	code, msg, err := u.tr.ReadResponse(0)
	if err != nil {
		var te *textproto.Error
		if errors.As(err, &te) {
			return reply{}, fmt.Errorf("%w: %v", errProtocol, err)
		}
		return reply{}, err
	}
	return parseReply(code, msg), nil
}

// parseReply splits the enhanced status code (RFC 2034) off the text.
func parseReply(code int, msg string) reply {
	r := reply{code: code, msg: msg}
	first, rest, _ := strings.Cut(msg, " ")
	var enh smtp.EnhancedCode
	for i := range enh {
		p := first
		if i < len(enh)-1 {
			var ok bool
			if p, first, ok = strings.Cut(first, "."); !ok {
				return r
			}
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 999 {
			return r
		}
		enh[i] = n
	}
	r.enh = enh
	if strings.IndexByte(rest, '\n') >= 0 {
		prefix, _, _ := strings.Cut(msg, " ")
		r.msg = strings.ReplaceAll(rest, "\n"+prefix+" ", "\n")
	} else {
		r.msg = rest
	}
	return r
}

// exchange sends the commands and returns one reply per command. With
// PIPELINING (RFC 2920) all commands go out in one write; without, one at a
// time. An error means the connection is unusable.
func (u *upConn) exchange(cmds ...string) ([]reply, error) {
	u.deadline()
	out := make([]reply, 0, len(cmds))
	pipe := u.pipelining
	for i, c := range cmds {
		u.bw.WriteString(c)
		u.bw.WriteString("\r\n")
		if pipe && i < len(cmds)-1 {
			continue
		}
		if err := u.bw.Flush(); err != nil {
			return nil, err
		}
		for len(out) <= i {
			r, err := u.read()
			if err != nil {
				return nil, err
			}
			out = append(out, r)
		}
	}
	return out, nil
}

// hello sends EHLO, falling back to HELO, and records the extensions. It
// runs on a fresh upConn (pipelining and chunking still false).
func (u *upConn) hello(name string) error {
	rs, err := u.exchange("EHLO " + name)
	if err != nil {
		return err
	}
	u.ext = map[string]string{}
	if r := rs[0]; r.ok() {
		lines := strings.Split(r.msg, "\n")
		for _, l := range lines[1:] {
			k, v, _ := strings.Cut(strings.TrimSpace(l), " ")
			u.ext[strings.ToUpper(k)] = v
		}
		u.pipelining, u.chunking = u.has("PIPELINING"), u.has("CHUNKING")
		return nil
	}
	if rs, err = u.exchange("HELO " + name); err != nil {
		return err
	}
	if r := rs[0]; !r.ok() {
		return fmt.Errorf("%w: HELO answered %d", errProtocol, r.code)
	}
	return nil
}

// upstream dials and sets up connections to the upstream server and keeps a
// few idle ones for reuse.
type upstream struct {
	addr       string
	mode       string
	tlsConfig  *tls.Config
	user, pass string
	name       string // our EHLO name
	timeout    time.Duration
	noChunking bool // never use BDAT (tests of the DATA path)
	maxIdle    int
	idleFor    time.Duration

	mu     sync.Mutex
	idle   []*upConn
	closed bool
}

// get returns an idle connection or dials a new one. reused says which.
func (p *upstream) get(ctx context.Context) (u *upConn, reused bool, err error) {
	p.mu.Lock()
	for len(p.idle) > 0 {
		u = p.idle[len(p.idle)-1]
		p.idle = p.idle[:len(p.idle)-1]
		if time.Since(u.used) < p.idleFor {
			p.mu.Unlock()
			return u, true, nil
		}
		go u.quit()
	}
	p.mu.Unlock()
	u, err = p.dial(ctx)
	return u, false, err
}

// put returns a connection for reuse.
func (p *upstream) put(u *upConn) {
	u.used = time.Now()
	_ = u.nc.SetDeadline(time.Time{})
	p.mu.Lock()
	if p.closed || len(p.idle) >= p.maxIdle {
		p.mu.Unlock()
		go u.quit()
		return
	}
	p.idle = append(p.idle, u)
	p.mu.Unlock()
}

// close quits every idle connection; later puts quit theirs.
func (p *upstream) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	// Say QUIT to all at once: each waits up to a second for its answer,
	// and one after another that would hold shutdown up to a second per
	// pooled connection.
	var wg sync.WaitGroup
	for _, u := range idle {
		wg.Go(u.quit)
	}
	wg.Wait()
}

func (p *upstream) dial(ctx context.Context) (*upConn, error) {
	d := &net.Dialer{Timeout: p.timeout}
	var (
		nc  net.Conn
		err error
	)
	if p.mode == UpstreamTLS {
		nc, err = (&tls.Dialer{NetDialer: d, Config: p.tlsConfig}).DialContext(ctx, "tcp", p.addr)
	} else {
		nc, err = d.DialContext(ctx, "tcp", p.addr)
	}
	if err != nil {
		return nil, err
	}
	u, err := p.setup(ctx, nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if p.noChunking {
		u.chunking = false
	}
	return u, nil
}

// setup runs greeting, EHLO, STARTTLS and AUTH on a fresh connection.
func (p *upstream) setup(ctx context.Context, nc net.Conn) (*upConn, error) {
	u := newUpConn(nc, p.timeout)
	u.deadline()
	greet, err := u.read()
	if err != nil {
		return nil, err
	}
	if greet.code != 220 {
		return nil, fmt.Errorf("%w: greeting %d", errProtocol, greet.code)
	}
	if err := u.hello(p.name); err != nil {
		return nil, err
	}
	_, isTLS := nc.(*tls.Conn)
	if !isTLS && (p.mode == UpstreamStartTLS || p.mode == UpstreamRequire) {
		switch {
		case u.has("STARTTLS"):
			rs, err := u.exchange("STARTTLS")
			if err != nil {
				return nil, err
			}
			if rs[0].code != 220 {
				return nil, fmt.Errorf("%w: STARTTLS answered %d", errProtocol, rs[0].code)
			}
			tc := tls.Client(nc, p.tlsConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				return nil, fmt.Errorf("upstream TLS handshake: %w", err)
			}
			u = newUpConn(tc, p.timeout)
			if err := u.hello(p.name); err != nil {
				return nil, err
			}
			isTLS = true
		case p.mode == UpstreamRequire:
			return nil, fmt.Errorf("%w: upstream does not offer STARTTLS (upstream_tls: require)", errProtocol)
		}
	}
	if p.user != "" {
		if !isTLS && p.mode != UpstreamNone {
			return nil, fmt.Errorf("%w: not sending upstream credentials without TLS (set upstream TLS mode none to allow)", errProtocol)
		}
		if err := u.auth(p.user, p.pass); err != nil {
			return nil, err
		}
	}
	return u, nil
}

// auth runs AUTH PLAIN, or LOGIN when only that is offered.
func (u *upConn) auth(user, pass string) error {
	mechs := strings.Fields(strings.ToUpper(u.ext["AUTH"]))
	var c sasl.Client
	for _, m := range mechs {
		if m == sasl.Plain {
			c = sasl.NewPlainClient("", user, pass)
			break
		}
		if m == sasl.Login {
			c = sasl.NewLoginClient(user, pass)
		}
	}
	if c == nil {
		return fmt.Errorf("%w: upstream offers neither AUTH PLAIN nor LOGIN", errProtocol)
	}
	mech, ir, err := c.Start()
	if err != nil {
		return err
	}
	cmd := "AUTH " + mech
	if ir != nil {
		if len(ir) == 0 {
			cmd += " ="
		} else {
			cmd += " " + base64.StdEncoding.EncodeToString(ir)
		}
	}
	for {
		rs, err := u.exchange(cmd)
		if err != nil {
			return err
		}
		switch r := rs[0]; r.code {
		case 235:
			return nil
		case 334:
			ch, err := base64.StdEncoding.DecodeString(strings.TrimSpace(r.msg))
			if err != nil {
				return fmt.Errorf("%w: bad AUTH challenge", errProtocol)
			}
			resp, err := c.Next(ch)
			if err != nil {
				_, _ = u.exchange("*")
				return err
			}
			cmd = base64.StdEncoding.EncodeToString(resp)
		default:
			return fmt.Errorf("%w: upstream AUTH %s failed: %d %d.%d.%d", errProtocol, mech, r.code, r.enh[0], r.enh[1], r.enh[2])
		}
	}
}

// traceAllowance is added to a declared SIZE for the header we prepend.
const traceAllowance = 512

// mailParams renders the MAIL FROM parameters the upstream understands.
func (u *upConn) mailParams(opts *smtp.MailOptions) string {
	if opts == nil {
		return ""
	}
	var b strings.Builder
	if opts.Body == smtp.Body8BitMIME && u.has("8BITMIME") {
		b.WriteString(" BODY=8BITMIME")
	}
	if opts.Size > 0 && u.has("SIZE") {
		// The client's estimate, plus room for our trace header.
		b.WriteString(" SIZE=")
		b.WriteString(strconv.FormatInt(opts.Size+traceAllowance, 10))
	}
	return b.String()
}

// bodyWriter is where a lineWriter puts its output: the connection's
// bufio.Writer (DATA) or a chunk buffer (BDAT).
type bodyWriter interface {
	io.Writer
	io.ByteWriter
	io.StringWriter
}

// lineWriter writes a message body with every line ended in CRLF: a bare
// CR or a bare LF is turned into CRLF, so the upstream sees exactly the
// lines the relay saw and can find no end-of-data marker inside the
// message. For DATA (stuff set) leading dots are doubled as well (RFC 5321
// section 4.5.2); BDAT (RFC 3030) sends the lines as they are. A message
// of CRLF lines passes unchanged.
type lineWriter struct {
	w     bodyWriter
	stuff bool
	bol   bool // at the beginning of a line
	cr    bool // a CR was seen and not yet written
}

func newLineWriter(w bodyWriter, stuff bool) *lineWriter {
	return &lineWriter{w: w, stuff: stuff, bol: true}
}

func (d *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if d.cr {
			d.cr = false
			d.w.WriteString("\r\n")
			d.bol = true
			if p[0] == '\n' {
				p = p[1:]
				continue
			}
		}
		if d.stuff && d.bol && p[0] == '.' {
			d.w.WriteByte('.')
		}
		// Copy a run of CRLF-ended lines in one go; stop before a line
		// that needs a dot, at a bare CR or LF, or at the end of p.
		run := 0
		for {
			q := p[run:]
			lf := bytes.IndexByte(q, '\n')
			line := q
			if lf >= 0 {
				line = q[:lf]
			}
			cr := bytes.IndexByte(line, '\r')
			switch {
			case lf > 0 && cr == lf-1:
				// A CRLF line.
				run += lf + 1
				d.bol = true
				if run < len(p) && (!d.stuff || p[run] != '.') {
					continue
				}
				d.w.Write(p[:run])
				p = p[run:]
			case cr >= 0:
				// A bare CR, or a CR at the end of p that the next Write
				// may follow with LF: the next round writes the CRLF.
				d.w.Write(p[:run+cr])
				d.cr = true
				p = p[run+cr+1:]
			case lf >= 0:
				// A bare LF.
				d.w.Write(p[:run+lf])
				d.w.WriteString("\r\n")
				d.bol = true
				p = p[run+lf+1:]
			default:
				// The rest of p starts a line that goes on in the next
				// Write.
				d.w.Write(p)
				if len(p) > run {
					d.bol = false
				}
				p = nil
			}
			break
		}
	}
	// bufio.Writer remembers a write error; Flush reports it.
	return n, nil
}

// finish ends the last line with CRLF if it has none.
func (d *lineWriter) finish() {
	if d.cr || !d.bol {
		d.w.WriteString("\r\n")
		d.cr, d.bol = false, true
	}
}

// chunk is a growable byte buffer for one BDAT chunk.
type chunk struct{ b []byte }

func (c *chunk) Write(p []byte) (int, error)       { c.b = append(c.b, p...); return len(p), nil }
func (c *chunk) WriteString(s string) (int, error) { c.b = append(c.b, s...); return len(s), nil }
func (c *chunk) WriteByte(b byte) error            { c.b = append(c.b, b); return nil }

// Message transfer buffers: the read buffer for the client's body and, for
// BDAT, the chunk being assembled. Pooled: a fresh 32 KiB per message was
// most of the relay's garbage.
const (
	readBufSize = 32 << 10
	chunkSize   = 64 << 10 // a BDAT chunk is sent once it holds this much
	// maxPendingChunks bounds the BDAT chunks sent before their replies are
	// read, so that neither side can block on a full socket buffer.
	maxPendingChunks = 8
)

var (
	readBufs = sync.Pool{New: func() any { b := make([]byte, readBufSize); return &b }}
	chunks   = sync.Pool{New: func() any { return &chunk{b: make([]byte, 0, chunkSize+2*readBufSize)} }}
)

// send streams one message: the trace header, then the body, as BDAT
// chunks when the upstream offers CHUNKING and PIPELINING (one round trip
// for a message that fits in a chunk) or else as DATA with the final dot.
// A read error from body (message too large, client gone) closes the
// connection without ending the message, so the upstream discards the
// partial message; it is returned as readErr. Any other error is the
// upstream's.
func (u *upConn) send(header []byte, body io.Reader) (final reply, readErr, err error) {
	if u.chunking && u.pipelining {
		return u.sendBDAT(header, body)
	}
	return u.sendDATA(header, body)
}

// sendDATA sends the message with DATA (RFC 5321 section 4.5.2).
func (u *upConn) sendDATA(header []byte, body io.Reader) (final reply, readErr, err error) {
	rs, err := u.exchange("DATA")
	if err != nil {
		return reply{}, nil, err
	}
	if rs[0].code != 354 {
		// The transaction stays open upstream: RSET before reuse.
		return rs[0], nil, nil
	}
	_ = u.nc.SetDeadline(time.Time{})
	lw := newLineWriter(u.bw, true)
	lw.Write(header)
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	for {
		_ = u.nc.SetWriteDeadline(time.Now().Add(u.timeout))
		n, rerr := body.Read(buf)
		if n > 0 {
			lw.Write(buf[:n])
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			u.close()
			return reply{}, rerr, nil
		}
	}
	u.deadline()
	lw.finish()
	u.bw.WriteString(".\r\n")
	if err := u.bw.Flush(); err != nil {
		return reply{}, nil, err
	}
	r, err := u.read()
	u.dirty = false // accepted or refused, the transaction is over
	return r, nil, err
}

// sendBDAT sends the message in BDAT chunks (RFC 3030), pipelined: a
// chunk's reply is read only when maxPendingChunks are outstanding or at
// the end. The first failed chunk's reply is the final reply; no more
// chunks follow it, and the connection gets a RSET before its next
// transaction.
func (u *upConn) sendBDAT(header []byte, body io.Reader) (final reply, readErr, err error) {
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	c := chunks.Get().(*chunk)
	defer func() {
		if cap(c.b) <= chunkSize+2*readBufSize {
			c.b = c.b[:0]
			chunks.Put(c)
		}
	}()
	c.b = c.b[:0]
	lw := newLineWriter(c, false)
	lw.Write(header)
	pending := 0
	// collect reads n outstanding replies; failed is the first non-2xx.
	var failed *reply
	collect := func(n int) error {
		if err := u.bw.Flush(); err != nil {
			return err
		}
		for ; n > 0; n-- {
			r, err := u.read()
			if err != nil {
				return err
			}
			pending--
			final = r
			if !r.ok() && failed == nil {
				failed = &r
			}
		}
		return nil
	}
	_ = u.nc.SetDeadline(time.Time{})
	for {
		n, rerr := body.Read(buf)
		if n > 0 {
			lw.Write(buf[:n])
		}
		if rerr != nil && rerr != io.EOF {
			u.close()
			return reply{}, rerr, nil
		}
		last := rerr == io.EOF
		if last {
			lw.finish()
		}
		if !last && len(c.b) < chunkSize {
			continue
		}
		if pending >= maxPendingChunks {
			u.deadline()
			if err := collect(1); err != nil {
				return reply{}, nil, err
			}
		}
		if failed != nil {
			// The upstream refused a chunk: the transaction has failed.
			// The rest of the body is left for go-smtp to discard.
			break
		}
		_ = u.nc.SetWriteDeadline(time.Now().Add(u.timeout))
		u.bdat(c.b, last)
		pending++
		c.b = c.b[:0]
		if last {
			break
		}
	}
	u.deadline()
	if err := collect(pending); err != nil {
		return reply{}, nil, err
	}
	if failed != nil {
		u.dirty = true // RFC 3030: RSET after a failed BDAT
		return *failed, nil, nil
	}
	u.dirty = false
	return final, nil, nil
}

// bdat writes one BDAT command and its chunk.
func (u *upConn) bdat(b []byte, last bool) {
	var num [24]byte
	u.bw.WriteString("BDAT ")
	u.bw.Write(strconv.AppendInt(num[:0], int64(len(b)), 10))
	if last {
		u.bw.WriteString(" LAST")
	}
	u.bw.WriteString("\r\n")
	u.bw.Write(b)
}
