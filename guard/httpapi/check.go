package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"runtime"
	"strings"
	"sync"

	"github.com/consentguard/consentguard/guard"
	"github.com/gin-gonic/gin"
	"github.com/go-playground/validator/v10"
)

// checkRequest is one check: a channel and exactly one identifier, from
// the query of GET /v1/check or the JSON body of POST /v1/check. Both
// routes check it with validate, which is plain code rather than
// validator tags: this is the hot path, and the validator's reflection
// costs several µs per request.
type checkRequest struct {
	Channel   string `json:"channel"`
	Email     string `json:"email"`
	Phone     string `json:"phone"`
	ContactID string `json:"contact_id"`
}

// batchRequest is the body of POST /v1/check/batch. Items are not
// validated as a whole: each bad item gets its own invalid_identifier
// decision.
type batchRequest struct {
	Channel string      `json:"channel" validate:"required"`
	Items   []batchItem `json:"items" validate:"required"`
}

type batchItem struct {
	Email     string `json:"email"`
	Phone     string `json:"phone"`
	ContactID string `json:"contact_id"`
}

var (
	errNoIdentifier = fmt.Errorf("%w: exactly one of email, phone or contact_id is required", errBadRequest)
	errNoChannel    = fmt.Errorf("%w: channel is required", errBadRequest)
)

// checkScopes are the scopes per channel, built once.
var checkScopes = func() (s [guard.NumChannels]string) {
	for _, ch := range guard.Channels {
		s[ch] = "check:" + ch.String()
	}
	return s
}()

// handleCheckGet serves GET /v1/check?channel=C&email=E (or phone=,
// contact_id=).
func (s *server) handleCheckGet() gin.HandlerFunc {
	return func(c *gin.Context) {
		p := s.principal(c)
		if p == nil {
			return
		}
		var req checkRequest
		if err := parseCheckQuery(c.Request.URL.RawQuery, &req); err != nil {
			s.fail(c, err)
			return
		}
		s.check(c, p, &req)
	}
}

// handleCheckPost serves POST /v1/check with a JSON checkRequest.
func (s *server) handleCheckPost() gin.HandlerFunc {
	return func(c *gin.Context) {
		p := s.principal(c)
		if p == nil {
			return
		}
		var req checkRequest
		if err := s.decodeBody(c, &req); err != nil {
			s.fail(c, err)
			return
		}
		if err := req.validate(); err != nil {
			s.fail(c, err)
			return
		}
		s.check(c, p, &req)
	}
}

// check is the common part of the single checks, for a validated request:
// parse → authorise → guard → render.
func (s *server) check(c *gin.Context, p *principal, req *checkRequest) {
	ch, err := guard.ParseChannel(req.Channel)
	if err != nil {
		s.fail(c, err)
		return
	}
	if !s.authorizedAs(c, p, checkScopes[ch]) {
		return
	}
	kind, raw, _ := req.identifier()
	id, err := s.guard.Parse(kind, raw)
	if err != nil {
		s.metrics.decided(ch, guard.ReasonInvalidIdentifier)
		s.fail(c, err)
		return
	}
	d, err := s.guard.Check(c.Request.Context(), ch, id)
	s.metrics.decided(ch, d.Reason)
	writeDecision(c, &d, err)
}

// validate enforces a single check's rules: a channel and exactly one
// non-empty identifier.
func (r *checkRequest) validate() error {
	if r.Channel == "" {
		return errNoChannel
	}
	_, _, err := r.identifier()
	return err
}

// identifier returns the one identifier the request carries.
func (r *checkRequest) identifier() (guard.Kind, string, error) {
	return oneIdentifier(r.Email, r.Phone, r.ContactID)
}

// oneIdentifier returns the one non-empty identifier among email, phone and
// contactID, and errNoIdentifier unless exactly one is non-empty.
func oneIdentifier(email, phone, contactID string) (guard.Kind, string, error) {
	n := 0
	var kind guard.Kind
	var raw string
	if email != "" {
		n, kind, raw = n+1, guard.KindEmail, email
	}
	if phone != "" {
		n, kind, raw = n+1, guard.KindPhone, phone
	}
	if contactID != "" {
		n, kind, raw = n+1, guard.KindRecordID, contactID
	}
	if n != 1 {
		return 0, "", errNoIdentifier
	}
	return kind, raw, nil
}

// parseCheckQuery reads channel, email, phone and contact_id from a raw
// query without building a url.Values map (this is the hot path), and
// validates the request. Other parameters are ignored; a repeated one is an
// error. A phone number's leading '+' is kept even when not percent-encoded (curl users write
// phone=+49…), every other '+' is a space as usual.
func parseCheckQuery(raw string, req *checkRequest) error {
	var seen uint8
	for raw != "" {
		var kv string
		kv, raw, _ = strings.Cut(raw, "&")
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if strings.ContainsAny(k, "%+") {
			uk, err := url.QueryUnescape(k)
			if err != nil {
				continue
			}
			k = uk
		}
		var dst *string
		var bit uint8
		switch k {
		case "channel":
			dst, bit = &req.Channel, 1
		case "email":
			dst, bit = &req.Email, 2
		case "phone":
			dst, bit = &req.Phone, 4
		case "contact_id":
			dst, bit = &req.ContactID, 8
		default:
			continue
		}
		if seen&bit != 0 {
			return fmt.Errorf("%w: parameter %s given more than once", errBadRequest, k)
		}
		seen |= bit
		plus := bit == 4 && strings.HasPrefix(v, "+")
		if plus {
			v = v[1:]
		}
		if strings.ContainsAny(v, "%+") {
			uv, err := url.QueryUnescape(v)
			if err != nil {
				return fmt.Errorf("%w: parameter %s is not URL-encoded properly", errBadRequest, k)
			}
			v = uv
		}
		if plus {
			v = "+" + v
		}
		*dst = v
	}
	return req.validate()
}

