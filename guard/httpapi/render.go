package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"unicode/utf8"

	"github.com/consentguard/consentguard/guard"
	"github.com/gin-gonic/gin"
)

// Errors of the HTTP layer; statusFor maps them with the guard's.
var (
	errBadRequest      = errors.New("bad request")
	errUnauthenticated = errors.New("missing or invalid API key")
	errForbidden       = errors.New("API key lacks the scope for this request")
	errNoRoute         = errors.New("no such route")
	errNoMethod        = errors.New("method not allowed")
	errTooLarge        = errors.New("request body too large")
	errInternal        = errors.New("internal error")
)

// statusFor is the one place that maps an outcome to an HTTP status. A
// decision, allowed or denied, is 200; a request the guard cannot read is
// 400; anything unrecognised is treated as the store failing: 503, which
// callers must treat as a denial (the body says "allowed":false).
func statusFor(err error) int {
	switch {
	case err == nil:
		return http.StatusOK
	case errors.Is(err, guard.ErrInvalidIdentifier), errors.Is(err, guard.ErrInvalidChannel), errors.Is(err, errBadRequest):
		return http.StatusBadRequest
	case errors.Is(err, errUnauthenticated):
		return http.StatusUnauthorized
	case errors.Is(err, errForbidden):
		return http.StatusForbidden
	case errors.Is(err, guard.ErrNotFound), errors.Is(err, errNoRoute):
		return http.StatusNotFound
	case errors.Is(err, errNoMethod):
		return http.StatusMethodNotAllowed
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errInternal):
		return http.StatusInternalServerError
	}
	return http.StatusServiceUnavailable // guard.ErrUnavailable and any store error
}

// publicError is the reason and text an error may show on the wire. Guard
// parse errors are safe (they mask the identifier); store errors are
// replaced by a fixed text.
func publicError(err error) (guard.Reason, string) {
	switch statusFor(err) {
	case http.StatusBadRequest:
		if errors.Is(err, guard.ErrInvalidChannel) {
			return guard.ReasonInvalidIdentifier, "channel must be one of email, phone, post, storage"
		}
		return guard.ReasonInvalidIdentifier, err.Error()
	case http.StatusServiceUnavailable:
		return guard.ReasonStoreUnavailable, guard.ErrUnavailable.Error()
	case http.StatusNotFound:
		if errors.Is(err, guard.ErrNotFound) {
			return "", guard.ErrNotFound.Error()
		}
		return "", errNoRoute.Error()
	case http.StatusUnauthorized:
		return "", errUnauthenticated.Error()
	case http.StatusForbidden:
		return "", errForbidden.Error()
	case http.StatusMethodNotAllowed:
		return "", errNoMethod.Error()
	case http.StatusRequestEntityTooLarge:
		return "", errTooLarge.Error()
	}
	return "", errInternal.Error()
}

// writeError answers err as {"allowed":false,"reason":…,"error":…}.
// "allowed":false is in every error body so that a client that reads only
// that field fails closed.
func writeError(c *gin.Context, err error) {
	reason, msg := publicError(err)
	buf := getBuf()
	b := append(buf.b, `{"allowed":false`...)
	if reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, string(reason))
	}
	b = append(b, `,"error":`...)
	b = appendString(b, msg)
	b = append(b, "}\n"...)
	writeBody(c, statusFor(err), b)
	buf.put(b)
}

// writeDecision renders one decision with the status its error maps to.
func writeDecision(c *gin.Context, d *guard.Decision, err error) {
	buf := getBuf()
	b := buf.b
	if err != nil {
		_, msg := publicError(err)
		b = appendDecision(b, d, msg)
	} else {
		b = appendDecision(b, d, "")
	}
	b = append(b, '\n')
	writeBody(c, statusFor(err), b)
	buf.put(b)
}

// writeJSON renders v with encoding/json (the less frequent routes).
func writeJSON(c *gin.Context, status int, v any) {
	buf := getBuf()
	w := bytes.NewBuffer(buf.b)
	if err := json.NewEncoder(w).Encode(v); err != nil {
		buf.put(buf.b)
		writeError(c, errInternal)
		return
	}
	writeBody(c, status, w.Bytes())
	buf.put(w.Bytes())
}

var jsonContentType = []string{"application/json; charset=utf-8"}

func writeBody(c *gin.Context, status int, b []byte) {
	writeHeader(c, status, len(b))
	_, _ = c.Writer.Write(b)
}

// writeHeader sends the status and a JSON content type; n is the body's
// length, or -1 when it is streamed.
func writeHeader(c *gin.Context, status, n int) {
	h := c.Writer.Header()
	h["Content-Type"] = jsonContentType
	if n > 2048 { // net/http sets it itself for small bodies
		h["Content-Length"] = []string{strconv.Itoa(n)}
	}
	c.Writer.WriteHeader(status)
}

// buffer pooling for response bodies.
type buffer struct{ b []byte }

var bufPool = sync.Pool{New: func() any { return &buffer{b: make([]byte, 0, 512)} }}

func getBuf() *buffer { return bufPool.Get().(*buffer) }

func (buf *buffer) put(b []byte) {
	if cap(b) > 64<<10 { // do not keep batch-sized buffers
		return
	}
	buf.b = b[:0]
	bufPool.Put(buf)
}

// appendDecision renders a guard.Decision exactly as encoding/json does
// (TestAppendDecisionMatchesEncodingJSON holds it to that), plus an
// optional "error" field, without reflection: checks are the hot path.
func appendDecision(b []byte, d *guard.Decision, errMsg string) []byte {
	b = append(b, `{"allowed":`...)
	b = strconv.AppendBool(b, d.Allowed)
	b = append(b, `,"channel":`...)
	b = appendString(b, d.Channel.String())
	b = append(b, `,"reason":`...)
	b = appendString(b, string(d.Reason))
	b = append(b, `,"records":`...)
	if d.Records == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range d.Records {
			r := &d.Records[i]
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"id":`...)
			b = appendString(b, r.ID)
			if r.Object != "" {
				b = append(b, `,"object":`...)
				b = appendString(b, r.Object)
			}
			b = append(b, `,"consent":`...)
			b = appendString(b, r.Consent)
			if r.Version != "" {
				b = append(b, `,"version":`...)
				b = appendString(b, r.Version)
			}
			b = append(b, `,"reason":`...)
			b = appendString(b, string(r.Reason))
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	if errMsg != "" {
		b = append(b, `,"error":`...)
		b = appendString(b, errMsg)
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string the way encoding/json does with
// HTML escaping on: <, >, & and U+2028/U+2029 escaped, invalid UTF-8
// replaced by U+FFFD.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