// handleCheckBatch serves POST /v1/check/batch: up to MaxBatch items, one
// guard.CheckBatch call (one pipelined store lookup), results in item
// order. Items that cannot be parsed get their own invalid_identifier
// decision; the batch fails as a whole (503) only when the store does.
func (s *server) handleCheckBatch() gin.HandlerFunc {
	return func(c *gin.Context) {
		p := s.principal(c)
		if p == nil {
			return
		}
		var req batchRequest
		if err := s.decodeBody(c, &req); err != nil {
			s.fail(c, err)
			return
		}
		if err := s.validate.Struct(&req); err != nil {
			var ve validator.ValidationErrors
			if errors.As(err, &ve) && len(ve) > 0 && ve[0].Field() == "Channel" {
				s.fail(c, errNoChannel)
			} else {
				s.fail(c, fmt.Errorf("%w: items is required", errBadRequest))
			}
			return
		}
		if len(req.Items) > s.maxBatch {
			s.fail(c, fmt.Errorf("%w: %d items, at most %d per batch", errBadRequest, len(req.Items), s.maxBatch))
			return
		}
		ch, err := guard.ParseChannel(req.Channel)
		if err != nil {
			s.fail(c, err)
			return
		}
		if !s.authorizedAs(c, p, checkScopes[ch]) {
			return
		}
		ids, bad := s.parseItems(req.Items)
		ds, err := s.guard.CheckBatch(c.Request.Context(), ch, ids)
		for i := range ds {
			s.metrics.decided(ch, ds[i].Reason)
		}
		if err != nil {
			s.fail(c, err)
			return
		}
		writeBatch(c, ds, bad)
	}
}

// parseItems normalises the batch's identifiers, on every CPU for large
// batches (phone parsing dominates). A bad item leaves a zero Identifier,
// which the guard answers with invalid_identifier, and its message in bad.
func (s *server) parseItems(items []batchItem) ([]guard.Identifier, []string) {
	ids := make([]guard.Identifier, len(items))
	var bad []string
	var mu sync.Mutex
	parse := func(lo, hi int) {
		for i := lo; i < hi; i++ {
			id, err := s.parseItem(&items[i])
			if err != nil {
				mu.Lock()
				if bad == nil {
					bad = make([]string, len(items))
				}
				bad[i] = publicMessage(err)
				mu.Unlock()
				continue
			}
			ids[i] = id
		}
	}
	workers := runtime.GOMAXPROCS(0)
	const minChunk = 256
	if workers < 2 || len(items) < 2*minChunk {
		parse(0, len(items))
		return ids, bad
	}
	workers = min(workers, len(items)/minChunk)
	var wg sync.WaitGroup
	chunk := (len(items) + workers - 1) / workers
	for lo := 0; lo < len(items); lo += chunk {
		wg.Go(func() { parse(lo, min(lo+chunk, len(items))) })
	}
	wg.Wait()
	return ids, bad
}

func (s *server) parseItem(it *batchItem) (guard.Identifier, error) {
	kind, raw, err := oneIdentifier(it.Email, it.Phone, it.ContactID)
	if err != nil {
		return guard.Identifier{}, err
	}
	return s.guard.Parse(kind, raw)
}

func publicMessage(err error) string {
	_, msg := publicError(err)
	return msg
}

// writeBatch renders {"results":[decision,…]}; an item that could not be
// parsed carries its "error". The body is streamed in chunks of about
// batchChunk bytes through one pooled buffer rather than built whole.
func writeBatch(c *gin.Context, ds []guard.Decision, bad []string) {
	buf := getBuf()
	b := append(buf.b, `{"results":[`...)
	started := false
	for i := range ds {
		if i > 0 {
			b = append(b, ',')
		}
		msg := ""
		if bad != nil {
			msg = bad[i]
		}
		b = appendDecision(b, &ds[i], msg)
		if len(b) >= batchChunk {
			if !started {
				started = true
				writeHeader(c, statusFor(nil), -1)
			}
			_, _ = c.Writer.Write(b)
			b = b[:0]
		}
	}
	b = append(b, "]}\n"...)
	if started {
		_, _ = c.Writer.Write(b)
	} else {
		writeBody(c, statusFor(nil), b)
	}
	buf.put(b)
}

// batchChunk is the size at which writeBatch hands its buffer on.
const batchChunk = 32 << 10

// decodeBody reads a JSON body of at most MaxBody bytes into v.
func (s *server) decodeBody(c *gin.Context, v any) error {
	body := c.Request.Body
	if body == nil {
		return fmt.Errorf("%w: JSON body required", errBadRequest)
	}
	r := io.LimitReader(body, s.maxBody+1)
	var data []byte
	var err error
	if n := c.Request.ContentLength; n > 0 && n <= s.maxBody {
		// Sized by Content-Length: one allocation instead of ReadAll's
		// doubling. The limit still applies to what is read.
		data, err = readSized(r, make([]byte, 0, n+1))
	} else {
		data, err = io.ReadAll(r)
	}
	if err != nil {
		return fmt.Errorf("%w: could not read the body", errBadRequest)
	}
	if int64(len(data)) > s.maxBody {
		return errTooLarge
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%w: body is not the expected JSON", errBadRequest)
	}
	return nil
}

// readSized reads r to EOF into data, growing it only when r holds more
// than its capacity.
func readSized(r io.Reader, data []byte) ([]byte, error) {
	for {
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
		n, err := r.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return data, err
		}
	}
}
